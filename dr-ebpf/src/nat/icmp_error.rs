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
    packet::{decrement_ttl, ICMP_CHECK, ICMP_ID},
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
) -> Option<Verdict> {
    let inner = l4_at + Icmpv4Hdr::LEN;
    let vihl: u8 = ctx.load(inner).ok()?;
    let inner_len = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || inner_len < 20 {
        return None;
    }
    let proto: u8 = ctx.load(inner + offset_of!(Ipv4Hdr, proto)).ok()?;
    let quoted_src: u32 = ctx.load(inner + QUOTED_SRC).ok()?;
    let remote: u32 = ctx.load(inner + offset_of!(Ipv4Hdr, dst_addr)).ok()?;
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
        if ctx.load::<u8>(inner_l4).ok()? != ICMP_ECHO {
            return None;
        }
        (ctx.load::<u16>(inner_l4 + ICMP_ID).ok()?, 0)
    } else {
        let p: [u16; 2] = ctx.load(inner_l4).ok()?;
        (p[0], p[1])
    };
    let rkey = ReverseKey {
        remote_addr: remote,
        remote_port,
        nat_port,
        proto,
        _pad: [0; 3],
    };
    // The same checks as a reply's: a dead translation delivers nothing.
    let (origin, counter) = match live_reply(cfg, &rkey) {
        Some((origin, _)) => (origin, Counter::NatIcmpErrorIn),
        None => (published_origin(cfg, &rkey)?, Counter::PublishedIn),
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
    let icmp_check = l4_at + ICMP_CHECK;
    // The ICMP checksum covers the quoted packet: every quoted change is
    // folded into it as well. No pseudo-header for ICMP.
    let fold = |old: u64, new: u64, size: u64| ctx.l4_csum_replace(icmp_check, old, new, size);

    // Quoted source address and the quoted header's checksum.
    let old_check: u16 = ctx.load(inner + QUOTED_CHECK)?;
    let new_check = checksum::replace_u32(old_check, cfg.uplink_addr, origin.addr);
    ctx.store(inner + QUOTED_SRC, &origin.addr, 0)?;
    ctx.store(inner + QUOTED_CHECK, &new_check, 0)?;
    fold(cfg.uplink_addr as u64, origin.addr as u64, 4)?;
    fold(old_check as u64, new_check as u64, 2)?;

    // Quoted source port (ICMP: identifier).
    ctx.store(inner_l4 + l4.port, &origin.port, 0)?;
    fold(nat_port as u64, origin.port as u64, 2)?;

    // The quoted L4 checksum, when the error quotes that far.
    let at = inner_l4 + l4.check;
    if at + 2 > packet_end {
        return Ok(());
    }
    if let Ok(old) = ctx.load::<u16>(at) {
        let addrs = (cfg.uplink_addr, origin.addr);
        let new = rewritten_l4_checksum(proto, old, addrs, (nat_port, origin.port));
        ctx.store(at, &new, 0)?;
        fold(old as u64, new as u64, 2)?;
    }
    Ok(())
}
