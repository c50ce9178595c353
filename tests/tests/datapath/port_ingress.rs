//! `dr_port_ingress` (a learned container's docker0 port, ingress): what
//! docker0's program would send to the uplink or drop leaves or is dropped
//! here, byte for byte the same and counted once; everything else is
//! counted here and goes on into the bridge unchanged but for dr's mark,
//! which docker0's program takes off without deciding or counting again.
//!
//! ```text
//!  CONTAINER 10.0.128.2 ──> port [dr_port_ingress] ──TC_ACT_REDIRECT──> dr-uplink ──> PEER_HOST / ROUTER
//!                                  │                  (peer: TTL - 1; external: SNAT)
//!                                  ├─TC_ACT_OK, counted, marked──> bridge ──> docker0 [dr_bridge_ingress] (takes the mark)
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
fn leaves_everything_else_to_the_bridge_counted_and_marked() {
    let mut dp = datapath(config());
    let mut frames: Vec<Vec<u8>> = [OTHER_CONTAINER, GATEWAY, EXTERNAL, UPLINK_ADDR]
        .into_iter()
        .map(|dst| frame(CONTAINER, dst, 64, L4::Tcp))
        .collect();
    frames.extend(non_ipv4_frames());
    // 7: the host's own mark bits, kept all the way.
    for packet in &frames {
        let (verdict, out, mark) = dp.run_port_marked(packet, 7);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(&out, packet);
        assert_eq!(mark, marks::PASSED_BY_PORT | 7);
    }
    dp.assert_only(Counter::Passed, frames.len() as u64);
    // Those the bridge passes up to docker0: let through with the mark
    // taken off, not looked at or counted again.
    for packet in &frames {
        let (verdict, out, mark) =
            dp.run_marked(Hook::BridgeIngress, packet, marks::PASSED_BY_PORT | 7);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(&out, packet);
        assert_eq!(mark, 7);
    }
    dp.assert_only(Counter::Passed, frames.len() as u64);
}

/// The mark is all docker0's program trusts: a packet that met no port
/// program (a container not learned yet) is decided there as before, a
/// spoofed source dropped.
#[test]
fn docker0_decides_what_comes_unmarked() {
    let mut dp = datapath(config());
    let spoofed = frame(PEER_CONTAINER, EXTERNAL, 64, L4::Udp);
    let (verdict, _, _) = dp.run_marked(Hook::BridgeIngress, &spoofed, 7);
    assert_eq!(verdict, TC_ACT_SHOT);
    let to_peer = frame(CONTAINER, PEER_CONTAINER, 64, L4::Udp);
    let (verdict, _, mark) = dp.run_marked(Hook::BridgeIngress, &to_peer, 0);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(mark, marks::REDIRECTED);
    assert_eq!(dp.counter(Counter::DropSpoofed).packets, 1);
    assert_eq!(dp.counter(Counter::ToPeer).packets, 1);
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
