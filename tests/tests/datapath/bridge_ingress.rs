//! `dr_bridge_ingress` (docker0 ingress) for peer traffic: a container's
//! packet to a peer subnet is redirected to the uplink toward the peer host,
//! TTL decremented; local and unknown destinations pass; spoofed sources
//! and expiring TTLs are dropped. (SNAT on this hook: `nat_egress.rs`; path
//! MTU: `mtu.rs`; answers to flows it did not start: `inbound.rs`.)
//!
//! ```text
//!  CONTAINER 10.0.128.2 ──> docker0 [dr_bridge_ingress] ──TC_ACT_REDIRECT──> dr-uplink ──> PEER_HOST 192.168.91.129
//!                           GATEWAY 10.0.128.1               │ TTL - 1                       └─ PEER_CONTAINER 10.0.129.2
//!                                                            ├─TC_ACT_OK──> the stack (local, unknown, non-IPv4, malformed)
//!                                                            └─TC_ACT_SHOT (spoofed source, TTL 1)
//!  maps: DATAPATH_CONFIG (SNAT off), PEER_SUBNETS 10.0.129.0/24 via PEER_HOST, PEER_TRAFFIC, COUNTERS
//! ```
use std::net::Ipv4Addr;

use dr_common::peer_span;
use dr_ctl::peer::Peer;

use super::*;

#[test]
fn redirects_container_traffic_to_peer_with_ttl_and_checksum_fixed() {
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
fn fixes_checksum_for_every_ttl_and_with_ip_options() {
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
fn passes_local_and_unknown_destinations_unchanged() {
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
fn drops_spoofed_sources() {
    let mut dp = datapath(config());
    // Outside the local subnet, or the host's own addresses in it (the
    // kernel drops those as martians; dr must not forward them either).
    let sources = [
        PEER_CONTAINER,
        EXTERNAL,
        [10, 0, 127, 255],
        [0, 0, 0, 0],
        GATEWAY,
        BROADCAST,
        [10, 0, 128, 0],
    ];
    for src in sources {
        let (verdict, _) = dp.run(
            Hook::BridgeIngress,
            &frame(src, PEER_CONTAINER, 64, L4::Icmp),
        );
        assert_eq!(verdict, TC_ACT_SHOT, "{src:?}");
    }
    dp.assert_only(Counter::DropSpoofed, sources.len() as u64);
}

#[test]
fn expiring_ttl_is_dropped() {
    let mut dp = datapath(config());
    let packet = frame(CONTAINER, PEER_CONTAINER, 1, L4::Udp);
    assert_eq!(dp.run(Hook::BridgeIngress, &packet).0, TC_ACT_SHOT);
    dp.assert_only(Counter::DropTtlExceeded, 1);
}

#[test]
fn non_ipv4_passes_and_malformed_ipv4_is_counted_and_passed_unchanged() {
    datapath(config()).assert_passes_non_ipv4_and_malformed(Hook::BridgeIngress);
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
    dp.assert_only(Counter::Passed, 2);
}

#[test]
fn removed_peer_is_no_longer_forwarded() {
    let mut dp = datapath(config());
    dp.maps
        .remove_peers(&["10.0.129.0/24".parse().unwrap()])
        .unwrap();
    let packet = frame(CONTAINER, PEER_CONTAINER, 64, L4::Udp);
    assert_eq!(
        dp.run(Hook::BridgeIngress, &packet),
        (TC_ACT_OK, packet.clone())
    );
}

/// The peer span dr-ctl keeps in the configuration: each peer subnet
/// inside it (so every peer is looked up), wider before a peer is added
/// and narrower once one is removed; an address outside it is looked up in
/// no table, even where a stale table would name a peer.
#[test]
fn the_peer_span_holds_every_peer_and_outside_it_no_peer_is_looked_up() {
    fn dp_span(dp: &Datapath) -> u32 {
        dp.maps.config().unwrap().peer_span
    }
    let mut dp = datapath(config());
    assert_eq!(
        dp_span(&dp),
        peer_span::of([(u32::from(Ipv4Addr::new(10, 0, 129, 0)), 24)])
    );
    let far = Peer {
        subnet: "10.9.0.0/24".parse().unwrap(),
        via: PEER_HOST.into(),
    };
    dp.maps.upsert_peers(&[far]).unwrap();
    let far_container = [10, 9, 0, 7];
    for to in [PEER_CONTAINER, far_container] {
        assert!(peer_span::holds(dp_span(&dp), u32::from_ne_bytes(to)));
        let packet = frame(CONTAINER, to, 64, L4::Udp);
        assert_eq!(
            dp.run(Hook::BridgeIngress, &packet).0,
            TC_ACT_REDIRECT,
            "{to:?}"
        );
    }
    dp.maps.remove_peers(&[far.subnet]).unwrap();
    assert!(!peer_span::holds(
        dp_span(&dp),
        u32::from_ne_bytes(far_container)
    ));
    // A span that leaves out the remaining peer: the datapath trusts it.
    let config = DatapathConfig {
        peer_span: peer_span::of([(u32::from(Ipv4Addr::new(10, 0, 130, 0)), 24)]),
        ..dp.maps.config().unwrap()
    };
    dp.maps.set_config(&config).unwrap();
    let packet = frame(CONTAINER, PEER_CONTAINER, 64, L4::Udp);
    assert_eq!(
        dp.run(Hook::BridgeIngress, &packet),
        (TC_ACT_OK, packet.clone())
    );
}
