//! Frame builders every datapath test shares. etherparse builds each frame
//! with valid checksums, so a test compares a program's output with the
//! frame it expects, whole (MACs, TTL, addresses, ports, checksums).
//!
//! ```text
//!  frame / frame_ports   a container's (or peer's) packet: ICMP echo request, UDP, TCP SYN
//!  write_request         the same after an IP header of the caller's (options, DF, size)
//!  reply                 a remote's answer to a translated flow, from the wire
//!  icmp_error            ROUTER's ICMP error quoting a packet
//!  syn_ack, echo_reply   a container's answers to flows it did not start
//!  more_fragments        a frame made the first fragment of its packet
//!  non_ipv4_frames, malformed_frames
//! ```
use etherparse::{
    IcmpEchoHeader, Icmpv4Type, IpHeaders, Ipv4HeaderSlice, PacketBuilder, PacketBuilderStep,
};

use super::harness::{CONTAINER, PEER_CONTAINER, ROUTER};

#[derive(Clone, Copy, Debug)]
pub enum L4 {
    Icmp,
    Udp,
    Tcp,
}

impl L4 {
    /// The IP protocol number.
    pub fn proto(self) -> u8 {
        match self {
            L4::Icmp => 1,
            L4::Tcp => 6,
            L4::Udp => 17,
        }
    }
}

/// An Ethernet/IPv4 frame with valid checksums, built by etherparse.
/// ICMP frames are echo requests with identifier `src_port`, TCP frames SYNs.
pub fn frame_ports(
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
    l4: L4,
    src_port: u16,
    dst_port: u16,
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    write_request(eth.ipv4(src, dst, ttl), l4, (src_port, dst_port), PAYLOAD)
}

/// The frame `ip` starts, carrying a request with `payload`: an ICMP echo
/// request with identifier `src_port`, a UDP datagram, or a TCP SYN (the
/// first segment of a connection the container opens).
pub fn write_request(
    ip: PacketBuilderStep<IpHeaders>,
    l4: L4,
    (src_port, dst_port): (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    match l4 {
        L4::Icmp => ip.icmpv4_echo_request(src_port, 7).write(&mut out, payload),
        L4::Udp => ip.udp(src_port, dst_port).write(&mut out, payload),
        L4::Tcp => ip
            .tcp(src_port, dst_port, 1000, 65535)
            .syn()
            .write(&mut out, payload),
    }
    .unwrap();
    out
}

pub const PAYLOAD: &[u8] = b"dr datapath test payload";
/// Default ports of [`frame`]: source 40000 (ICMP identifier 0x1234), destination 53 or 80.
pub const SRC_PORT: u16 = 40000;
pub const ICMP_ID: u16 = 0x1234;

pub fn default_ports(l4: L4) -> (u16, u16) {
    match l4 {
        L4::Icmp => (ICMP_ID, 0),
        L4::Udp => (SRC_PORT, 53),
        L4::Tcp => (SRC_PORT, 80),
    }
}

/// [`frame_ports`] with the default ports.
pub fn frame(src: [u8; 4], dst: [u8; 4], ttl: u8, l4: L4) -> Vec<u8> {
    let (sport, dport) = default_ports(l4);
    frame_ports(src, dst, ttl, l4, sport, dport)
}

pub const ALL_L4: [L4; 3] = [L4::Icmp, L4::Udp, L4::Tcp];

/// Frames that are not IPv4 at all.
pub fn non_ipv4_frames() -> Vec<Vec<u8>> {
    let arp = {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&CONTAINER);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&PEER_CONTAINER);
        f
    };
    let mut ipv6 = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv6([0xfd; 16], [0xfe; 16], 64)
        .udp(1, 2)
        .write(&mut ipv6, b"x")
        .unwrap();
    vec![arp, ipv6, vec![0u8; 14]]
}

/// IPv4 EtherType with a header that cannot be trusted.
pub fn malformed_frames() -> Vec<Vec<u8>> {
    let good = frame(CONTAINER, PEER_CONTAINER, 64, L4::Udp);
    // BPF_PROG_TEST_RUN refuses an IPv4 frame shorter than 20 bytes of IP
    // header, so truncation is shown by a header longer than the frame.
    let mut truncated = good.clone();
    truncated[14] = 0x4f;
    let mut version6 = good.clone();
    version6[14] = 0x65;
    let mut short_ihl = good.clone();
    short_ihl[14] = 0x44;
    let mut long_total = good.clone();
    long_total[16..18].copy_from_slice(&2000u16.to_be_bytes());
    let mut total_below_header = good.clone();
    total_below_header[16..18].copy_from_slice(&19u16.to_be_bytes());
    vec![
        truncated,
        version6,
        short_ihl,
        long_total,
        total_below_header,
    ]
}

/// The remote's answer to the translated flow.
pub fn reply(
    from: [u8; 4],
    to: [u8; 4],
    l4: L4,
    nat_port: u16,
    remote_port: u16,
    ttl: u8,
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 1]);
    let ip = eth.ipv4(from, to, ttl);
    let mut out = Vec::new();
    match l4 {
        L4::Icmp => ip
            .icmpv4(Icmpv4Type::EchoReply(IcmpEchoHeader {
                id: nat_port,
                seq: 7,
            }))
            .write(&mut out, PAYLOAD),
        L4::Udp => ip.udp(remote_port, nat_port).write(&mut out, PAYLOAD),
        L4::Tcp => ip
            .tcp(remote_port, nat_port, 5000, 65535)
            .ack(1001)
            .write(&mut out, PAYLOAD),
    }
    .unwrap();
    out
}

/// An ICMP error from the router quoting `quoted` (an IP packet).
pub fn icmp_error(to: [u8; 4], icmp: Icmpv4Type, quoted: &[u8], ttl: u8) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 1])
        .ipv4(ROUTER, to, ttl)
        .icmpv4(icmp)
        .write(&mut out, quoted)
        .unwrap();
    out
}

pub fn syn_ack(src: [u8; 4], dst: [u8; 4], ports: (u16, u16), ttl: u8) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, ttl)
        .tcp(ports.0, ports.1, 7000, 65535)
        .syn()
        .ack(1001)
        .write(&mut out, b"")
        .unwrap();
    out
}

pub fn echo_reply(src: [u8; 4], dst: [u8; 4], id: u16, ttl: u8) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, ttl)
        .icmpv4(Icmpv4Type::EchoReply(IcmpEchoHeader { id, seq: 7 }))
        .write(&mut out, PAYLOAD)
        .unwrap();
    out
}

/// `frame` with the more-fragments flag set (offset 0) and its header
/// checksum recomputed.
pub fn more_fragments(mut frame: Vec<u8>) -> Vec<u8> {
    frame[14 + 6] = 0x20;
    frame[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let header = Ipv4HeaderSlice::from_slice(&frame[14..])
        .unwrap()
        .to_header();
    let csum = header.calc_header_checksum().to_be_bytes();
    frame[14 + 10..14 + 12].copy_from_slice(&csum);
    frame
}
