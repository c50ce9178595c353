//! Path MTU on docker0 ingress: container packets bigger than the uplink's
//! MTU, toward a peer host and through SNAT.
//!
//! ```text
//!  container 10.0.128.2 ── docker0 10.0.128.1 (MTU 1500) ── [dr_bridge_ingress] ── uplink (MTU 1400)
//!    ^                                                      |  fits: redirected to the uplink
//!    └── ICMP 3/4 "fragmentation needed, mtu 1400" ─────────┘  too big, DF: answered back out of docker0
//!                                                              too big, no DF: dropped
//! ```
use etherparse::{
    icmpv4::DestUnreachableHeader, Icmpv4Slice, Icmpv4Type, IpHeaders, IpNumber, Ipv4Dscp,
    Ipv4Header, Ipv4HeaderSlice,
};

use super::*;

const UPLINK_MTU: u16 = 1400;
/// The MACs of [`frame_ports`]: the container's, and docker0's as its gateway.
const CONTAINER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const DOCKER0_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
/// How much of the original IP packet the error quotes.
const QUOTED: usize = 68;

fn mtu_config(base: DatapathConfig) -> DatapathConfig {
    DatapathConfig {
        uplink_mtu: UPLINK_MTU.into(),
        ..base
    }
}

/// A container's frame to `dst` whose IP packet is `ip_len` bytes long.
fn sized_frame(dst: [u8; 4], l4: L4, ip_len: usize, dont_fragment: bool, ttl: u8) -> Vec<u8> {
    let (sport, _) = default_ports(l4);
    sized_frame_from((CONTAINER, sport), dst, l4, ip_len, dont_fragment, ttl)
}

/// [`sized_frame`] from `src` and source port (ICMP: identifier) `sport`.
fn sized_frame_from(
    (src, sport): ([u8; 4], u16),
    dst: [u8; 4],
    l4: L4,
    ip_len: usize,
    dont_fragment: bool,
    ttl: u8,
) -> Vec<u8> {
    let l4_header = match l4 {
        L4::Tcp => 20,
        L4::Udp | L4::Icmp => 8,
    };
    let payload: Vec<u8> = (0..ip_len - 20 - l4_header).map(|i| i as u8).collect();
    let mut ip = Ipv4Header::new(0, ttl, IpNumber(l4.proto()), src, dst).unwrap();
    ip.dont_fragment = dont_fragment;
    let (_, dport) = default_ports(l4);
    let builder = PacketBuilder::ethernet2(CONTAINER_MAC, DOCKER0_MAC)
        .ip(IpHeaders::Ipv4(ip, Default::default()));
    let out = write_request(builder, l4, (sport, dport), &payload);
    assert_eq!(out.len(), 14 + ip_len);
    out
}

/// What the kernel's forwarding path would answer to `original`: an ICMP
/// fragmentation needed with the uplink MTU, from docker0's address to the
/// container, quoting the start of the original packet, built by etherparse.
fn frag_needed(original: &[u8]) -> Vec<u8> {
    let mut ip = Ipv4Header::new(0, 64, IpNumber::ICMP, GATEWAY, CONTAINER).unwrap();
    ip.dont_fragment = false;
    // Precedence "internetwork control", as Linux sends its errors.
    ip.dscp = Ipv4Dscp::try_new(0xc0 >> 2).unwrap();
    let mtu = DestUnreachableHeader::FragmentationNeeded {
        next_hop_mtu: UPLINK_MTU,
    };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(DOCKER0_MAC, CONTAINER_MAC)
        .ip(IpHeaders::Ipv4(ip, Default::default()))
        .icmpv4(Icmpv4Type::DestinationUnreachable(mtu))
        .write(&mut out, &original[14..14 + QUOTED])
        .unwrap();
    out
}

/// Asserts `out` is the frag-needed answer to `original`, checksums
/// recomputed from the bytes that left, then compared whole.
fn assert_frag_needed(out: &[u8], original: &[u8]) {
    let ip = Ipv4HeaderSlice::from_slice(&out[14..]).unwrap();
    assert_eq!(ip.header_checksum(), ip.to_header().calc_header_checksum());
    let icmp = Icmpv4Slice::from_slice(&out[14 + 20..]).unwrap();
    assert_eq!(
        icmp.checksum(),
        icmp.icmp_type().calc_checksum(icmp.payload())
    );
    assert_eq!(out, frag_needed(original));
}

/// An `__sk_buff` for BPF_PROG_TEST_RUN with only the GSO fields set (the
/// kernel copies them into the skb's shared info); up to `hwtstamp`.
fn gso_ctx(gso_size: u32, gso_segs: u32) -> [u8; 184] {
    const GSO_SEGS: usize = 164;
    const GSO_SIZE: usize = 176;
    let mut ctx = [0u8; 184];
    ctx[GSO_SEGS..GSO_SEGS + 4].copy_from_slice(&gso_segs.to_ne_bytes());
    ctx[GSO_SIZE..GSO_SIZE + 4].copy_from_slice(&gso_size.to_ne_bytes());
    ctx
}

impl Datapath {
    /// Runs docker0 ingress on `packet` as a GSO skb of `gso_segs` segments
    /// of `gso_size` payload bytes each.
    fn run_gso(&mut self, packet: &[u8], gso_size: u32, gso_segs: u32) -> (u32, Vec<u8>) {
        let prog = datapath::program(&mut self.ebpf, Hook::BridgeIngress).unwrap();
        let (verdict, out, ..) = test_run_ctx(prog, packet, Some(&gso_ctx(gso_size, gso_segs)));
        (verdict, out)
    }
}

#[test]
fn too_big_df_packet_to_a_peer_gets_frag_needed_back_to_the_container() {
    let mut dp = datapath(mtu_config(config()));
    for (i, l4) in ALL_L4.into_iter().enumerate() {
        let packet = sized_frame(PEER_CONTAINER, l4, 1401, true, 64);
        let (verdict, out) = dp.run(Hook::BridgeIngress, &packet);
        assert_eq!(verdict, TC_ACT_REDIRECT, "{l4:?}");
        assert_frag_needed(&out, &packet);
        dp.assert_only(Counter::IcmpFragNeeded, i as u64 + 1);
    }
    assert_eq!(
        dp.counter(Counter::IcmpFragNeeded).bytes,
        3 * (14 + 1401),
        "counted with the original packets' size"
    );
}

#[test]
fn too_big_df_packet_to_an_external_host_gets_frag_needed_and_no_translation() {
    let mut dp = nat_datapath(mtu_config(nat_config()), DEFAULT_TABLE_SIZE);
    let packet = sized_frame(EXTERNAL, L4::Tcp, 1500, true, 64);
    let (verdict, out) = dp.run(Hook::BridgeIngress, &packet);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_frag_needed(&out, &packet);
    // No translation was created: nat_created did not move either.
    dp.assert_only(Counter::IcmpFragNeeded, 1);
    assert!(dp.maps.nat_flows().unwrap().is_empty());
}

#[test]
fn packet_of_exactly_the_uplink_mtu_is_forwarded_to_a_peer_unchanged_but_its_ttl() {
    let mut dp = datapath(mtu_config(config()));
    let packet = sized_frame(PEER_CONTAINER, L4::Tcp, UPLINK_MTU.into(), true, 64);
    let (verdict, out) = dp.run(Hook::BridgeIngress, &packet);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        out,
        sized_frame(PEER_CONTAINER, L4::Tcp, UPLINK_MTU.into(), true, 63)
    );
    dp.assert_only(Counter::ToPeer, 1);
}

#[test]
fn packet_of_exactly_the_uplink_mtu_is_translated_and_sent() {
    let mut dp = nat_datapath(mtu_config(nat_config()), DEFAULT_TABLE_SIZE);
    let packet = sized_frame(EXTERNAL, L4::Udp, UPLINK_MTU.into(), true, 64);
    let (verdict, out) = dp.run(Hook::BridgeIngress, &packet);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let (sport, dport) = default_ports(L4::Udp);
    let flow = dp.translation(CONTAINER, EXTERNAL, L4::Udp.proto(), (sport, dport));
    let port = u16::from_be(flow.expect("translation recorded").nat_port);
    let translated = (UPLINK_ADDR, port);
    let mtu = UPLINK_MTU.into();
    assert_eq!(
        out,
        sized_frame_from(translated, EXTERNAL, L4::Udp, mtu, true, 63)
    );
    assert_eq!(dp.counter(Counter::NatOut).packets, 1);
    assert_eq!(dp.counter(Counter::IcmpFragNeeded).packets, 0);
}

#[test]
fn too_big_packet_without_df_gets_frag_needed_too_on_both_paths() {
    let mut dp = nat_datapath(mtu_config(nat_config()), DEFAULT_TABLE_SIZE);
    for (i, dst) in [PEER_CONTAINER, EXTERNAL].into_iter().enumerate() {
        let packet = sized_frame(dst, L4::Udp, 1401, false, 64);
        let (verdict, out) = dp.run(Hook::BridgeIngress, &packet);
        assert_eq!(verdict, TC_ACT_REDIRECT, "{dst:?}");
        assert_frag_needed(&out, &packet);
        dp.assert_only(Counter::IcmpFragNeededNoDf, i as u64 + 1);
    }
    assert!(dp.maps.nat_flows().unwrap().is_empty());
}

#[test]
fn gso_packet_whose_segments_do_not_fit_gets_frag_needed() {
    let mut dp = datapath(mtu_config(config()));
    // Segments of 20 + 20 + 1361 = 1401 bytes on the wire: one too many
    // (the next test has them fit).
    let packet = sized_frame(PEER_CONTAINER, L4::Tcp, 40 + 2 * 1361, true, 64);
    let (verdict, out) = dp.run_gso(&packet, 1361, 2);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_frag_needed(&out, &packet);
    dp.assert_only(Counter::IcmpFragNeeded, 1);
}

#[test]
fn gso_packet_whose_segments_fit_is_forwarded_whole() {
    let mut dp = datapath(mtu_config(config()));
    // Segments of 20 + 20 + 1360 = 1400 bytes: the skb is bigger than the
    // MTU, what the uplink sends is not.
    let packet = sized_frame(PEER_CONTAINER, L4::Tcp, 40 + 2 * 1360, true, 64);
    let (verdict, out) = dp.run_gso(&packet, 1360, 2);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        out,
        sized_frame(PEER_CONTAINER, L4::Tcp, 40 + 2 * 1360, true, 63)
    );
    dp.assert_only(Counter::ToPeer, 1);
}
