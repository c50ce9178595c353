//! External -> container: an ICMP error (destination unreachable, time
//! exceeded, parameter problem) quoting a translated packet: a SNAT
//! translation's, or a published port's answer dr translated.
use core::mem::offset_of;

use aya_ebpf::programs::TcContext;
use dr_common::{
    checksum,
    nat::{rewritten_l4_checksum, Origin, ReverseKey, IPPROTO_ICMP},
    Counter, DatapathConfig,
};
use network_types::{eth::EthHdr, icmp::Icmpv4Hdr, ip::Ipv4Hdr};

use super::{
    ingress::live_reply,
    published::published_origin,
    rewrite::{layout, set_address, Address, L4Layout},
    ICMP_ECHO,
};
use crate::{
    packet::{decrement_ttl, store, FrameBytes, ICMP_CHECK, ICMP_ID},
    redirect::to_container,
    verdict::Verdict,
};

/// Offsets in the quoted IPv4 header.
const QUOTED_CHECK: usize = offset_of!(Ipv4Hdr, check);
const QUOTED_SRC: usize = offset_of!(Ipv4Hdr, src_addr);

/// An ICMP error quoting a translated packet: translate the outer destination
/// and the quoted packet's source (address, port, both checksums), keeping the
/// ICMP checksum right, so the container's stack sees the error about its own
/// packet (path MTU discovery, traceroute).
#[inline(always)]
pub(super) fn icmp_error_reply(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    ip: &mut Ipv4Hdr,
    l4_at: usize,
    now: u64,
) -> Option<Verdict> {
    let inner = l4_at + Icmpv4Hdr::LEN;
    let [vihl, _]: [u8; 2] = ctx.read(inner)?;
    let inner_len = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || inner_len < 20 {
        return None;
    }
    let [_, proto]: [u8; 2] = ctx.read(inner + offset_of!(Ipv4Hdr, ttl))?;
    let quoted_src: u32 = ctx.read(inner + QUOTED_SRC)?;
    let remote: u32 = ctx.read(inner + offset_of!(Ipv4Hdr, dst_addr))?;
    if quoted_src != cfg.uplink_addr {
        return None;
    }
    let l4 = layout(proto)?;
    let inner_l4 = inner + inner_len;
    // The quote ends with the outer packet, not with the frame (Ethernet
    // padding): its ports must lie inside.
    let packet_end = EthHdr::LEN + u16::from_be_bytes(ip.tot_len) as usize;
    if inner_l4 + 8 > packet_end {
        return None;
    }
    let (nat_port, remote_port) = if proto == IPPROTO_ICMP {
        let [icmp_type, _]: [u8; 2] = ctx.read(inner_l4)?;
        if icmp_type != ICMP_ECHO {
            return None;
        }
        (ctx.read::<u16>(inner_l4 + ICMP_ID)?, 0)
    } else {
        let p: [u16; 2] = ctx.read(inner_l4)?;
        (p[0], p[1])
    };
    let rkey = ReverseKey {
        remote_addr: remote,
        remote_port,
        nat_port,
        proto,
        _pad: 0,
        _pad2: 0,
    };
    // The same checks as a reply's: a dead translation delivers nothing.
    let (origin, counter) = match live_reply(cfg, &rkey, 0, now) {
        Some(reply) => (reply.reverse.origin, Counter::NatIcmpErrorIn),
        None => (published_origin(cfg, &rkey, now)?, Counter::PublishedIn),
    };
    if !decrement_ttl(ip) {
        return Some(Verdict::Drop(Counter::DropTtlExceeded));
    }
    set_address(ip, Address::Destination, origin.addr);
    if translate_icmp_error(
        ctx, cfg, l4_at, inner, inner_l4, packet_end, proto, l4, &origin, nat_port,
    )
    .is_err()
    {
        return Some(Verdict::Drop(Counter::DropRedirectFailed));
    }
    Some(to_container(ctx, cfg, origin.addr, counter))
}

/// The quoted packet's source (address and its header checksum, port, L4
/// checksum) rewritten, each change folded into the ICMP checksum, which
/// covers the quote (no pseudo-header). In place, by arithmetic: every
/// change leaves the packet's one's-complement sum as it was, so a
/// CHECKSUM_COMPLETE value stays valid; the kernel never hands over an
/// ICMP message with its checksum left to the device (CHECKSUM_PARTIAL),
/// which the `l4_csum_replace` helper would be needed for.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn translate_icmp_error(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    l4_at: usize,
    inner: usize,
    inner_l4: usize,
    packet_end: usize,
    proto: u8,
    l4: L4Layout,
    origin: &Origin,
    nat_port: u16,
) -> Result<(), i64> {
    const SHORT: i64 = -1;
    let icmp_check = l4_at + ICMP_CHECK;
    let mut icmp_sum: u16 = ctx.read(icmp_check).ok_or(SHORT)?;

    // Quoted source address and the quoted header's checksum.
    let old_check: u16 = ctx.read(inner + QUOTED_CHECK).ok_or(SHORT)?;
    let new_check = checksum::replace_u32(old_check, cfg.uplink_addr, origin.addr);
    store(ctx, inner + QUOTED_SRC, &origin.addr)?;
    store(ctx, inner + QUOTED_CHECK, &new_check)?;
    icmp_sum = checksum::replace_u32(icmp_sum, cfg.uplink_addr, origin.addr);
    icmp_sum = checksum::replace_u16(icmp_sum, old_check, new_check);

    // Quoted source port (ICMP: identifier).
    store(ctx, inner_l4 + l4.port, &origin.port)?;
    icmp_sum = checksum::replace_u16(icmp_sum, nat_port, origin.port);

    // The quoted L4 checksum, when the error quotes that far.
    let at = inner_l4 + l4.check;
    if at + 2 <= packet_end {
        if let Some(old) = ctx.read::<u16>(at) {
            let addrs = (cfg.uplink_addr, origin.addr);
            let new = rewritten_l4_checksum(proto, old, addrs, (nat_port, origin.port));
            store(ctx, at, &new)?;
            icmp_sum = checksum::replace_u16(icmp_sum, old, new);
        }
    }
    store(ctx, icmp_check, &icmp_sum)
}
