//! Path MTU toward the uplink. `bpf_redirect_neigh` skips the forwarding
//! path's MTU check, so a container packet that does not fit the uplink
//! would be dropped by the uplink's device with no word to its sender, and
//! TCP would stall. dr checks before redirecting and answers as the kernel's
//! forwarding path would: ICMP fragmentation needed when DF is set. dr does
//! not fragment (see README): a too-big packet without DF gets the same
//! answer, so that its sender learns the MTU and fragments from then on.

use aya_ebpf::{
    bindings::BPF_F_RECOMPUTE_CSUM,
    helpers::{bpf_redirect, generated::bpf_skb_change_tail},
    programs::TcContext,
};
use dr_common::{
    checksum,
    nat::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    Counter, DatapathConfig,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    dry_run::{dry_run, record_redirect},
    packet::{l4_offset, load_into, src_addr, FrameBytes, TCP_DATA_OFFSET},
    verdict::Verdict,
};

const IP_DF: u16 = 0x4000;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
/// Precedence "internetwork control", as Linux marks its ICMP errors.
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;
/// Bytes of the original IP packet the error quotes: a header with the
/// longest options (60) plus 8, so every error quotes at least the header
/// and the first 8 bytes of payload (RFC 792), with one fixed size the
/// verifier can follow. Every packet answered is longer: it exceeds an
/// MTU, and an interface with IPv4 has an MTU of at least 68.
const QUOTE_LEN: usize = 68;

/// The frame sent back to the container, in wire order.
#[repr(C)]
struct FragNeeded {
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    ether_type: [u8; 2],
    ip: [u8; Ipv4Hdr::LEN],
    icmp: [u8; 8],
    quote: [u8; QUOTE_LEN],
}

/// The verdict for a container packet that does not fit the uplink MTU, or
/// None when it fits (the caller goes on redirecting it). Called before the
/// TTL is decremented, so the error quotes the packet as the container sent it.
#[inline(always)]
pub fn too_big(ctx: &TcContext, cfg: &DatapathConfig, ip: &Ipv4Hdr) -> Option<Verdict> {
    // 0: not known yet (a configuration from before dr checked the MTU).
    if cfg.uplink_mtu == 0 || wire_len(ctx, ip) <= cfg.uplink_mtu {
        return None;
    }
    let counter = if u16::from_be_bytes(ip.frags) & IP_DF == 0 {
        Counter::IcmpFragNeededNoDf
    } else {
        Counter::IcmpFragNeeded
    };
    if frag_needed(ctx, cfg, src_addr(ip)).is_err() {
        return Some(Verdict::Drop(Counter::DropRedirectFailed));
    }
    if dry_run() {
        record_redirect(cfg.bridge_ifindex, 0);
    }
    // SAFETY: no memory access. Out of docker0, whose bridge delivers the
    // frame to the container's port by its destination MAC. Without flags
    // the helper always takes the frame (TC_ACT_REDIRECT).
    unsafe { bpf_redirect(cfg.bridge_ifindex, 0) };
    Some(Verdict::Redirect(counter))
}

/// The largest IP packet the uplink would send for this skb: the packet
/// itself, or for a GSO skb each segment it will be cut into (headers plus
/// `gso_size` bytes of payload), as the forwarding path checks them.
#[inline(always)]
fn wire_len(ctx: &TcContext, ip: &Ipv4Hdr) -> u32 {
    // SAFETY: the context is valid for the program run.
    let (gso_size, gso_segs) = unsafe { ((*ctx.skb.skb).gso_size, (*ctx.skb.skb).gso_segs) };
    // A single segment is the packet itself (gso_segs is 0 when untrusted
    // senders left it for the stack to count).
    if gso_size == 0 || gso_segs == 1 {
        return u16::from_be_bytes(ip.tot_len) as u32;
    }
    let l4_header_len = match ip.proto {
        // TCP's data offset, in 32-bit words; the minimum header if unreadable.
        IPPROTO_TCP => ctx
            .read::<[u8; 2]>(l4_offset(ip) + TCP_DATA_OFFSET)
            .map_or(20, |[offset, _]| (offset >> 4) as u32 * 4),
        IPPROTO_UDP => 8,
        _ => 0,
    };
    (ip.vihl & 0x0f) as u32 * 4 + l4_header_len + gso_size
}

/// Turns the skb into an ICMP fragmentation needed from docker0's address
/// to `container` (the original source), quoting the original packet, with
/// the uplink MTU as the next-hop MTU. Trimming the skb also clears its GSO
/// state, so a GSO skb becomes one small packet.
#[inline(always)]
fn frag_needed(ctx: &TcContext, cfg: &DatapathConfig, container: u32) -> Result<(), i64> {
    let mut reply = FragNeeded {
        eth_dst: [0; 6],
        eth_src: [0; 6],
        ether_type: 0x0800u16.to_be_bytes(),
        ip: [0; Ipv4Hdr::LEN],
        icmp: [0; 8],
        quote: [0; QUOTE_LEN],
    };
    // Back to where it came from: the container's MAC is the original source.
    load_into(ctx, 6, &mut reply.eth_dst)?;
    load_into(ctx, 0, &mut reply.eth_src)?;
    load_into(ctx, EthHdr::LEN, &mut reply.quote)?;
    let total_len = (Ipv4Hdr::LEN + reply.icmp.len() + QUOTE_LEN) as u16;
    let [len_hi, len_lo] = total_len.to_be_bytes();
    let [s0, s1, s2, s3] = cfg.gateway.to_ne_bytes();
    let [d0, d1, d2, d3] = container.to_ne_bytes();
    // Version 4, 20-byte header; no ID, no DF: a plain small datagram.
    reply.ip = [
        0x45,
        TOS_INTERNETWORK_CONTROL,
        len_hi,
        len_lo,
        0,
        0,
        0,
        0,
        64,
        IPPROTO_ICMP,
        0,
        0,
        s0,
        s1,
        s2,
        s3,
        d0,
        d1,
        d2,
        d3,
    ];
    let ip_check = (!checksum::fold(checksum::sum(&reply.ip))).to_ne_bytes();
    reply.ip[10] = ip_check[0];
    reply.ip[11] = ip_check[1];
    let [mtu_hi, mtu_lo] = (cfg.uplink_mtu as u16).to_be_bytes();
    reply.icmp = [
        ICMP_DEST_UNREACH,
        ICMP_FRAG_NEEDED,
        0,
        0,
        0,
        0,
        mtu_hi,
        mtu_lo,
    ];
    let icmp_check =
        (!checksum::fold(checksum::sum(&reply.icmp) + checksum::sum(&reply.quote))).to_ne_bytes();
    reply.icmp[2] = icmp_check[0];
    reply.icmp[3] = icmp_check[1];
    // SAFETY: the context is valid for the program run.
    let ret =
        unsafe { bpf_skb_change_tail(ctx.skb.skb, core::mem::size_of::<FragNeeded>() as u32, 0) };
    if ret != 0 {
        return Err(ret);
    }
    ctx.store(0, &reply, BPF_F_RECOMPUTE_CSUM as u64)
}
