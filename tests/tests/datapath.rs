//! Crafted packets through the TC programs with BPF_PROG_TEST_RUN: every
//! verdict, every rewrite byte for byte, and the counters.
use std::{net::Ipv4Addr, path::PathBuf};

use aya::{
    programs::{TestRun, TestRunOptions},
    Ebpf,
};
use dr_common::{
    nat::{Timeouts, DEFAULT_TABLE_SIZE},
    Counter, DatapathConfig, Traffic,
};
use dr_ctl::{
    datapath::{self, Hook},
    maps::Maps,
    subnet::to_map_addr,
};
use dr_tests::{netns::unique_prefix, require_root};
use etherparse::PacketBuilder;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const CONTAINER: [u8; 4] = [10, 0, 128, 2];
const OTHER_CONTAINER: [u8; 4] = [10, 0, 128, 3];
const GATEWAY: [u8; 4] = [10, 0, 128, 1];
const BROADCAST: [u8; 4] = [10, 0, 128, 255];
const PEER_CONTAINER: [u8; 4] = [10, 0, 129, 2];
const PEER_HOST: [u8; 4] = [192, 168, 91, 129];
const UPLINK_ADDR: [u8; 4] = [192, 168, 91, 128];
const EXTERNAL: [u8; 4] = [203, 0, 113, 7];

/// A loaded datapath with private pinned maps, removed on drop.
struct Datapath {
    ebpf: Ebpf,
    maps: Maps,
    dir: PathBuf,
}

impl Drop for Datapath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config() -> DatapathConfig {
    DatapathConfig {
        enabled: 1,
        local_net: to_map_addr(Ipv4Addr::new(10, 0, 128, 0)),
        local_mask: to_map_addr(Ipv4Addr::new(255, 255, 255, 0)),
        local_prefix_len: 24,
        gateway: to_map_addr(GATEWAY.into()),
        bridge_ifindex: 1001,
        uplink_ifindex: 1000,
        uplink_addr: to_map_addr(UPLINK_ADDR.into()),
        owned: 0,
        nat_enabled: 0,
        nat_port_min: 61000,
        nat_port_max: 65535,
        nat_timeouts: Timeouts::default(),
    }
}

fn datapath(config: DatapathConfig) -> Datapath {
    require_root();
    let dir = PathBuf::from("/sys/fs/bpf").join(unique_prefix("drtest-"));
    std::fs::create_dir_all(&dir).unwrap();
    let ebpf = datapath::load(&dir, DEFAULT_TABLE_SIZE).expect("load eBPF object");
    let mut maps = Maps::open(&dir).unwrap();
    maps.set_config(&config).unwrap();
    maps.upsert_peer("10.0.129.0/24".parse().unwrap(), PEER_HOST.into())
        .unwrap();
    Datapath { ebpf, maps, dir }
}

impl Datapath {
    /// Runs `hook`'s program on `packet`; returns the verdict and the packet as it left.
    fn run(&mut self, hook: Hook, packet: &[u8]) -> (u32, Vec<u8>) {
        let prog = datapath::program(&mut self.ebpf, hook).unwrap();
        let mut out = vec![0u8; packet.len() + 256];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    fn counter(&self, which: Counter) -> Traffic {
        self.maps
            .counters()
            .unwrap()
            .into_iter()
            .find(|(c, _)| *c == which)
            .unwrap()
            .1
    }

    /// Asserts that exactly `which` counted `packets` packets, and nothing else moved.
    fn assert_only(&self, which: Counter, packets: u64) {
        for (c, t) in self.maps.counters().unwrap() {
            let want = if c == which { packets } else { 0 };
            assert_eq!(t.packets, want, "counter {}", c.name());
        }
    }
}

#[derive(Clone, Copy)]
enum L4 {
    Icmp,
    Udp,
    Tcp,
}

/// An Ethernet/IPv4 frame with valid checksums, built by etherparse.
fn frame(src: [u8; 4], dst: [u8; 4], ttl: u8, l4: L4) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let ip = eth.ipv4(src, dst, ttl);
    let payload = b"dr datapath test payload";
    let mut out = Vec::new();
    match l4 {
        L4::Icmp => ip.icmpv4_echo_request(0x1234, 7).write(&mut out, payload),
        L4::Udp => ip.udp(40000, 53).write(&mut out, payload),
        L4::Tcp => ip
            .tcp(40000, 80, 1000, 65535)
            .ack(1)
            .write(&mut out, payload),
    }
    .unwrap();
    out
}

const ALL_L4: [L4; 3] = [L4::Icmp, L4::Udp, L4::Tcp];

#[test]
fn bridge_redirects_container_traffic_to_peer_with_ttl_and_checksum_fixed() {
    let mut dp = datapath(config());
    for (i, l4) in ALL_L4.into_iter().enumerate() {
        let packet = frame(CONTAINER, PEER_CONTAINER, 64, l4);
        let (verdict, out) = dp.run(Hook::BridgeIngress, &packet);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        // The only change is TTL 64 -> 63 with the header checksum to match:
        // compare with the frame etherparse builds for TTL 63.
        assert_eq!(out, frame(CONTAINER, PEER_CONTAINER, 63, l4));
        dp.assert_only(Counter::ToPeer, i as u64 + 1);
    }
    let peer = dp.maps.peers().unwrap()[0];
    let traffic = dp.maps.peer_traffic(peer.slot).unwrap();
    assert_eq!(traffic.to_peer.packets, 3);
    let bytes: usize = ALL_L4
        .iter()
        .map(|l4| frame(CONTAINER, PEER_CONTAINER, 64, *l4).len())
        .sum();
    assert_eq!(traffic.to_peer.bytes, bytes as u64);
    assert_eq!(traffic.from_peer.packets, 0);
}

#[test]
fn bridge_fixes_checksum_for_every_ttl_and_with_ip_options() {
    let mut dp = datapath(config());
    for ttl in [2u8, 3, 17, 128, 255] {
        let packet = frame(CONTAINER, PEER_CONTAINER, ttl, L4::Udp);
        let (verdict, out) = dp.run(Hook::BridgeIngress, &packet);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(
            out,
            frame(CONTAINER, PEER_CONTAINER, ttl - 1, L4::Udp),
            "ttl {ttl}"
        );
    }
    // A header with 4 bytes of options (NOP x3, EOL).
    let mut header =
        etherparse::Ipv4Header::new(8, 64, etherparse::IpNumber::UDP, CONTAINER, PEER_CONTAINER)
            .unwrap();
    header.options = [1u8, 1, 1, 0][..].try_into().unwrap();
    header.header_checksum = header.calc_header_checksum();
    let mut packet = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    header.write(&mut packet).unwrap();
    packet.extend_from_slice(&[0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
    let (verdict, out) = dp.run(Hook::BridgeIngress, &packet);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    header.time_to_live = 63;
    header.header_checksum = header.calc_header_checksum();
    let mut expected = packet[..14].to_vec();
    header.write(&mut expected).unwrap();
    expected.extend_from_slice(&packet[14 + 24..]);
    assert_eq!(out, expected);
}

#[test]
fn bridge_passes_local_and_unknown_destinations_unchanged() {
    let mut dp = datapath(config());
    for dst in [
        OTHER_CONTAINER,
        GATEWAY,
        EXTERNAL,
        UPLINK_ADDR,
        [10, 0, 130, 2],
    ] {
        let packet = frame(CONTAINER, dst, 64, L4::Tcp);
        let (verdict, out) = dp.run(Hook::BridgeIngress, &packet);
        assert_eq!(verdict, TC_ACT_OK, "{dst:?}");
        assert_eq!(out, packet);
    }
    dp.assert_only(Counter::Passed, 5);
}

#[test]
fn bridge_drops_spoofed_sources() {
    let mut dp = datapath(config());
    for src in [PEER_CONTAINER, EXTERNAL, [10, 0, 127, 255], [0, 0, 0, 0]] {
        let (verdict, _) = dp.run(
            Hook::BridgeIngress,
            &frame(src, PEER_CONTAINER, 64, L4::Icmp),
        );
        assert_eq!(verdict, TC_ACT_SHOT, "{src:?}");
    }
    dp.assert_only(Counter::DropSpoofed, 4);
}

#[test]
fn expiring_ttl_is_dropped_on_both_hooks() {
    let mut dp = datapath(config());
    let packet = frame(CONTAINER, PEER_CONTAINER, 1, L4::Udp);
    assert_eq!(dp.run(Hook::BridgeIngress, &packet).0, TC_ACT_SHOT);
    let packet = frame(PEER_CONTAINER, CONTAINER, 1, L4::Udp);
    assert_eq!(dp.run(Hook::UplinkIngress, &packet).0, TC_ACT_SHOT);
    let packet = frame(PEER_CONTAINER, CONTAINER, 0, L4::Udp);
    assert_eq!(dp.run(Hook::UplinkIngress, &packet).0, TC_ACT_SHOT);
    dp.assert_only(Counter::DropTtlExceeded, 3);
}

/// Frames that are not IPv4 at all.
fn non_ipv4_frames() -> Vec<Vec<u8>> {
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
fn malformed_frames() -> Vec<Vec<u8>> {
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

#[test]
fn non_ipv4_passes_and_malformed_ipv4_is_counted_and_passed_unchanged() {
    for hook in Hook::ALL {
        let mut dp = datapath(config());
        let non_ipv4 = non_ipv4_frames();
        for packet in &non_ipv4 {
            let (verdict, out) = dp.run(hook, packet);
            assert_eq!(verdict, TC_ACT_OK);
            assert_eq!(&out, packet);
        }
        dp.assert_only(Counter::Passed, non_ipv4.len() as u64);
        let malformed = malformed_frames();
        for packet in &malformed {
            let (verdict, out) = dp.run(hook, packet);
            assert_eq!(verdict, TC_ACT_OK, "{hook:?} {packet:02x?}");
            assert_eq!(&out, packet);
        }
        assert_eq!(
            dp.counter(Counter::Malformed).packets,
            malformed.len() as u64
        );
    }
}

#[test]
fn uplink_delivers_peer_traffic_to_local_containers() {
    let mut dp = datapath(config());
    for (i, l4) in ALL_L4.into_iter().enumerate() {
        let packet = frame(PEER_CONTAINER, CONTAINER, 62, l4);
        let (verdict, out) = dp.run(Hook::UplinkIngress, &packet);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out, frame(PEER_CONTAINER, CONTAINER, 61, l4));
        dp.assert_only(Counter::FromPeer, i as u64 + 1);
    }
    let peer = dp.maps.peers().unwrap()[0];
    let traffic = dp.maps.peer_traffic(peer.slot).unwrap();
    assert_eq!((traffic.from_peer.packets, traffic.to_peer.packets), (3, 0));
}

#[test]
fn uplink_passes_what_is_not_from_a_peer_to_a_container() {
    let mut dp = datapath(config());
    let cases = [
        (EXTERNAL, CONTAINER),         // unknown source
        (PEER_HOST, CONTAINER),        // the peer host itself, not its containers
        (PEER_CONTAINER, GATEWAY),     // the host's own bridge address
        (PEER_CONTAINER, BROADCAST),   // the local subnet's broadcast
        (PEER_CONTAINER, UPLINK_ADDR), // the host itself
        (EXTERNAL, UPLINK_ADDR),
    ];
    for (src, dst) in cases {
        let packet = frame(src, dst, 64, L4::Tcp);
        let (verdict, out) = dp.run(Hook::UplinkIngress, &packet);
        assert_eq!(verdict, TC_ACT_OK, "{src:?} -> {dst:?}");
        assert_eq!(out, packet);
    }
    dp.assert_only(Counter::Passed, cases.len() as u64);
}

#[test]
fn disabled_config_passes_everything() {
    let mut dp = datapath(DatapathConfig {
        enabled: 0,
        ..config()
    });
    let to_peer = frame(CONTAINER, PEER_CONTAINER, 64, L4::Icmp);
    assert_eq!(
        dp.run(Hook::BridgeIngress, &to_peer),
        (TC_ACT_OK, to_peer.clone())
    );
    let spoofed = frame(EXTERNAL, PEER_CONTAINER, 64, L4::Icmp);
    assert_eq!(dp.run(Hook::BridgeIngress, &spoofed).0, TC_ACT_OK);
    let from_peer = frame(PEER_CONTAINER, CONTAINER, 64, L4::Icmp);
    assert_eq!(
        dp.run(Hook::UplinkIngress, &from_peer),
        (TC_ACT_OK, from_peer.clone())
    );
    dp.assert_only(Counter::Passed, 3);
}

#[test]
fn removed_peer_is_no_longer_forwarded() {
    let mut dp = datapath(config());
    dp.maps
        .remove_peer("10.0.129.0/24".parse().unwrap())
        .unwrap();
    let packet = frame(CONTAINER, PEER_CONTAINER, 64, L4::Udp);
    assert_eq!(
        dp.run(Hook::BridgeIngress, &packet),
        (TC_ACT_OK, packet.clone())
    );
    let packet = frame(PEER_CONTAINER, CONTAINER, 64, L4::Udp);
    assert_eq!(
        dp.run(Hook::UplinkIngress, &packet),
        (TC_ACT_OK, packet.clone())
    );
}
