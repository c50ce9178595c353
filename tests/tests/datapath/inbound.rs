//! Flows the containers did not start: answers to a published port (the
//! kernel's DNAT delivered the flow) and to a peer host's own processes are
//! never translated; the host's own packets for peer subnets go to the peer
//! host.
//!
//! ```text
//!  EXTERNAL 203.0.113.7 ──(kernel DNAT)──> docker0 egress ──> CONTAINER 10.0.128.2
//!  PEER_HOST 192.168.91.129 ──> uplink ingress ──> CONTAINER
//!  host (UPLINK_ADDR) ──> uplink egress ──> PEER_HOST ──> PEER_CONTAINER 10.0.129.2
//! ```
use super::{nat::nat_config, *};

/// dr's mark on packets it redirects to an egress where its programs run.
const DR_REDIRECT_MARK: u32 = 1 << 20;

fn syn_ack(src: [u8; 4], dst: [u8; 4], ports: (u16, u16), ttl: u8) -> Vec<u8> {
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

#[test]
fn a_syn_ack_from_a_published_port_is_left_to_the_kernel() {
    let mut dp = datapath(nat_config());
    let answer = syn_ack(CONTAINER, EXTERNAL, (80, 40000), 64);
    let (verdict, out) = dp.run(Hook::BridgeIngress, &answer);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, answer, "passed unchanged, TTL included");
    dp.assert_only(Counter::InboundReply, 1);
    assert!(dp.maps.nat_flows().unwrap().is_empty(), "no translation");
}

#[test]
fn udp_answers_to_a_flow_the_kernel_delivered_are_left_to_the_kernel() {
    let mut dp = datapath(nat_config());
    // The kernel delivers a DNATed datagram: docker0 egress, no dr mark.
    let inbound = frame_ports(EXTERNAL, CONTAINER, 63, L4::Udp, 5000, 53);
    assert_eq!(dp.run(Hook::BridgeEgress, &inbound), (TC_ACT_OK, inbound));
    let answer = frame_ports(CONTAINER, EXTERNAL, 64, L4::Udp, 53, 5000);
    let (verdict, out) = dp.run(Hook::BridgeIngress, &answer);
    assert_eq!((verdict, &out), (TC_ACT_OK, &answer));
    dp.assert_only(Counter::InboundReply, 1);
    // A flow the container starts itself, even from the same port, is translated.
    let own = frame_ports(CONTAINER, EXTERNAL, 64, L4::Udp, 53, 5001);
    let (verdict, out) = dp.run(Hook::BridgeIngress, &own);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out[26..30], UPLINK_ADDR, "source translated");
    assert_eq!(dp.counter(Counter::NatCreated).packets, 1);
}

#[test]
fn packets_dr_delivered_are_not_recorded_as_inbound() {
    let mut dp = datapath(nat_config());
    // A reply dr translated back carries its mark: not the kernel's flow.
    let delivered = frame_ports(EXTERNAL, CONTAINER, 63, L4::Udp, 5000, 53);
    let (verdict, out, mark) = dp.run_marked(Hook::BridgeEgress, &delivered, DR_REDIRECT_MARK | 7);
    assert_eq!((verdict, &out), (TC_ACT_OK, &delivered));
    assert_eq!(mark, 7, "dr's mark cleared, others kept");
    let own = frame_ports(CONTAINER, EXTERNAL, 64, L4::Udp, 53, 5000);
    assert_eq!(dp.run(Hook::BridgeIngress, &own).0, TC_ACT_REDIRECT);
    assert_eq!(dp.counter(Counter::InboundReply).packets, 0);
}

#[test]
fn a_peer_hosts_own_packets_reach_containers_and_answers_go_straight_back() {
    let mut dp = datapath(nat_config());
    for l4 in ALL_L4 {
        let (sport, dport) = default_ports(l4);
        let inbound = frame_ports(PEER_HOST, CONTAINER, 64, l4, sport, dport);
        let (verdict, out, mark) = dp.run_marked(Hook::UplinkIngress, &inbound, 0);
        assert_eq!(verdict, TC_ACT_REDIRECT, "{l4:?}");
        assert_eq!(out, frame_ports(PEER_HOST, CONTAINER, 63, l4, sport, dport));
        assert_eq!(mark, DR_REDIRECT_MARK, "marked for docker0 egress");
    }
    assert_eq!(dp.counter(Counter::FromPeer).packets, 3);
    // The answers: TCP, UDP from the service port, ICMP echo replies.
    let answers = [
        syn_ack(CONTAINER, PEER_HOST, (80, SRC_PORT), 64),
        frame_ports(CONTAINER, PEER_HOST, 64, L4::Udp, 53, SRC_PORT),
        echo_reply(CONTAINER, PEER_HOST, ICMP_ID, 64),
    ];
    for (i, answer) in answers.iter().enumerate() {
        let (verdict, out) = dp.run(Hook::BridgeIngress, answer);
        assert_eq!(verdict, TC_ACT_REDIRECT, "answer {i}");
        let mut expected = answer.clone();
        expected[22] -= 1; // TTL
        let check = u16::from_be_bytes([expected[24], expected[25]]) + 0x100;
        expected[24..26].copy_from_slice(&check.to_be_bytes());
        assert_eq!(out, expected, "untranslated, TTL decremented");
    }
    assert_eq!(dp.counter(Counter::ToPeer).packets, 3);
    assert!(dp.maps.nat_flows().unwrap().is_empty(), "no translation");
}

#[test]
fn a_container_opening_a_flow_to_a_peer_host_is_translated() {
    // So that a published port on the peer host sees this host's address and
    // its answers come back through this host's SNAT.
    let mut dp = datapath(nat_config());
    let port = dp.translate_out(CONTAINER, PEER_HOST, L4::Udp, (SRC_PORT, 53));
    assert!((10000..=32767).contains(&port));
}

#[test]
fn the_hosts_own_packets_for_a_peer_subnet_go_to_the_peer_host() {
    let mut dp = datapath(nat_config());
    for l4 in ALL_L4 {
        let packet = frame(UPLINK_ADDR, PEER_CONTAINER, 64, l4);
        let (verdict, out, mark) = dp.run_marked(Hook::UplinkEgress, &packet, 0);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out, packet, "a local packet: TTL unchanged");
        assert_eq!(mark, DR_REDIRECT_MARK);
        // The redirect leaves by the uplink again: passed, mark cleared.
        assert_eq!(
            dp.run_marked(Hook::UplinkEgress, &packet, DR_REDIRECT_MARK),
            (TC_ACT_OK, packet, 0)
        );
    }
    dp.assert_only(Counter::HostToPeer, 3);
    let peer = dp.maps.peers().unwrap()[0];
    assert_eq!(dp.maps.peer_traffic(peer.slot).unwrap().to_peer.packets, 3);
}

fn echo_reply(src: [u8; 4], dst: [u8; 4], id: u16, ttl: u8) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, ttl)
        .icmpv4(etherparse::Icmpv4Type::EchoReply(
            etherparse::IcmpEchoHeader { id, seq: 7 },
        ))
        .write(&mut out, PAYLOAD)
        .unwrap();
    out
}
