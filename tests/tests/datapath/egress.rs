//! The egress programs: `dr_uplink_egress` sends the host's own packets for
//! a peer subnet to the peer host; both it and `dr_bridge_egress` (which
//! records inbound flows, `inbound.rs`) leave everything else unchanged and
//! uncounted.
//!
//! ```text
//!  host's own packet ──> dr-uplink [dr_uplink_egress] ──TC_ACT_REDIRECT, marked──> dr-uplink ──> PEER_HOST 192.168.91.129
//!  UPLINK_ADDR 192.168.91.128 -> PEER_CONTAINER 10.0.129.2   (TTL unchanged: a local packet)  └─ PEER_CONTAINER
//!  anything else ──> [dr_uplink_egress] / [dr_bridge_egress] ──TC_ACT_OK, unchanged, uncounted
//!  maps: DATAPATH_CONFIG (SNAT on), PEER_SUBNETS 10.0.129.0/24 via PEER_HOST, PEER_TRAFFIC, COUNTERS
//! ```
use super::*;

#[test]
fn egress_programs_leave_what_is_not_theirs_unchanged_and_uncounted() {
    let mut dp = datapath(nat_config());
    let mut frames = non_ipv4_frames();
    frames.extend(malformed_frames());
    for l4 in ALL_L4 {
        // Another source than the uplink's own, and traffic to the cluster.
        frames.push(frame(PEER_HOST, PEER_CONTAINER, 64, l4));
        frames.push(frame(PEER_CONTAINER, CONTAINER, 64, l4));
    }
    for hook in [Hook::BridgeEgress, Hook::UplinkEgress] {
        for packet in &frames {
            let (verdict, out) = dp.run(hook, packet);
            assert_eq!(verdict, TC_ACT_OK, "{hook:?} {packet:02x?}");
            assert_eq!(&out, packet);
        }
    }
    dp.assert_only(Counter::Passed, 0);
}

#[test]
fn the_hosts_own_packets_for_a_peer_subnet_go_to_the_peer_host() {
    let mut dp = datapath(nat_config());
    for l4 in ALL_L4 {
        let packet = frame(UPLINK_ADDR, PEER_CONTAINER, 64, l4);
        let (verdict, out, mark) = dp.run_marked(Hook::UplinkEgress, &packet, 0);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out, packet, "a local packet: TTL unchanged");
        assert_eq!(mark, marks::REDIRECTED);
        // The redirect leaves by the uplink again: passed, mark cleared.
        assert_eq!(
            dp.run_marked(Hook::UplinkEgress, &packet, marks::REDIRECTED),
            (TC_ACT_OK, packet, 0)
        );
    }
    dp.assert_only(Counter::HostToPeer, 3);
    let peer = dp.maps.peers().unwrap()[0];
    assert_eq!(dp.maps.peer_traffic(peer.slot).unwrap().to_peer.packets, 3);
}
