//! `dr_port_ingress` (a learned container's docker0 port, ingress): what
//! docker0's program would send to the uplink or drop leaves or is dropped
//! here, byte for byte the same and counted once; everything else goes on
//! into the bridge unchanged and uncounted, for docker0's program to decide
//! and count.
//!
//! ```text
//!  CONTAINER 10.0.128.2 ──> port [dr_port_ingress] ──TC_ACT_REDIRECT──> dr-uplink ──> PEER_HOST / ROUTER
//!                                  │                  (peer: TTL - 1; external: SNAT)
//!                                  ├─TC_ACT_OK, uncounted──> bridge ──> docker0 [dr_bridge_ingress] (counts)
//!                                  └─TC_ACT_SHOT (spoofed source)
//!  maps: DATAPATH_CONFIG (SNAT on or off), PEER_SUBNETS 10.0.129.0/24 via PEER_HOST, NAT_*, COUNTERS
//! ```
use super::*;

#[test]
fn sends_peer_traffic_to_the_uplink_as_docker0_would() {
    let mut dp = datapath(config());
    for (i, l4) in ALL_L4.into_iter().enumerate() {
        let packet = frame(CONTAINER, PEER_CONTAINER, 64, l4);
        let (verdict, out) = dp.run_port(&packet);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out, frame(CONTAINER, PEER_CONTAINER, 63, l4));
        dp.assert_only(Counter::ToPeer, i as u64 + 1);
    }
    let peer = dp.maps.peers().unwrap()[0];
    assert_eq!(dp.maps.peer_traffic(peer.slot).unwrap().to_peer.packets, 3);
}

#[test]
fn translates_external_traffic_as_docker0_would() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    for l4 in ALL_L4 {
        let packet = frame(CONTAINER, EXTERNAL, 64, l4);
        let (verdict, from_port) = dp.run_port(&packet);
        assert_eq!(verdict, TC_ACT_REDIRECT, "{l4:?}");
        // docker0's program finds the translation the port's made, and
        // rewrites the same packet to the same bytes.
        let (verdict, from_docker0) = dp.run(Hook::BridgeIngress, &packet);
        assert_eq!(verdict, TC_ACT_REDIRECT, "{l4:?}");
        assert_eq!(from_port, from_docker0, "{l4:?}");
        assert_eq!(&from_port[26..30], &UPLINK_ADDR, "{l4:?}");
    }
    assert_eq!(dp.counter(Counter::NatOut).packets, 6);
    assert_eq!(dp.counter(Counter::Passed).packets, 0);
}

#[test]
fn leaves_everything_else_to_the_bridge_uncounted() {
    let mut dp = datapath(config());
    let mut frames: Vec<Vec<u8>> = [OTHER_CONTAINER, GATEWAY, EXTERNAL, UPLINK_ADDR]
        .into_iter()
        .map(|dst| frame(CONTAINER, dst, 64, L4::Tcp))
        .collect();
    frames.extend(non_ipv4_frames());
    for packet in &frames {
        let (verdict, out) = dp.run_port(packet);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(&out, packet);
    }
    for (c, t) in dp.maps.counters().unwrap() {
        assert_eq!(t.packets, 0, "counter {}", c.name());
    }
    // Those the bridge passes up to docker0 are counted there, once.
    for packet in &frames[..4] {
        assert_eq!(dp.run(Hook::BridgeIngress, packet).0, TC_ACT_OK);
    }
    dp.assert_only(Counter::Passed, 4);
}

#[test]
fn drops_a_spoofed_source() {
    let mut dp = datapath(config());
    for src in [PEER_CONTAINER, GATEWAY] {
        let (verdict, _) = dp.run_port(&frame(src, PEER_CONTAINER, 64, L4::Udp));
        assert_eq!(verdict, TC_ACT_SHOT);
    }
    dp.assert_only(Counter::DropSpoofed, 2);
}
