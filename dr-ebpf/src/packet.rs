//! Header access, parsing and the header rewrites shared by the programs.
use core::mem::{offset_of, size_of};

use aya_ebpf::{helpers::generated::bpf_skb_load_bytes, programs::TcContext};
use dr_common::{
    checksum,
    nat::{FlowKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    Counter, DatapathConfig,
};
use network_types::{
    eth::{EthHdr, EtherType},
    icmp::Icmpv4Hdr,
    ip::Ipv4Hdr,
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{maps::config, verdict::Verdict};

pub const AF_INET: u8 = 2;

/// What the start of a frame holds, as far as dr is concerned.
pub enum Frame {
    /// Not IPv4 (ARP, IPv6, ...) or shorter than an Ethernet header.
    NotIpv4,
    /// An IPv4 EtherType with a truncated or inconsistent header.
    Malformed,
    Ipv4(&'static mut Ipv4Hdr),
}

/// Pointer to a `T` at `offset` into the linear bytes `[data, data_end)`.
#[inline(always)]
pub fn ptr_at<T>(data: usize, data_end: usize, offset: usize) -> Option<*mut T> {
    if data + offset + size_of::<T>() > data_end {
        return None;
    }
    Some((data + offset) as *mut T)
}

/// Finds the IPv4 header in the linear bytes `[data, data_end)` of a frame
/// of `len` bytes in all. Shared by the TC and XDP programs.
#[inline(always)]
pub fn parse_frame(data: usize, data_end: usize, len: usize) -> Frame {
    let Some(eth) = ptr_at::<EthHdr>(data, data_end, 0) else {
        return Frame::NotIpv4;
    };
    // SAFETY: bounds checked by ptr_at.
    if unsafe { (*eth).ether_type } != EtherType::Ipv4 as u16 {
        return Frame::NotIpv4;
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(data, data_end, EthHdr::LEN) else {
        return Frame::Malformed;
    };
    // SAFETY: bounds checked by ptr_at; the packet outlives the program run.
    let ip = unsafe { &mut *ip };
    let header_len = (ip.vihl & 0x0f) as usize * 4;
    let total_len = u16::from_be_bytes(ip.tot_len) as usize;
    if ip.vihl >> 4 != 4
        || header_len < Ipv4Hdr::LEN
        || total_len < header_len
        || EthHdr::LEN + total_len > len
    {
        return Frame::Malformed;
    }
    Frame::Ipv4(ip)
}

/// [`parse_frame`] for an skb, pulling the headers into linear data when paged.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Frame {
    const HEADERS: usize = EthHdr::LEN + Ipv4Hdr::LEN;
    if ctx.data() + HEADERS > ctx.data_end() && ctx.len() as usize >= HEADERS {
        // Best effort: a failure shows up as a short frame below.
        let _ = ctx.pull_data(HEADERS as u32);
    }
    parse_frame(ctx.data(), ctx.data_end(), ctx.len() as usize)
}

#[inline(always)]
pub fn src_addr(ip: &Ipv4Hdr) -> u32 {
    u32::from_ne_bytes(ip.src_addr)
}

#[inline(always)]
pub fn dst_addr(ip: &Ipv4Hdr) -> u32 {
    u32::from_ne_bytes(ip.dst_addr)
}

/// Decrements the TTL and patches the header checksum incrementally.
/// Returns false, leaving the header untouched, when the TTL would reach zero.
/// The header's one's-complement sum is unchanged, so a CHECKSUM_COMPLETE
/// value computed by the device stays valid.
#[inline(always)]
pub fn decrement_ttl(ip: &mut Ipv4Hdr) -> bool {
    if ip.ttl <= 1 {
        return false;
    }
    let old = u16::from_ne_bytes([ip.ttl, ip.proto]);
    ip.ttl -= 1;
    let new = u16::from_ne_bytes([ip.ttl, ip.proto]);
    ip.check = checksum::replace_u16(u16::from_ne_bytes(ip.check), old, new).to_ne_bytes();
    true
}

/// The configuration and the IPv4 header of a frame the TC programs act on,
/// or the verdict for any other frame: dr not enabled, not IPv4,
/// or a malformed header.
#[inline(always)]
pub fn ipv4_frame(
    ctx: &TcContext,
) -> Result<(&'static DatapathConfig, &'static mut Ipv4Hdr), Verdict> {
    let Some(cfg) = config() else {
        return Err(Verdict::Pass(Counter::Passed));
    };
    match parse(ctx) {
        Frame::NotIpv4 => Err(Verdict::Pass(Counter::Passed)),
        Frame::Malformed => Err(Verdict::Pass(Counter::Malformed)),
        Frame::Ipv4(ip) => Ok((cfg, ip)),
    }
}

/// The configuration and IPv4 header of a frame an egress program acts on.
/// Egress programs leave every other frame alone and uncounted: the
/// ingress side already counts what crosses dr.
#[inline(always)]
pub fn egress_frame(ctx: &TcContext) -> Option<(&'static DatapathConfig, &'static mut Ipv4Hdr)> {
    let cfg = config()?;
    match parse(ctx) {
        Frame::Ipv4(ip) => Some((cfg, ip)),
        _ => None,
    }
}

/// Offset of the L4 header (after IPv4 options).
#[inline(always)]
pub fn l4_offset(ip: &Ipv4Hdr) -> usize {
    EthHdr::LEN + (ip.vihl & 0x0f) as usize * 4
}

/// Whether the packet is a fragment other than a whole datagram.
#[inline(always)]
pub fn is_fragment(ip: &Ipv4Hdr) -> bool {
    // More-fragments bit or a non-zero offset.
    u16::from_be_bytes(ip.frags) & 0x3fff != 0
}

/// Offsets of L4 header fields from the start of the L4 header.
pub const TCP_SEQ: usize = offset_of!(TcpHdr, seq);
/// The byte whose high nibble is TCP's data offset; the flags byte follows.
pub const TCP_DATA_OFFSET: usize = offset_of!(TcpHdr, _bitfield_1);
pub const TCP_CHECK: usize = offset_of!(TcpHdr, check);
pub const UDP_CHECK: usize = offset_of!(UdpHdr, check);
pub const ICMP_CHECK: usize = offset_of!(Icmpv4Hdr, check);
/// An echo's identifier opens the header's last word.
pub const ICMP_ID: usize = offset_of!(Icmpv4Hdr, data);

/// Whether the TCP (20 bytes), UDP or ICMP (8) header lies inside the IP
/// packet's total length; bytes past it, such as Ethernet padding, are not
/// the packet's.
#[inline(always)]
pub fn l4_header_fits(ip: &Ipv4Hdr) -> bool {
    let header_len = if ip.proto == IPPROTO_TCP {
        TcpHdr::LEN
    } else {
        UdpHdr::LEN
    };
    l4_offset(ip) + header_len <= EthHdr::LEN + u16::from_be_bytes(ip.tot_len) as usize
}

/// Reads a value at an offset into the frame, so that one parser serves
/// TC (through `bpf_skb_load_bytes`, paged skbs too) and XDP (its linear
/// bytes, directly).
pub trait FrameBytes {
    fn read<T: Copy>(&self, offset: usize) -> Option<T>;
}

/// In place when the bytes are in the skb's linear data (as headers are):
/// a helper call costs more than the read. A single byte always by the
/// helper: LLVM turns its bounds check into `data + offset >= data_end`,
/// from which the verifier learns no range.
impl FrameBytes for TcContext {
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        if size_of::<T>() == 1 {
            return self.load(offset).ok();
        }
        match ptr_at::<T>(self.data(), self.data_end(), offset) {
            // SAFETY: bounds checked by ptr_at; packet bytes have no alignment.
            Some(at) => Some(unsafe { at.read_unaligned() }),
            None => self.load(offset).ok(),
        }
    }
}

/// The linear bytes `[data, data_end)` of an XDP frame.
#[derive(Clone, Copy)]
pub struct LinearFrame {
    pub data: usize,
    pub data_end: usize,
}

impl LinearFrame {
    /// Pointer to a `T` at `offset`, if it lies inside the frame.
    #[inline(always)]
    pub fn ptr<T>(&self, offset: usize) -> Option<*mut T> {
        ptr_at(self.data, self.data_end, offset)
    }

    #[inline(always)]
    pub fn len(&self) -> usize {
        self.data_end - self.data
    }
}

/// Not for a single byte at the start of a header: LLVM turns its check into
/// `data + offset >= data_end`, from which the verifier learns no range.
impl FrameBytes for LinearFrame {
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        // The end read anew: LLVM could otherwise find the bounds check
        // implied by the IP header checks (total length within the frame,
        // L4 header within the total length) and drop it, and the verifier
        // cannot follow that reasoning.
        // SAFETY: a plain field of `self`.
        let data_end = unsafe { core::ptr::read_volatile(&self.data_end) };
        let at = ptr_at::<T>(self.data, data_end, offset)?;
        // SAFETY: bounds checked by ptr_at; packet bytes have no alignment.
        Some(unsafe { at.read_unaligned() })
    }
}

/// The ports (or ICMP identifier, 0) and TCP flags of a TCP/UDP/ICMP packet;
/// None if its header is cut short. The one L4 parser of TC and XDP.
#[inline(always)]
pub fn l4_ports(frame: &impl FrameBytes, ip: &Ipv4Hdr) -> Option<(u16, u16, u8)> {
    if !l4_header_fits(ip) {
        return None;
    }
    let (l4, proto) = (l4_offset(ip), ip.proto);
    match proto {
        IPPROTO_TCP => {
            let p: [u16; 2] = frame.read(l4)?;
            // With the data offset: two bytes are read in place (see FrameBytes).
            let [_, flags]: [u8; 2] = frame.read(l4 + TCP_DATA_OFFSET)?;
            Some((p[0], p[1], flags))
        }
        IPPROTO_UDP => {
            let p: [u16; 2] = frame.read(l4)?;
            Some((p[0], p[1], 0))
        }
        _ => {
            let id: u16 = frame.read(l4 + ICMP_ID)?;
            Some((id, 0, 0))
        }
    }
}

/// The flow of a TCP, UDP or ICMP packet (ICMP: the identifier as source
/// port) and its TCP flags; None for other protocols, fragments and cut
/// headers.
#[inline(always)]
pub fn flow_of(frame: &impl FrameBytes, ip: &Ipv4Hdr) -> Option<(FlowKey, u8)> {
    if !matches!(ip.proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP) || is_fragment(ip) {
        return None;
    }
    let (src_port, dst_port, tcp_flags) = l4_ports(frame, ip)?;
    let key = FlowKey {
        src_addr: src_addr(ip),
        dst_addr: dst_addr(ip),
        src_port,
        dst_port,
        proto: ip.proto,
        _pad: 0,
        _pad2: 0,
    };
    Some((key, tcp_flags))
}

/// Writes `value` at `offset` of the frame: in place when those bytes are
/// in the skb's linear data (as headers are), with no helper call; else by
/// `bpf_skb_store_bytes`. Checksums are the caller's.
#[inline(always)]
pub fn store<T: Copy>(ctx: &TcContext, offset: usize, value: &T) -> Result<(), i64> {
    match ptr_at::<T>(ctx.data(), ctx.data_end(), offset) {
        // SAFETY: bounds checked by ptr_at; packet bytes have no alignment.
        Some(at) => {
            unsafe { at.write_unaligned(*value) };
            Ok(())
        }
        None => ctx.store(offset, value, 0),
    }
}

/// Copies `N` bytes at `offset` of the skb (linear or not) into `dst`,
/// straight into place (no copy on a stack the datapath shares).
#[inline(always)]
pub fn load_into<const N: usize>(
    ctx: &TcContext,
    offset: usize,
    dst: &mut [u8; N],
) -> Result<(), i64> {
    // SAFETY: dst is N writable bytes; the helper checks the skb's bounds.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const core::ffi::c_void,
            offset as u32,
            dst.as_mut_ptr() as *mut core::ffi::c_void,
            N as u32,
        )
    };
    if ret != 0 {
        return Err(ret);
    }
    Ok(())
}
