//! Uplink egress: the host's own packets leaving by the uplink.
use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_DIRECT, BPF_FIB_LOOKUP_OUTPUT, TC_ACT_OK},
    macros::classifier,
    programs::TcContext,
};
use dr_common::{marks, Counter};

use crate::{
    fib,
    maps::{peer_for, peer_traffic},
    mark,
    packet::{dst_addr, egress_frame, src_addr, store, AF_INET},
    redirect::send,
    verdict::Verdict,
};

#[classifier]
pub fn dr_uplink_egress(ctx: TcContext) -> i32 {
    // A redirect below leaves by this same device: the packet comes back once.
    if mark::take(&ctx, marks::REDIRECTED) {
        return TC_ACT_OK;
    }
    let bytes = ctx.len() as u64;
    to_peer_host(&ctx, bytes).map_or(TC_ACT_OK, |verdict| verdict.tc_action(bytes))
}

/// A packet of the host's own for a peer subnet (a process reaching a
/// container on another host: the kernel has no route for the subnet and sent
/// it toward its default gateway) goes to the peer host instead, with the
/// uplink address as its source. Everything else leaves as the kernel sent
/// it, uncounted (None).
#[inline(always)]
fn to_peer_host(ctx: &TcContext, bytes: u64) -> Option<Verdict> {
    let (cfg, ip) = egress_frame(ctx)?;
    if src_addr(ip) != cfg.uplink_addr {
        return None;
    }
    let peer = peer_for(cfg, dst_addr(ip))?;
    let verdict = match neighbour_mac(ctx, cfg.uplink_ifindex, peer.via) {
        // Same device: only the next hop's MAC changes.
        Some((src, dst)) => {
            if store(ctx, 0, &dst).is_err() || store(ctx, 6, &src).is_err() {
                return Some(Verdict::Drop(Counter::DropRedirectFailed));
            }
            Verdict::Pass(Counter::HostToPeer)
        }
        // The peer host is not in the neighbour table yet: the kernel resolves
        // it. The packet still carries its route toward the default gateway,
        // and a packet queued for resolution leaves by that route's next hop,
        // so this one may be lost; the following ones find the neighbour.
        None => match send(ctx, cfg.uplink_ifindex, Some(peer.via), Counter::HostToPeer) {
            dropped @ Verdict::Drop(_) => return Some(dropped),
            sent => sent,
        },
    };
    if let Some(traffic) = peer_traffic(peer) {
        traffic.to_peer.add(bytes);
    }
    Some(verdict)
}

/// The uplink's and the neighbour `addr`'s MAC addresses, if the kernel
/// has resolved `addr` on `ifindex`.
#[inline(always)]
fn neighbour_mac(ctx: &TcContext, ifindex: u32, addr: u32) -> Option<([u8; 6], [u8; 6])> {
    let mut block = MaybeUninit::uninit();
    let fib = fib::zeroed(&mut block);
    fib.family = AF_INET;
    fib.ifindex = ifindex;
    fib.__bindgen_anon_4.ipv4_dst = addr;
    let ret = fib::lookup(ctx, fib, BPF_FIB_LOOKUP_DIRECT | BPF_FIB_LOOKUP_OUTPUT);
    (ret == BPF_FIB_LKUP_RET_SUCCESS as i64 && fib.ifindex == ifindex)
        .then_some((fib.smac, fib.dmac))
}
