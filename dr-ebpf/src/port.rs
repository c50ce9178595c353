//! A container's docker0 port (its host-side veth), ingress: the
//! container's packets before the bridge sees them.
use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};

use crate::{bridge::from_container, verdict::Verdict};

/// docker0's ingress logic, run one step earlier: a packet for a peer or
/// for SNAT leaves for the uplink from here, without a trip through the
/// bridge and a second pass through the receive path as docker0 (and,
/// where br_netfilter is on, without iptables' PREROUTING and conntrack).
/// A spoofed source is dropped here. Everything else goes on into the
/// bridge uncounted: what the bridge passes up to docker0 meets
/// `dr_bridge_ingress`, which decides again and counts it once.
#[classifier]
pub fn dr_port_ingress(ctx: TcContext) -> i32 {
    let bytes = ctx.len() as u64;
    match from_container(&ctx, bytes) {
        Verdict::Pass(_) => TC_ACT_OK,
        verdict => verdict.tc_action(bytes),
    }
}
