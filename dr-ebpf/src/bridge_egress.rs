//! docker0 egress: packets the host sends to local containers.
use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use dr_common::{marks, nat::DELIVERED_BY_KERNEL};

use crate::{
    clock::now,
    inbound::record_inbound,
    mark,
    nat::excluded,
    packet::{dst_addr, egress_frame, flow_of, src_addr},
};

#[classifier]
pub fn dr_bridge_egress(ctx: TcContext) -> i32 {
    record_kernel_delivery(&ctx);
    TC_ACT_OK
}

/// Records the flows the kernel delivers to local containers from outside
/// the cluster (a published port's DNAT, a route to the container), so that
/// their answers go back through the kernel, whose conntrack undoes its own
/// translation, instead of getting one of dr's. Packets dr itself delivered
/// carry its mark and are left alone. Every frame leaves unchanged.
#[inline(always)]
fn record_kernel_delivery(ctx: &TcContext) {
    if mark::take(ctx, marks::REDIRECTED) {
        return;
    }
    let Some((cfg, ip)) = egress_frame(ctx) else {
        return;
    };
    // The host's own traffic and answers to the cluster are never
    // translated: decided from the IP header, before reading the ports.
    let (src, dst) = (src_addr(ip), dst_addr(ip));
    if !cfg.is_local(dst) || cfg.is_local(src) || excluded(cfg, src) {
        return;
    }
    if let Some((flow, _)) = flow_of(ctx, ip) {
        record_inbound(&flow.answer(), DELIVERED_BY_KERNEL, 0, now(cfg));
    }
}
