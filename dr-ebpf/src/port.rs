//! A container's docker0 port (its host-side veth), ingress: the
//! container's packets before the bridge sees them.
use aya_ebpf::{macros::classifier, programs::TcContext};
use dr_common::marks;

use crate::{bridge::from_container, mark, verdict::Verdict};

/// docker0's ingress logic, run one step earlier: a packet for a peer or
/// for SNAT leaves for the uplink from here, without a trip through the
/// bridge and a second pass through the receive path as docker0 (and,
/// where br_netfilter is on, without iptables' PREROUTING and conntrack).
/// A spoofed source is dropped here. Everything else is counted here and
/// goes on into the bridge marked: what the bridge passes up to docker0
/// (the host's addresses, answers to published ports) meets
/// `dr_bridge_ingress`, which takes the mark and lets it pass without
/// deciding again. What the bridge forwards to another port loses the mark
/// as it enters that container's namespace.
#[classifier]
pub fn dr_port_ingress(ctx: TcContext) -> i32 {
    let bytes = ctx.len() as u64;
    let verdict = from_container(&ctx, bytes);
    if let Verdict::Pass(_) = verdict {
        mark::set(&ctx, marks::PASSED_BY_PORT);
    }
    verdict.tc_action(bytes)
}
