//! Where each protocol keeps its ports (or ICMP identifier) and checksum,
//! and the rewrite of an address and a port with both checksums fixed.
use core::mem::offset_of;

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use dr_common::{
    checksum,
    nat::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};
use network_types::{ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

use crate::packet::{store, ICMP_CHECK, ICMP_ID, TCP_CHECK, UDP_CHECK};

/// Where a protocol keeps its ports (or ICMP identifier) and its checksum,
/// as offsets from the start of its header.
#[derive(Clone, Copy)]
pub struct L4Layout {
    /// The container's port in its packets (ICMP: the identifier).
    pub port: usize,
    /// The NAT port in a reply: its destination port (ICMP: the identifier).
    pub reply_port: usize,
    pub check: usize,
}

#[inline(always)]
pub fn layout(proto: u8) -> Option<L4Layout> {
    match proto {
        IPPROTO_TCP => Some(L4Layout {
            port: offset_of!(TcpHdr, source),
            reply_port: offset_of!(TcpHdr, dest),
            check: TCP_CHECK,
        }),
        IPPROTO_UDP => Some(L4Layout {
            port: offset_of!(UdpHdr, src),
            reply_port: offset_of!(UdpHdr, dst),
            check: UDP_CHECK,
        }),
        IPPROTO_ICMP => Some(L4Layout {
            port: ICMP_ID,
            reply_port: ICMP_ID,
            check: ICMP_CHECK,
        }),
        _ => None,
    }
}

/// The flags for `l4_csum_replace` when a pseudo-header field (an address) changes.
#[inline(always)]
fn pseudo_flags(proto: u8) -> u64 {
    match proto {
        // UDP: a zero checksum means "none" and must stay zero.
        IPPROTO_UDP => (BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0) as u64,
        IPPROTO_TCP => BPF_F_PSEUDO_HDR as u64,
        _ => 0,
    }
}

#[inline(always)]
fn port_flags(proto: u8) -> u64 {
    if proto == IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    }
}

/// Which address of the IPv4 header a translation rewrites.
#[derive(Clone, Copy)]
pub enum Address {
    Source,
    Destination,
}

/// Sets `ip`'s `which` address to `new` and patches the header checksum, in
/// place: the header is in the packet's linear data (the parser checked),
/// so no helper call is needed (a store and a checksum helper cost two
/// calls). The header's one's-complement sum is unchanged, so a
/// CHECKSUM_COMPLETE value stays valid. Returns the old address.
#[inline(always)]
pub fn set_address(ip: &mut Ipv4Hdr, which: Address, new: u32) -> u32 {
    let field = match which {
        Address::Source => &mut ip.src_addr,
        Address::Destination => &mut ip.dst_addr,
    };
    let old = u32::from_ne_bytes(*field);
    *field = new.to_ne_bytes();
    ip.check = checksum::replace_u32(u16::from_ne_bytes(ip.check), old, new).to_ne_bytes();
    old
}

/// Rewrites `ip`'s `which` address to `new_addr` and the L4
/// port/identifier at `port_at`, fixing the IP header checksum and the L4
/// checksum (by helper: only the kernel knows whether the L4 checksum is
/// complete or left to the device).
#[inline(always)]
pub(super) fn rewrite(
    ctx: &TcContext,
    ip: &mut Ipv4Hdr,
    (which, new_addr): (Address, u32),
    check_at: usize,
    port_at: usize,
    ports: (u16, u16),
) -> Result<(), i64> {
    let proto = ip.proto;
    let (old_port, new_port) = ports;
    let old_addr = set_address(ip, which, new_addr);
    if proto != IPPROTO_ICMP {
        ctx.l4_csum_replace(
            check_at,
            old_addr as u64,
            new_addr as u64,
            pseudo_flags(proto) | 4,
        )?;
    }
    store(ctx, port_at, &new_port)?;
    ctx.l4_csum_replace(
        check_at,
        old_port as u64,
        new_port as u64,
        port_flags(proto) | 2,
    )?;
    Ok(())
}
