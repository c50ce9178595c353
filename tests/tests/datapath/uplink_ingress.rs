//! `dr_uplink_ingress` for peer traffic: a packet from a peer subnet to a
//! local container is redirected to docker0, TTL decremented, or straight
//! into the container's veth once dr knows it (`ENDPOINTS`); what is not
//! from a peer to a container passes; expiring TTLs are dropped. (SNAT
//! replies on this hook: `nat_ingress.rs`, `nat_icmp_error.rs`; peer
//! hosts' own packets: `inbound.rs`.)
//!
//! ```text
//!  PEER_CONTAINER 10.0.129.2 ──> dr-uplink [dr_uplink_ingress] ──TC_ACT_REDIRECT──> docker0 ──> CONTAINER 10.0.128.2
//!  (via PEER_HOST)               UPLINK_ADDR 192.168.91.128       │ TTL - 1                               ^
//!                                                                 ├─TC_ACT_REDIRECT (peer)──> veth 1 ─────┘ known endpoint:
//!                                                                 │   TTL - 1, MACs BRIDGE_MAC -> CONTAINER_MAC
//!                                                                 ├─TC_ACT_OK──> the stack (not from a peer, to the host)
//!                                                                 └─TC_ACT_SHOT (TTL 1 or 0)
//!  maps: DATAPATH_CONFIG, PEER_SUBNETS 10.0.129.0/24 via PEER_HOST, PEER_HOSTS, PEER_TRAFFIC, COUNTERS,
//!        ENDPOINTS/ENDPOINT_PORTS (CONTAINER -> {veth 1, CONTAINER_MAC}) in the direct-delivery tests
//! ```
use super::*;

#[test]
fn delivers_peer_traffic_to_local_containers() {
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

/// A container dr has learned gets the frame as docker0 would have sent it,
/// handed to its veth directly (`bpf_redirect_peer`); one it has not learned
/// still goes through docker0, unchanged but for its TTL.
#[test]
fn delivers_straight_into_a_learned_containers_veth() {
    let mut dp = xdp_datapath();
    for (i, l4) in ALL_L4.into_iter().enumerate() {
        let (verdict, out) = dp.run(
            Hook::UplinkIngress,
            &frame(PEER_CONTAINER, CONTAINER, 62, l4),
        );
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out, from_docker0(frame(PEER_CONTAINER, CONTAINER, 61, l4)));
        dp.assert_only(Counter::FromPeer, i as u64 + 1);
    }
    let unknown = frame(PEER_CONTAINER, OTHER_CONTAINER, 62, L4::Udp);
    let (verdict, out) = dp.run(Hook::UplinkIngress, &unknown);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out, frame(PEER_CONTAINER, OTHER_CONTAINER, 61, L4::Udp));
}

/// A container's `ENDPOINTS` slot is its address's low 12 bits; the entry
/// there names its address. An entry for another address in the same slot
/// (4096 addresses apart: two containers of a large subnet, or a subnet
/// changed) is not the container's: its packets go through docker0 (TC)
/// or are left to TC (XDP), never into the other's veth.
#[test]
fn an_endpoint_for_another_address_in_the_slot_is_not_used() {
    let mut dp = datapath(config());
    // 10.0.144.2 = 0x0a009002, CONTAINER 10.0.128.2 = 0x0a008002: slot 2.
    add_endpoint(&mut dp, [10, 0, 144, 2]);
    let packet = frame(PEER_CONTAINER, CONTAINER, 62, L4::Udp);
    let (verdict, out) = dp.run(Hook::UplinkIngress, &packet);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out, frame(PEER_CONTAINER, CONTAINER, 61, L4::Udp));
    dp.assert_only(Counter::FromPeer, 1);
    assert_eq!(dp.run_xdp(&packet), (XDP_PASS, packet.clone()));
}

#[test]
fn passes_what_is_not_from_a_peer_to_a_container() {
    let mut dp = datapath(config());
    let cases = [
        (EXTERNAL, CONTAINER),         // unknown source
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
fn expiring_ttl_is_dropped() {
    let mut dp = datapath(config());
    for ttl in [1, 0] {
        let packet = frame(PEER_CONTAINER, CONTAINER, ttl, L4::Udp);
        assert_eq!(dp.run(Hook::UplinkIngress, &packet).0, TC_ACT_SHOT);
    }
    dp.assert_only(Counter::DropTtlExceeded, 2);
}

#[test]
fn non_ipv4_passes_and_malformed_ipv4_is_counted_and_passed_unchanged() {
    datapath(config()).assert_passes_non_ipv4_and_malformed(Hook::UplinkIngress);
}

#[test]
fn disabled_config_passes_everything() {
    let mut dp = datapath(DatapathConfig {
        enabled: 0,
        ..config()
    });
    let from_peer = frame(PEER_CONTAINER, CONTAINER, 64, L4::Icmp);
    assert_eq!(
        dp.run(Hook::UplinkIngress, &from_peer),
        (TC_ACT_OK, from_peer.clone())
    );
    dp.assert_only(Counter::Passed, 1);
}

#[test]
fn removed_peer_is_no_longer_delivered() {
    let mut dp = datapath(config());
    dp.maps
        .remove_peers(&["10.0.129.0/24".parse().unwrap()])
        .unwrap();
    let packet = frame(PEER_CONTAINER, CONTAINER, 64, L4::Udp);
    assert_eq!(
        dp.run(Hook::UplinkIngress, &packet),
        (TC_ACT_OK, packet.clone())
    );
}
