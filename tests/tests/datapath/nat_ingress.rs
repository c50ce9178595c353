//! `dr_uplink_ingress` with SNAT on: a reply to a live translation is
//! translated back to its container (destination address and port) and
//! redirected to docker0; replies without one, expired ones and fragments
//! go to the host.
//!
//! ```text
//!  EXTERNAL 203.0.113.7:53 ──> dr-uplink [dr_uplink_ingress] ──TC_ACT_REDIRECT──> docker0 ──> CONTAINER 10.0.128.2:40000
//!  to UPLINK_ADDR:port          NAT_REVERSE (remote, port)   │ dst CONTAINER:40000, TTL - 1, checksums
//!                               -> NAT_FLOWS (live?)         └─TC_ACT_OK──> the host (no or dead translation, fragment)
//!  maps: DATAPATH_CONFIG (nat_enabled), NAT_EXCLUDE, NAT_FLOWS/NAT_REVERSE (filled by a packet out on bridge_ingress first)
//! ```
use aya::maps::{HashMap, MapData};
use dr_common::{
    map_names,
    nat::{Reverse, ReverseKey, State, Timeouts},
};
use dr_ctl::datapath::Sweeper;
use etherparse::{icmpv4, Icmpv4Type};

use super::*;

#[test]
fn outbound_is_translated_and_replies_translated_back_byte_for_byte() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    for l4 in ALL_L4 {
        let ports = default_ports(l4);
        let port = dp.translate_out(CONTAINER, EXTERNAL, l4, ports);
        assert!((10000..=32767).contains(&port));
        // Again: the same translation is reused.
        assert_eq!(dp.translate_out(CONTAINER, EXTERNAL, l4, ports), port);

        let (verdict, out) = dp.run(
            Hook::UplinkIngress,
            &reply(EXTERNAL, UPLINK_ADDR, l4, port, ports.1, 50),
        );
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let back = reply(EXTERNAL, CONTAINER, l4, ports.0, ports.1, 49);
        assert_eq!(out, back, "{l4:?} reply");
    }
    assert_eq!(dp.counter(Counter::NatCreated).packets, 3);
    assert_eq!(dp.counter(Counter::NatOut).packets, 6);
    assert_eq!(dp.counter(Counter::NatIn).packets, 3);
    let tcp = dp
        .translation(CONTAINER, EXTERNAL, 6, default_ports(L4::Tcp))
        .unwrap();
    assert_eq!(tcp.state, State::TcpEstablished as u8);
}

/// A reply for a container dr has learned goes straight into its veth, with
/// the bytes TC gives it otherwise and the MACs of a frame from docker0.
#[test]
fn replies_to_a_learned_container_go_straight_into_its_veth() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    add_endpoint(&mut dp, CONTAINER);
    for l4 in ALL_L4 {
        let ports = default_ports(l4);
        let port = dp.translate_out(CONTAINER, EXTERNAL, l4, ports);
        let (verdict, out) = dp.run(
            Hook::UplinkIngress,
            &reply(EXTERNAL, UPLINK_ADDR, l4, port, ports.1, 50),
        );
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let back = from_docker0(reply(EXTERNAL, CONTAINER, l4, ports.0, ports.1, 49));
        assert_eq!(out, back, "{l4:?} reply");
    }
    assert_eq!(dp.counter(Counter::NatIn).packets, 3);
}

#[test]
fn replies_without_a_translation_go_to_the_host() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    let port = dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, (SRC_PORT, 53));
    for packet in [
        reply(EXTERNAL, UPLINK_ADDR, L4::Udp, port, 54, 50), // other remote port
        reply([203, 0, 113, 8], UPLINK_ADDR, L4::Udp, port, 53, 50), // other remote
        reply(EXTERNAL, UPLINK_ADDR, L4::Tcp, port, 53, 50), // other protocol
        reply(EXTERNAL, UPLINK_ADDR, L4::Udp, 33000, 53, 50), // the host's own port range
    ] {
        assert_eq!(
            dp.run(Hook::UplinkIngress, &packet),
            (TC_ACT_OK, packet.clone())
        );
    }
}

#[test]
fn inbound_fragments_of_replies_go_to_the_host_counted() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    let port = dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, (SRC_PORT, 53));
    let fragment = more_fragments(reply(EXTERNAL, UPLINK_ADDR, L4::Udp, port, 53, 50));
    assert_eq!(
        dp.run(Hook::UplinkIngress, &fragment),
        (TC_ACT_OK, fragment.clone())
    );
    assert_eq!(dp.counter(Counter::NatFragmentIn).packets, 1);
    assert_eq!(dp.counter(Counter::NatIn).packets, 0);
}

/// A datapath with one NAT port (61000), taken by CONTAINER's UDP flow to
/// EXTERNAL:53; the port.
fn one_port_translated() -> (Datapath, u16) {
    let cfg = DatapathConfig {
        nat_port_min: 61000,
        nat_port_max: 61000,
        ..nat_config()
    };
    let mut dp = nat_datapath(cfg, DEFAULT_TABLE_SIZE);
    let port = dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, (SRC_PORT, 53));
    (dp, port)
}

/// A flow the container sent on once (a stream from outside) lives as long
/// as replies keep coming: its last activity is the later of its two
/// directions, as in conntrack. Replies find it in one lookup while they
/// come; when they stop, the flow's own time still counts.
#[test]
fn replies_alone_keep_a_translation_alive() {
    let (mut dp, port) = one_port_translated();
    let answer = reply(EXTERNAL, UPLINK_ADDR, L4::Udp, port, 53, 50);
    let delivered = (
        TC_ACT_REDIRECT,
        reply(EXTERNAL, CONTAINER, L4::Udp, SRC_PORT, 53, 49),
    );
    assert_eq!(dp.run(Hook::UplinkIngress, &answer), delivered);
    // The container has been silent past the UDP timeout; replies came.
    dp.age_packets_out();
    assert_eq!(dp.run(Hook::UplinkIngress, &answer), delivered);
    // Nobody reclaims the port: not another container's flow, not `nat gc`.
    let other = frame_ports(OTHER_CONTAINER, EXTERNAL, 64, L4::Udp, SRC_PORT, 53);
    assert_eq!(dp.run(Hook::BridgeIngress, &other).0, TC_ACT_SHOT);
    assert_eq!(dp.counter(Counter::DropNatPortsExhausted).packets, 1);
    let sweeper = Sweeper::open(&dp.dir).unwrap();
    assert_eq!(sweeper.gc(&dp.maps, &Timeouts::default()).unwrap(), 0);
    // The container's next packet leaves from the same port.
    assert_eq!(
        dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, (SRC_PORT, 53)),
        port
    );
    // Replies stop for longer than the timeout; the container's packet just
    // now keeps the flow, and the next reply is still delivered.
    dp.age_replies();
    assert_eq!(dp.run(Hook::UplinkIngress, &answer), delivered);
    assert_eq!(dp.counter(Counter::NatExpired).packets, 0);
    assert_eq!(dp.counter(Counter::NatIn).packets, 3);
}

#[test]
fn expired_translations_are_not_used_and_their_ports_are_reclaimed() {
    let (mut dp, port) = one_port_translated();
    assert_eq!(port, 61000);
    // Age the translation past its timeout.
    dp.age_translations();
    // A late reply is not delivered.
    let late = reply(EXTERNAL, UPLINK_ADDR, L4::Udp, port, 53, 50);
    assert_eq!(
        dp.run(Hook::UplinkIngress, &late),
        (TC_ACT_OK, late.clone())
    );
    assert_eq!(dp.counter(Counter::NatExpired).packets, 1);
    // Nor is an ICMP error about it.
    let sent = frame_ports(UPLINK_ADDR, EXTERNAL, 63, L4::Udp, port, 53);
    let error = icmp_error(
        UPLINK_ADDR,
        Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port),
        &sent[14..],
        60,
    );
    assert_eq!(
        dp.run(Hook::UplinkIngress, &error),
        (TC_ACT_OK, error.clone())
    );
    assert_eq!(dp.counter(Counter::NatIcmpErrorIn).packets, 0);
    assert_eq!(dp.counter(Counter::NatExpired).packets, 2);
    // Another container gets the only port.
    assert_eq!(
        dp.translate_out(OTHER_CONTAINER, EXTERNAL, L4::Udp, (SRC_PORT, 53)),
        61000
    );
    assert_eq!(dp.counter(Counter::NatExpired).packets, 3);
    let reverse: HashMap<MapData, ReverseKey, Reverse> = dp.raw_map(map_names::NAT_REVERSE);
    assert_eq!(reverse.iter().count(), 1);
}
