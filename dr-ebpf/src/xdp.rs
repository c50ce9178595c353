//! XDP on the uplink: the fast path for traffic from peers to local
//! containers. It delivers straight into the container's veth when it knows
//! the container (`ENDPOINTS`), and leaves everything else to the TC
//! programs (`XDP_PASS`), which handle all cases.
use aya_ebpf::{
    bindings::xdp_action::XDP_PASS, helpers::bpf_redirect, macros::xdp, programs::XdpContext,
};
use dr_common::Counter;
use network_types::eth::EthHdr;

use crate::{
    maps::{config, count, peer_for, peer_traffic, ENDPOINTS},
    packet::{decrement_ttl, dst_addr, parse_frame, ptr_at, src_addr, Frame},
};

#[xdp]
pub fn dr_uplink_xdp(ctx: XdpContext) -> u32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let bytes = (data_end - data) as u64;
    let verdict = deliver_from_peer(data, data_end);
    if verdict == XDP_PASS {
        count(Counter::XdpPass, bytes);
    }
    verdict
}

#[inline(always)]
fn deliver_from_peer(data: usize, data_end: usize) -> u32 {
    let Some(cfg) = config() else {
        return XDP_PASS;
    };
    let Frame::Ipv4(ip) = parse_frame(data, data_end, data_end - data) else {
        return XDP_PASS;
    };
    let dst = dst_addr(ip);
    if !cfg.is_local(dst) || dst == cfg.gateway || dst == cfg.local_net | !cfg.local_mask {
        return XDP_PASS;
    }
    let Some(peer) = peer_for(src_addr(ip)) else {
        return XDP_PASS;
    };
    // SAFETY: map value, copied out.
    let Some(endpoint) = (unsafe { ENDPOINTS.get(dst) }).copied() else {
        return XDP_PASS;
    };
    // An expiring TTL is TC's to drop and count.
    if ip.ttl <= 1 {
        return XDP_PASS;
    }
    let Some(eth) = ptr_at::<EthHdr>(data, data_end, 0) else {
        return XDP_PASS;
    };
    decrement_ttl(ip);
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        (*eth).dst_addr = endpoint.mac;
        (*eth).src_addr = cfg.bridge_mac;
    }
    let bytes = (data_end - data) as u64;
    count(Counter::FromPeer, bytes);
    count(Counter::XdpRedirect, bytes);
    if let Some(traffic) = peer_traffic(peer) {
        traffic.from_peer.add(bytes);
    }
    // SAFETY: no pointers passed.
    unsafe { bpf_redirect(endpoint.ifindex, 0) as u32 }
}
