//! The host's routing decision for a container's flow out of the cluster:
//! SNAT takes only what the kernel would send out of the uplink, and sends
//! it to the next hop the kernel would.
use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    programs::TcContext,
};
use dr_common::{
    nat::{FlowKey, IPPROTO_ICMP},
    DatapathConfig,
};

use crate::{fib, packet::AF_INET};

const SUCCESS: i64 = BPF_FIB_LKUP_RET_SUCCESS as i64;
const NO_NEIGH: i64 = BPF_FIB_LKUP_RET_NO_NEIGH as i64;
const FWD_DISABLED: i64 = BPF_FIB_LKUP_RET_FWD_DISABLED as i64;

/// How the host routes a container's flow out of the cluster.
pub enum Route {
    /// Out of the uplink, to this next hop (network order; 0 when the FIB
    /// gave no answer and the kernel routes the packet as it leaves).
    Uplink(u32),
    /// Not out of the uplink: delivered by the host, another interface, or
    /// refused.
    Elsewhere,
}

/// How the host's FIB routes `key`'s packets, looked up as the kernel's
/// forwarding path would route them in from docker0 (policy rules
/// included): `Elsewhere` when the host delivers them itself (one of its
/// own addresses: the recipe's traffic takes INPUT, untranslated), routes
/// them out of another interface (where Docker's `! -o docker0` MASQUERADE
/// translates them), or refuses them (blackhole, unreachable, prohibit, no
/// route: the kernel answers). With forwarding off on docker0 the helper
/// looks nothing up (FWD_DISABLED), and a helper error leaves no answer
/// either: the uplink then, with no next hop, as before dr consulted the FIB.
#[inline(always)]
pub fn route(ctx: &TcContext, cfg: &DatapathConfig, key: &FlowKey, tos: u8) -> Route {
    match uplink_next_hop(ctx, cfg, key, tos) {
        ELSEWHERE => Route::Elsewhere,
        next_hop => Route::Uplink(next_hop),
    }
}

/// [`uplink_next_hop`]'s answer for a route not out of the uplink (no next
/// hop is all ones).
const ELSEWHERE: u32 = u32::MAX;

/// [`route`]'s lookup: the next hop out of the uplink (0 for none known),
/// or [`ELSEWHERE`]. Not inlined: the verifier meets one function with one
/// scalar result.
#[inline(never)]
fn uplink_next_hop(ctx: &TcContext, cfg: &DatapathConfig, key: &FlowKey, tos: u8) -> u32 {
    let mut block = MaybeUninit::uninit();
    let fib = fib::zeroed(&mut block);
    fib.family = AF_INET;
    fib.l4_protocol = key.proto;
    if key.proto != IPPROTO_ICMP {
        fib.sport = key.src_port;
        fib.dport = key.dst_port;
    }
    fib.ifindex = cfg.bridge_ifindex;
    fib.__bindgen_anon_2.tos = tos;
    fib.__bindgen_anon_3.ipv4_src = key.src_addr;
    fib.__bindgen_anon_4.ipv4_dst = key.dst_addr;
    // No flags: the full lookup (rules, then tables) of a forwarded packet.
    let ret = fib::lookup(ctx, fib, 0);
    match ret {
        // Both answers name the next hop in place of the destination (the
        // destination itself when it is on the uplink's link).
        SUCCESS | NO_NEIGH if fib.ifindex == cfg.uplink_ifindex => {
            // SAFETY: plain data written by the helper.
            unsafe { fib.__bindgen_anon_4.ipv4_dst }
        }
        // No answer: no next hop, 0. Computed from what the helper left
        // unchanged, not written as a constant: a constant 0 here made the
        // verifier walk a new flow's 32 port candidates once for it and once
        // for a next hop it does not know, past 6.1's limit of a million
        // instructions (a branch on a known value marks it precise, and
        // precise values keep states apart).
        FWD_DISABLED => no_next_hop(fib, key),
        error if error < 0 => no_next_hop(fib, key),
        _ => ELSEWHERE,
    }
}

/// 0, as the verifier cannot tell: the destination the lookup was given,
/// which a helper that found nothing left in place, against the key's.
#[inline(always)]
fn no_next_hop(fib: &bpf_fib_lookup, key: &FlowKey) -> u32 {
    // SAFETY: plain data.
    unsafe { fib.__bindgen_anon_4.ipv4_dst ^ key.dst_addr }
}
