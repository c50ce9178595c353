//! Flows the containers did not start, across docker0 egress, uplink
//! ingress and docker0 ingress: answers to a published port (the kernel's
//! DNAT delivered the flow) and to a peer host's own processes are never
//! translated.
//!
//! ```text
//!  EXTERNAL 203.0.113.7 ──(kernel DNAT)──> docker0 [dr_bridge_egress] ──> CONTAINER 10.0.128.2
//!                                           records INBOUND_FLOWS          │ answer: SYN-ACK, UDP
//!                                    <──(kernel, conntrack)── TC_ACT_OK ── [dr_bridge_ingress]
//!  PEER_HOST 192.168.91.129 ──> [dr_uplink_ingress] ──(marked)──> CONTAINER
//!                           <──TC_ACT_REDIRECT, untranslated── [dr_bridge_ingress] <── answer
//!  maps: DATAPATH_CONFIG (SNAT on), PEER_SUBNETS, PEER_HOSTS, INBOUND_FLOWS, NAT_FLOWS (stays empty)
//! ```
use super::*;

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
    // (`translate_out` compares the whole translated frame.)
    dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, (53, 5001));
    assert_eq!(dp.counter(Counter::NatCreated).packets, 1);
}

#[test]
fn packets_dr_delivered_are_not_recorded_as_inbound() {
    let mut dp = datapath(nat_config());
    // A reply dr translated back carries its mark: not the kernel's flow.
    let delivered = frame_ports(EXTERNAL, CONTAINER, 63, L4::Udp, 5000, 53);
    let (verdict, out, mark) = dp.run_marked(Hook::BridgeEgress, &delivered, marks::REDIRECTED | 7);
    assert_eq!((verdict, &out), (TC_ACT_OK, &delivered));
    assert_eq!(mark, 7, "dr's mark cleared, others kept");
    dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, (53, 5000));
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
        assert_eq!(mark, marks::REDIRECTED, "marked for docker0 egress");
    }
    assert_eq!(dp.counter(Counter::FromPeer).packets, 3);
    // The answers: TCP, UDP from the service port, ICMP echo replies.
    let answers: [fn(u8) -> Vec<u8>; 3] = [
        |ttl| syn_ack(CONTAINER, PEER_HOST, (80, SRC_PORT), ttl),
        |ttl| frame_ports(CONTAINER, PEER_HOST, ttl, L4::Udp, 53, SRC_PORT),
        |ttl| echo_reply(CONTAINER, PEER_HOST, ICMP_ID, ttl),
    ];
    for (i, answer) in answers.iter().enumerate() {
        let (verdict, out) = dp.run(Hook::BridgeIngress, &answer(64));
        assert_eq!(verdict, TC_ACT_REDIRECT, "answer {i}");
        assert_eq!(out, answer(63), "untranslated, TTL decremented");
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
