//! `dr_uplink_xdp`, the fast path on the uplink (`up --xdp`): peer traffic
//! and SNAT replies to known local containers go straight to their veth;
//! everything else is left to TC, unchanged.
//!
//! ```text
//!  PEER_CONTAINER 10.0.129.2 ─┐                                    ENDPOINTS: CONTAINER -> {veth 1, CONTAINER_MAC}
//!  EXTERNAL 203.0.113.7 ──────┴─> dr-uplink [dr_uplink_xdp] ──XDP_REDIRECT──> veth 1 ──> CONTAINER 10.0.128.2
//!                                  UPLINK_ADDR 192.168.91.128     │ TTL - 1, MACs BRIDGE_MAC -> CONTAINER_MAC,
//!                                                                 │ a reply's destination translated back
//!                                                                 └─XDP_PASS──> TC (uplink_ingress), unchanged
//!  maps: DATAPATH_CONFIG, PEER_SUBNETS (10.0.129.0/24 via PEER_HOST), ENDPOINTS (xdp_ready), ENDPOINT_PORTS,
//!        NAT_FLOWS/NAT_REVERSE (filled by a translation on bridge_ingress first)
//! ```
use super::*;

#[test]
fn peer_traffic_to_a_known_container_is_redirected_to_its_veth() {
    let mut dp = xdp_datapath();
    for (i, l4) in ALL_L4.into_iter().enumerate() {
        let (verdict, out) = dp.run_xdp(&frame(PEER_CONTAINER, CONTAINER, 62, l4));
        assert_eq!(verdict, XDP_REDIRECT);
        // TTL and checksum as in TC, and the MACs of a frame from docker0 to the container.
        assert_eq!(out, from_docker0(frame(PEER_CONTAINER, CONTAINER, 61, l4)));
        assert_eq!(dp.counter(Counter::XdpRedirect).packets, i as u64 + 1);
        assert_eq!(dp.counter(Counter::FromPeer).packets, i as u64 + 1);
    }
    let peer = dp.maps.peers().unwrap()[0];
    assert_eq!(
        dp.maps.peer_traffic(peer.slot).unwrap().from_peer.packets,
        3
    );
}

#[test]
fn everything_else_is_left_to_tc_unchanged() {
    let mut dp = xdp_datapath();
    let mut cases = vec![
        frame(PEER_CONTAINER, OTHER_CONTAINER, 62, L4::Udp), // no endpoint known
        frame(EXTERNAL, CONTAINER, 62, L4::Udp),             // not from a peer
        frame(PEER_CONTAINER, GATEWAY, 62, L4::Udp),         // the host itself
        frame(PEER_CONTAINER, UPLINK_ADDR, 62, L4::Tcp),     // the host itself
        frame(PEER_CONTAINER, CONTAINER, 1, L4::Udp),        // expiring TTL: TC drops and counts
        frame(EXTERNAL, UPLINK_ADDR, 62, L4::Tcp),           // SNAT replies: TC
    ];
    cases.extend(non_ipv4_frames());
    cases.extend(malformed_frames());
    assert_all_left_to_tc_unchanged(&mut dp, &cases);
}

/// Each of `cases` (run on a fresh `dp`) is passed to TC as it came, and
/// counted so; XDP redirected none.
fn assert_all_left_to_tc_unchanged(dp: &mut Datapath, cases: &[Vec<u8>]) {
    for packet in cases {
        assert_eq!(
            dp.run_xdp(packet),
            (XDP_PASS, packet.clone()),
            "{packet:02x?}"
        );
    }
    assert_eq!(dp.counter(Counter::XdpPass).packets, cases.len() as u64);
    assert_eq!(dp.counter(Counter::XdpRedirect).packets, 0);
}

#[test]
fn snat_replies_to_a_known_container_are_translated_and_redirected() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    add_endpoint(&mut dp, CONTAINER);
    for l4 in ALL_L4 {
        let ports = default_ports(l4);
        let port = dp.translate_out(CONTAINER, EXTERNAL, l4, ports);
        let (verdict, out) = dp.run_xdp(&reply(EXTERNAL, UPLINK_ADDR, l4, port, ports.1, 50));
        assert_eq!(verdict, XDP_REDIRECT, "{l4:?}");
        // The same bytes TC would produce, with the MACs of a frame from docker0.
        let expected = from_docker0(reply(EXTERNAL, CONTAINER, l4, ports.0, ports.1, 49));
        assert_eq!(out, expected, "{l4:?}");
    }
    assert_eq!(dp.counter(Counter::NatIn).packets, 3);
    // A reply for another container (no endpoint) or to an unknown port is TC's.
    let port = dp.translate_out(OTHER_CONTAINER, EXTERNAL, L4::Udp, (SRC_PORT, 53));
    let other = reply(EXTERNAL, UPLINK_ADDR, L4::Udp, port, 53, 50);
    assert_eq!(dp.run_xdp(&other), (XDP_PASS, other.clone()));
    let unknown = reply(EXTERNAL, UPLINK_ADDR, L4::Udp, 20000, 53, 50);
    assert_eq!(dp.run_xdp(&unknown), (XDP_PASS, unknown.clone()));
}

#[test]
fn a_container_xdp_cannot_redirect_into_is_left_to_tc_unchanged() {
    // Native XDP into a veth whose container end has no GRO: the kernel
    // would drop the frame, so dr-ctl marks the endpoint not ready.
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    add_endpoint_xdp_ready(&mut dp, CONTAINER, false);
    let mut cases = vec![frame(PEER_CONTAINER, CONTAINER, 62, L4::Udp)];
    for l4 in ALL_L4 {
        let ports = default_ports(l4);
        let port = dp.translate_out(CONTAINER, EXTERNAL, l4, ports);
        cases.push(reply(EXTERNAL, UPLINK_ADDR, l4, port, ports.1, 50));
    }
    assert_all_left_to_tc_unchanged(&mut dp, &cases);
    assert_eq!(dp.counter(Counter::NatIn).packets, 0);
}

#[test]
fn disabled_config_passes_everything() {
    let mut dp = datapath(DatapathConfig {
        enabled: 0,
        ..config()
    });
    let packet = frame(PEER_CONTAINER, CONTAINER, 62, L4::Icmp);
    assert_eq!(dp.run_xdp(&packet), (XDP_PASS, packet.clone()));
}
