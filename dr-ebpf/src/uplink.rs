//! Uplink ingress: packets from the shared segment.
use aya_ebpf::{macros::classifier, programs::TcContext};
use dr_common::Counter;

use crate::{
    maps::{peer_for, peer_traffic},
    nat::snat_reply,
    packet::{dst_addr, forward, ipv4_frame, pass, src_addr},
};

/// A packet from a known peer subnet to a local container is delivered to
/// docker0 directly; a reply to a translated flow (or an ICMP error about
/// one) is translated back and delivered; everything else goes to the stack.
#[classifier]
pub fn dr_uplink_ingress(ctx: TcContext) -> i32 {
    let bytes = ctx.len() as u64;
    let (cfg, ip) = match ipv4_frame(&ctx, bytes) {
        Ok(frame) => frame,
        Err(verdict) => return verdict,
    };
    let dst = dst_addr(ip);
    if dst == cfg.uplink_addr && cfg.nat_enabled != 0 {
        return snat_reply(&ctx, cfg, ip, bytes).unwrap_or_else(|| pass(Counter::Passed, bytes));
    }
    // The gateway and broadcast addresses belong to the host, not to a container.
    if !cfg.is_local(dst) || dst == cfg.gateway || dst == cfg.local_net | !cfg.local_mask {
        return pass(Counter::Passed, bytes);
    }
    let Some(peer) = peer_for(src_addr(ip)) else {
        return pass(Counter::Passed, bytes);
    };
    let (verdict, sent) = forward(ip, cfg.bridge_ifindex, None, Counter::FromPeer, bytes);
    if sent {
        if let Some(traffic) = peer_traffic(peer) {
            traffic.from_peer.add(bytes);
        }
    }
    verdict
}
