//! Uplink egress: the host's own packets leaving by the uplink.
use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use dr_common::Counter;

use crate::{
    maps::{peer_for, peer_traffic},
    packet::{dst_addr, egress_frame, mark_redirect, send, src_addr, take_redirect_mark},
};

/// A packet of the host's own for a peer subnet (a process reaching a
/// container on another host: the kernel has no route for the subnet and sent
/// it toward its default gateway) goes to the peer host instead, with the
/// uplink address as its source. Everything else leaves as the kernel sent it.
#[classifier]
pub fn dr_uplink_egress(ctx: TcContext) -> i32 {
    // The redirect leaves by this same device: the packet comes back here once.
    if take_redirect_mark(&ctx) {
        return TC_ACT_OK;
    }
    let Some((cfg, ip)) = egress_frame(&ctx) else {
        return TC_ACT_OK;
    };
    if src_addr(ip) != cfg.uplink_addr {
        return TC_ACT_OK;
    }
    let Some(peer) = peer_for(dst_addr(ip)) else {
        return TC_ACT_OK;
    };
    let bytes = ctx.len() as u64;
    mark_redirect(&ctx);
    let (verdict, sent) = send(
        cfg.uplink_ifindex,
        Some(peer.via),
        Counter::HostToPeer,
        bytes,
    );
    if sent {
        if let Some(traffic) = peer_traffic(peer) {
            traffic.to_peer.add(bytes);
        }
    }
    verdict
}
