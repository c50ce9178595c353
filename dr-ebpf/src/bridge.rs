//! docker0 ingress: packets from local containers.
use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use aya_log_ebpf::warn;
use dr_common::{marks, Counter};

use crate::{
    maps::{peer_for, peer_traffic},
    mark,
    mtu::too_big,
    nat::snat_out,
    packet::{dst_addr, ipv4_frame, src_addr},
    redirect::forward,
    verdict::Verdict,
};

#[classifier]
pub fn dr_bridge_ingress(ctx: TcContext) -> i32 {
    // Decided on and counted at the container's port already (port.rs).
    if mark::take(&ctx, marks::PASSED_BY_PORT) {
        return TC_ACT_OK;
    }
    let bytes = ctx.len() as u64;
    from_container(&ctx, bytes).tc_action(bytes)
}

/// A container's packet for a peer subnet goes straight out of the uplink to
/// the peer host; one for an external destination is translated to the
/// uplink's address (SNAT) and sent out of the uplink; a packet whose source
/// is no container address of the local subnet (outside it, or the host's
/// gateway, network or broadcast address, which the kernel would drop as
/// martian) is dropped; everything else goes to the stack.
#[inline(always)]
pub fn from_container(ctx: &TcContext, bytes: u64) -> Verdict {
    let (cfg, ip) = match ipv4_frame(ctx) {
        Ok(frame) => frame,
        Err(verdict) => return verdict,
    };
    if !cfg.is_container(src_addr(ip)) {
        warn!(
            ctx,
            "docker0: dropped a packet from spoofed source {:i}",
            u32::from_be(src_addr(ip))
        );
        return Verdict::Drop(Counter::DropSpoofed);
    }
    let dst = dst_addr(ip);
    if cfg.is_local(dst) {
        return Verdict::Pass(Counter::Passed);
    }
    let Some(peer) = peer_for(cfg, dst) else {
        return snat_out(ctx, cfg, ip);
    };
    if let Some(verdict) = too_big(ctx, cfg, ip) {
        return verdict;
    }
    let verdict = forward(ctx, ip, cfg.uplink_ifindex, Some(peer.via), Counter::ToPeer);
    if verdict.redirected() {
        if let Some(traffic) = peer_traffic(peer) {
            traffic.to_peer.add(bytes);
        }
    }
    verdict
}
