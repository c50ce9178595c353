//! Sending a frame on from TC: straight out of a device, with L2 addresses
//! from the neighbour table, carrying dr's mark to the egress program there;
//! or, to a local container dr knows, straight into the container.
use core::mem::size_of;

use aya_ebpf::{
    bindings::{bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1, TC_ACT_SHOT},
    helpers::generated::{bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use dr_common::{marks, Counter, DatapathConfig};
use network_types::ip::Ipv4Hdr;

use crate::{
    dry_run::{dry_run, record_delivery, record_redirect},
    maps::endpoint,
    mark,
    packet::{decrement_ttl, store, AF_INET},
    verdict::Verdict,
};

/// Sends the frame out of `ifindex`, with L2 addresses from the neighbour table
/// for `next_hop` (network order), or for the packet's destination when `None`.
/// Neither the FIB nor netfilter nor `ip_forward` are involved.
#[inline(always)]
fn redirect_neigh(ifindex: u32, next_hop: Option<u32>) -> i32 {
    if dry_run() {
        record_redirect(ifindex, next_hop.unwrap_or(0));
    }
    let ret = match next_hop {
        Some(addr) => {
            // Built field by field: `mem::zeroed` became a call to a memset
            // subprogram, 20-30 ns on every SNAT packet. The IPv4 next hop
            // is the union's first word.
            let mut nh = bpf_redir_neigh {
                nh_family: AF_INET.into(),
                __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
                    ipv6_nh: [addr, 0, 0, 0],
                },
            };
            // SAFETY: nh lives across the call; the size matches the struct.
            unsafe { bpf_redirect_neigh(ifindex, &mut nh, size_of::<bpf_redir_neigh>() as i32, 0) }
        }
        // SAFETY: a null parameter block is allowed when its length is 0.
        None => unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) },
    };
    ret as i32
}

/// Sends the frame out of `ifindex` (see [`redirect_neigh`]), to be counted
/// under `counter`; a refused redirect is a drop. The frame carries dr's
/// mark to the egress program there.
#[inline(always)]
pub fn send(ctx: &TcContext, ifindex: u32, next_hop: Option<u32>, counter: Counter) -> Verdict {
    mark::set(ctx, marks::REDIRECTED);
    if redirect_neigh(ifindex, next_hop) == TC_ACT_SHOT {
        return Verdict::Drop(Counter::DropRedirectFailed);
    }
    Verdict::Redirect(counter)
}

/// Forwards an IPv4 packet unchanged but for its TTL: see [`send`].
#[inline(always)]
pub fn forward(
    ctx: &TcContext,
    ip: &mut Ipv4Hdr,
    ifindex: u32,
    next_hop: Option<u32>,
    counter: Counter,
) -> Verdict {
    if !decrement_ttl(ip) {
        return Verdict::Drop(Counter::DropTtlExceeded);
    }
    send(ctx, ifindex, next_hop, counter)
}

/// Delivers a packet that came in on the uplink to local container `dst`
/// (network order). When `ENDPOINTS` knows the container and its docker0
/// port still exists, the frame gets the MACs docker0 would give it and
/// `bpf_redirect_peer` hands it to the ingress of the veth's other end, in
/// the container's namespace: no pass through docker0 and the bridge, no
/// second trip through the backlog queue, the way the XDP path delivers.
/// A container not learned yet (or restarted on a new port since) is sent
/// out of docker0 as before. Not marked: it meets no egress program.
#[inline(always)]
pub fn to_container(ctx: &TcContext, cfg: &DatapathConfig, dst: u32, counter: Counter) -> Verdict {
    let Some(endpoint) = endpoint(dst) else {
        return send(ctx, cfg.bridge_ifindex, None, counter);
    };
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&endpoint.mac);
    macs[6..].copy_from_slice(&cfg.bridge_mac);
    if store(ctx, 0, &macs).is_err() {
        return Verdict::Drop(Counter::DropRedirectFailed);
    }
    if dry_run() {
        record_delivery(endpoint.ifindex);
    }
    // SAFETY: a plain helper call; the kernel checks the device when it acts.
    if unsafe { bpf_redirect_peer(endpoint.ifindex, 0) } as i32 == TC_ACT_SHOT {
        return Verdict::Drop(Counter::DropRedirectFailed);
    }
    Verdict::Redirect(counter)
}
