//! docker0 egress: packets the host sends to local containers.
use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use dr_common::nat::DELIVERED_BY_KERNEL;

use crate::{
    inbound::record_inbound,
    nat::{excluded, now},
    packet::{dst_addr, egress_frame, flow_of, src_addr, take_redirect_mark},
};

/// Records the flows the kernel delivers to local containers from outside
/// the cluster (a published port's DNAT, a route to the container), so that
/// their answers go back through the kernel, whose conntrack undoes its own
/// translation, instead of getting one of dr's. Packets dr itself delivered
/// carry its mark and are left alone. Every frame leaves unchanged.
#[classifier]
pub fn dr_bridge_egress(ctx: TcContext) -> i32 {
    if take_redirect_mark(&ctx) {
        return TC_ACT_OK;
    }
    let Some((cfg, ip)) = egress_frame(&ctx) else {
        return TC_ACT_OK;
    };
    // The host's own traffic and answers to the cluster are never
    // translated: decided from the IP header, before reading the ports.
    let (src, dst) = (src_addr(ip), dst_addr(ip));
    if !cfg.is_local(dst) || cfg.is_local(src) || excluded(cfg, src) {
        return TC_ACT_OK;
    }
    let Some((flow, _)) = flow_of(&ctx, ip) else {
        return TC_ACT_OK;
    };
    record_inbound(&flow.answer(), DELIVERED_BY_KERNEL, now());
    TC_ACT_OK
}
