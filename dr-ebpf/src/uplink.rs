//! Uplink ingress: packets from the shared segment.
use aya_ebpf::{macros::classifier, programs::TcContext};
use dr_common::{nat::DELIVERED_FROM_PEER_HOST, Counter, DatapathConfig};
use network_types::ip::Ipv4Hdr;

use crate::{
    clock::now,
    inbound::record_inbound,
    maps::{is_peer_host, peer_for, peer_traffic},
    nat::to_uplink_address,
    packet::{decrement_ttl, dst_addr, flow_of, ipv4_frame, src_addr},
    redirect::to_container,
    verdict::Verdict,
};

#[classifier]
pub fn dr_uplink_ingress(ctx: TcContext) -> i32 {
    let bytes = ctx.len() as u64;
    from_uplink(&ctx, bytes).tc_action(bytes)
}

/// A packet from a known peer subnet, or from a peer host itself, to a local
/// container is delivered to it directly; a reply to a translated flow, a
/// request to a published port dr translates (or an ICMP error about
/// either) is translated and delivered; everything else goes to the stack.
#[inline(always)]
fn from_uplink(ctx: &TcContext, bytes: u64) -> Verdict {
    let (cfg, ip) = match ipv4_frame(ctx) {
        Ok(frame) => frame,
        Err(verdict) => return verdict,
    };
    let dst = dst_addr(ip);
    if dst == cfg.uplink_addr {
        return to_uplink_address(ctx, cfg, ip).unwrap_or(Verdict::Pass(Counter::Passed));
    }
    if !cfg.is_container(dst) {
        return Verdict::Pass(Counter::Passed);
    }
    let src = src_addr(ip);
    let Some(peer) = peer_for(cfg, src) else {
        if !is_peer_host(src) {
            return Verdict::Pass(Counter::Passed);
        }
        // A peer host's own process: its container answers go straight back.
        if let Some((flow, _)) = flow_of(ctx, ip) {
            record_inbound(&flow.answer(), DELIVERED_FROM_PEER_HOST, 0, now(cfg));
        }
        return deliver(ctx, cfg, ip, dst);
    };
    let verdict = deliver(ctx, cfg, ip, dst);
    if verdict.redirected() {
        if let Some(traffic) = peer_traffic(peer) {
            traffic.from_peer.add(bytes);
        }
    }
    verdict
}

/// Forwards a packet to local container `dst`, TTL decremented.
#[inline(always)]
fn deliver(ctx: &TcContext, cfg: &DatapathConfig, ip: &mut Ipv4Hdr, dst: u32) -> Verdict {
    if !decrement_ttl(ip) {
        return Verdict::Drop(Counter::DropTtlExceeded);
    }
    to_container(ctx, cfg, dst, Counter::FromPeer)
}
