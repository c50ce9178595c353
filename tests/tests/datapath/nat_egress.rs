//! `dr_bridge_ingress` (docker0 ingress) with SNAT on: a container's flow
//! to outside the cluster is translated to the uplink's address and a port
//! of the NAT range when the host routes it out of the uplink; excluded
//! destinations, other routes and non-echo ICMP pass; fragments, exhausted
//! ports and a full table drop.
//!
//! ```text
//!  CONTAINER 10.0.128.2:40000 ──> docker0 [dr_bridge_ingress] ──TC_ACT_REDIRECT──> dr-uplink ──> ROUTER ──> EXTERNAL 203.0.113.7:53
//!  OTHER_CONTAINER 10.0.128.3     (route: bpf_fib_lookup)     │ src UPLINK_ADDR 192.168.91.128:port, TTL - 1, checksums
//!                                                             ├─TC_ACT_OK──> the stack (excluded, host, other route)
//!                                                             └─TC_ACT_SHOT (fragment, ports exhausted, table full)
//!  maps: DATAPATH_CONFIG (nat_enabled, ports 10000-32767 unless narrowed), NAT_EXCLUDE 10.0.0.0/16 172.16.0.0/12,
//!        NAT_FLOWS, NAT_REVERSE (filled here), PEER_SUBNETS 10.0.129.0/24
//! ```
use aya::maps::{HashMap, MapData};
use dr_common::{
    map_names,
    nat::{Flow, FlowKey, Reverse, ReverseKey, IPPROTO_UDP},
};
use dr_ctl::datapath::Sweeper;
use etherparse::{icmpv4, Icmpv4Type, IpHeaders, IpNumber, Ipv4Dscp, Ipv4Header};

use super::*;

const NOT_A_PEER: [u8; 4] = [10, 0, 200, 5];
const EXCLUDED: [u8; 4] = [172, 16, 3, 4];

#[test]
fn new_flows_are_translated_only_when_the_host_routes_them_out_of_the_uplink() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    // A second interface toward a management network, and a blackhole.
    veth_pair("dr-mgmt", 1002);
    ip("addr add 198.18.0.1/24 dev dr-mgmt");
    ip("route add blackhole 198.51.100.0/24");
    const MGMT_SERVER: [u8; 4] = [198, 18, 0, 10];
    const MGMT_HOST_ADDR: [u8; 4] = [198, 18, 0, 1];
    const LOOPBACK: [u8; 4] = [127, 0, 0, 1];
    const BLACKHOLED: [u8; 4] = [198, 51, 100, 9];
    let mut passed = 0;
    for l4 in ALL_L4 {
        // Routed out of another interface, delivered by the host itself, or
        // refused by a route: the kernel's, untranslated.
        for dst in [MGMT_SERVER, MGMT_HOST_ADDR, LOOPBACK, BLACKHOLED] {
            let packet = frame(CONTAINER, dst, 64, l4);
            assert_eq!(
                dp.run(Hook::BridgeIngress, &packet),
                (TC_ACT_OK, packet.clone()),
                "{l4:?} to {dst:?}"
            );
            passed += 1;
        }
        // The default route leaves by the uplink.
        dp.translate_out(CONTAINER, EXTERNAL, l4, default_ports(l4));
    }
    assert_eq!(dp.maps.nat_flows().unwrap().len(), 3);
    assert_eq!(dp.counter(Counter::Passed).packets, passed);
    assert_eq!(dp.counter(Counter::NatCreated).packets, 3);

    // With forwarding off on docker0 the FIB has no answer for a forwarded
    // packet: the uplink, as before dr asked.
    set_forwarding(false);
    dp.translate_out(CONTAINER, MGMT_SERVER, L4::Udp, default_ports(L4::Udp));
}

/// The FIB is asked as the kernel's forwarding path routes the flow, its
/// protocol, ports and TOS included: policy rules on them send a flow out
/// of another interface, untranslated, while the same destination leaves
/// by the uplink, translated, for every other protocol, port and TOS. An
/// echo's identifier is no port to the kernel's rules.
#[test]
fn policy_rules_on_protocol_ports_and_tos_decide_as_for_the_kernel() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    veth_pair("dr-mgmt", 1002);
    ip("addr add 198.18.0.1/24 dev dr-mgmt");
    ip("route add default via 198.18.0.254 dev dr-mgmt table 100");
    const RULED_PORT: u16 = 41000;
    const ECHO_ID: u16 = 4660;
    for rule in [
        "ipproto udp dport 5353",
        "ipproto tcp sport 41000",
        "sport 4660",
        "tos 0x10",
    ] {
        ip(&format!("rule add {rule} table 100"));
    }
    let with_tos = |tos: u8| {
        let mut ip = Ipv4Header::new(0, 64, IpNumber::UDP, CONTAINER, EXTERNAL).unwrap();
        ip.dscp = Ipv4Dscp::try_new(tos >> 2).unwrap();
        let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ip(IpHeaders::Ipv4(ip, Default::default()));
        write_request(builder, L4::Udp, default_ports(L4::Udp), PAYLOAD)
    };
    for packet in [
        frame_ports(CONTAINER, EXTERNAL, 64, L4::Udp, SRC_PORT, 5353),
        frame_ports(CONTAINER, EXTERNAL, 64, L4::Tcp, RULED_PORT, 80),
        frame_ports(CONTAINER, EXTERNAL, 64, L4::Udp, ECHO_ID, 53),
        with_tos(0x10),
    ] {
        assert_eq!(
            dp.run(Hook::BridgeIngress, &packet),
            (TC_ACT_OK, packet.clone())
        );
    }
    assert!(dp.maps.nat_flows().unwrap().is_empty());

    dp.translate_out(CONTAINER, EXTERNAL, L4::Tcp, (SRC_PORT, 5353));
    dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, (SRC_PORT, 5354));
    dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, (RULED_PORT, 53));
    dp.translate_out(CONTAINER, EXTERNAL, L4::Icmp, (ECHO_ID, 0));
    let other_tos = with_tos(0x08);
    assert_eq!(dp.run(Hook::BridgeIngress, &other_tos).0, TC_ACT_REDIRECT);
    assert_eq!(dp.counter(Counter::NatCreated).packets, 5);
}

/// A translated flow leaves for the next hop the host's FIB gives (the
/// router, or the destination itself on the uplink's link), which its
/// redirect hands the kernel instead of having it route every packet. The
/// flow keeps it for a route period, then asks the FIB again: a changed
/// route applies to the live flow, and one that no longer leaves by the
/// uplink leaves its packets to the kernel's routing, still translated.
#[test]
fn translated_flows_leave_for_the_fibs_next_hop_and_follow_a_changed_route() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    const ON_LINK: [u8; 4] = [192, 168, 91, 77];
    const OTHER_ROUTER: [u8; 4] = [192, 168, 91, 253];
    let ports = default_ports(L4::Udp);
    let next_hop = |dp: &Datapath, dst: [u8; 4]| {
        let flow = dp.translation(CONTAINER, dst, IPPROTO_UDP, ports).unwrap();
        assert_ne!(flow.next_hop_period, 0, "looked up");
        flow.next_hop
    };
    let traced_next_hop = |dp: &Datapath, dst: [u8; 4]| {
        let dry = dp.dry_run(Hook::BridgeIngress, &frame(CONTAINER, dst, 64, L4::Udp));
        assert_eq!(dry.verdict, TC_ACT_REDIRECT);
        dry.trace.next_hop
    };
    let port = dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, ports);
    assert_eq!(next_hop(&dp, EXTERNAL), to_map_addr(ROUTER.into()));
    dp.translate_out(CONTAINER, ON_LINK, L4::Udp, ports);
    assert_eq!(next_hop(&dp, ON_LINK), to_map_addr(ON_LINK.into()));

    // The default route moves to another router: once the flow's period
    // is over (as a flow carried over from a version without next hops
    // starts), its next packet asks the FIB and leaves for the new one,
    // from the same port.
    ip("route replace default via 192.168.91.253 dev dr-uplink");
    let new_period = |dp: &Datapath| {
        let mut flows = dp.raw_map::<FlowKey, Flow>(map_names::NAT_FLOWS);
        let all: Vec<_> = flows.iter().map(Result::unwrap).collect();
        for (key, mut flow) in all {
            flow.next_hop_period = 0;
            flows.insert(key, flow, 0).unwrap();
        }
    };
    new_period(&dp);
    assert_eq!(
        traced_next_hop(&dp, EXTERNAL),
        to_map_addr(OTHER_ROUTER.into())
    );
    assert_eq!(dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, ports), port);
    assert_eq!(next_hop(&dp, EXTERNAL), to_map_addr(OTHER_ROUTER.into()));
    assert_eq!(
        traced_next_hop(&dp, EXTERNAL),
        to_map_addr(OTHER_ROUTER.into())
    );

    // Now routed out of another interface: the live flow keeps its
    // translation (as a conntrack entry would), the kernel routes it.
    veth_pair("dr-mgmt", 1002);
    ip("route add 203.0.113.0/24 dev dr-mgmt");
    new_period(&dp);
    assert_eq!(dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, ports), port);
    assert_eq!(next_hop(&dp, EXTERNAL), 0);
    assert_eq!(traced_next_hop(&dp, EXTERNAL), 0);
    assert_eq!(dp.counter(Counter::NatCreated).packets, 2);
}

/// As with conntrack and the recipe's MASQUERADE: an exclusion added while a
/// flow is translated applies to new flows; the live one keeps its
/// translation (the exclusions are not asked on its every packet).
#[test]
fn an_exclusion_added_later_applies_to_new_flows_only() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    let live = default_ports(L4::Udp);
    let port = dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, live);
    dp.maps
        .set_exclusions(&[
            "10.0.0.0/16".parse().unwrap(),
            "172.16.0.0/12".parse().unwrap(),
            "203.0.113.0/24".parse().unwrap(),
        ])
        .unwrap();
    assert_eq!(dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, live), port);
    let new = frame_ports(CONTAINER, EXTERNAL, 64, L4::Udp, live.0 + 1, live.1);
    assert_eq!(dp.run(Hook::BridgeIngress, &new), (TC_ACT_OK, new.clone()));
    assert!(dp
        .translation(CONTAINER, EXTERNAL, IPPROTO_UDP, (live.0 + 1, live.1))
        .is_none());
}

#[test]
fn excluded_destinations_and_nat_off_pass_unchanged() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    // Inside the cluster CIDR (not a peer), a --no-masquerade range, the host itself.
    for dst in [NOT_A_PEER, EXCLUDED, UPLINK_ADDR] {
        let packet = frame(CONTAINER, dst, 64, L4::Tcp);
        assert_eq!(
            dp.run(Hook::BridgeIngress, &packet),
            (TC_ACT_OK, packet.clone()),
            "{dst:?}"
        );
    }
    // Peers are still forwarded, untranslated.
    let packet = frame(CONTAINER, PEER_CONTAINER, 64, L4::Tcp);
    assert_eq!(
        dp.run(Hook::BridgeIngress, &packet),
        (
            TC_ACT_REDIRECT,
            frame(CONTAINER, PEER_CONTAINER, 63, L4::Tcp)
        )
    );
    // ICMP other than echo requests is not translated.
    let mut unreachable = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(CONTAINER, EXTERNAL, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            icmpv4::DestUnreachableHeader::Port,
        ))
        .write(
            &mut unreachable,
            &frame(EXTERNAL, CONTAINER, 64, L4::Udp)[14..],
        )
        .unwrap();
    assert_eq!(dp.run(Hook::BridgeIngress, &unreachable).0, TC_ACT_OK);
    assert!(dp.maps.nat_flows().unwrap().is_empty());

    let mut off = datapath(config());
    let packet = frame(CONTAINER, EXTERNAL, 64, L4::Udp);
    assert_eq!(
        off.run(Hook::BridgeIngress, &packet),
        (TC_ACT_OK, packet.clone())
    );
}

#[test]
fn fragments_to_external_destinations_are_dropped_and_counted() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    let packet = more_fragments(frame(CONTAINER, EXTERNAL, 64, L4::Udp));
    assert_eq!(dp.run(Hook::BridgeIngress, &packet).0, TC_ACT_SHOT);
    dp.assert_only(Counter::DropNatFragment, 1);
}

#[test]
fn udp_without_checksum_keeps_a_zero_checksum() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    let zero_csum = |mut f: Vec<u8>| {
        f[14 + 20 + 6] = 0;
        f[14 + 20 + 7] = 0;
        f
    };
    let packet = zero_csum(frame(CONTAINER, EXTERNAL, 64, L4::Udp));
    let (verdict, out) = dp.run(Hook::BridgeIngress, &packet);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let port = u16::from_be(
        dp.translation(CONTAINER, EXTERNAL, IPPROTO_UDP, (SRC_PORT, 53))
            .unwrap()
            .nat_port,
    );
    assert_eq!(
        out,
        zero_csum(frame_ports(UPLINK_ADDR, EXTERNAL, 63, L4::Udp, port, 53))
    );
    let (verdict, out) = dp.run(
        Hook::UplinkIngress,
        &zero_csum(reply(EXTERNAL, UPLINK_ADDR, L4::Udp, port, 53, 50)),
    );
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        out,
        zero_csum(reply(EXTERNAL, CONTAINER, L4::Udp, SRC_PORT, 53, 49))
    );
}

#[test]
fn same_source_port_from_two_containers_gets_two_ports() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    let a = dp.translate_out(CONTAINER, EXTERNAL, L4::Tcp, (SRC_PORT, 80));
    let b = dp.translate_out(OTHER_CONTAINER, EXTERNAL, L4::Tcp, (SRC_PORT, 80));
    assert_ne!(a, b);
    // Each reply reaches its own container.
    let (_, out) = dp.run(
        Hook::UplinkIngress,
        &reply(EXTERNAL, UPLINK_ADDR, L4::Tcp, b, 80, 50),
    );
    assert_eq!(
        out,
        reply(EXTERNAL, OTHER_CONTAINER, L4::Tcp, SRC_PORT, 80, 49)
    );
    let (_, out) = dp.run(
        Hook::UplinkIngress,
        &reply(EXTERNAL, UPLINK_ADDR, L4::Tcp, a, 80, 50),
    );
    assert_eq!(out, reply(EXTERNAL, CONTAINER, L4::Tcp, SRC_PORT, 80, 49));
}

#[test]
fn exhausted_ports_drop_new_flows_and_never_reuse_a_live_one() {
    let cfg = DatapathConfig {
        nat_port_min: 61000,
        nat_port_max: 61003,
        ..nat_config()
    };
    let mut dp = nat_datapath(cfg, DEFAULT_TABLE_SIZE);
    let mut ports: Vec<u16> = (0..4)
        .map(|i| dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, (1000 + i, 53)))
        .collect();
    ports.sort();
    assert_eq!(ports, [61000, 61001, 61002, 61003]);
    let fifth = frame_ports(CONTAINER, EXTERNAL, 64, L4::Udp, 1004, 53);
    assert_eq!(dp.run(Hook::BridgeIngress, &fifth).0, TC_ACT_SHOT);
    assert_eq!(dp.counter(Counter::DropNatPortsExhausted).packets, 1);
    // The same ports are free toward another destination.
    dp.translate_out(CONTAINER, [203, 0, 113, 8], L4::Udp, (1004, 53));
    // Live flows keep working.
    dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, (1002, 53));
}

#[test]
fn a_full_table_refuses_new_flows_and_keeps_every_live_one() {
    // 64 entries per map: 256 flows cannot all have one.
    let mut dp = nat_datapath(nat_config(), 64);
    let remote = |i: u16| [203, 0, 113, 100 + (i % 100) as u8];
    let mut refused = 0;
    for i in 0..256u16 {
        let packet = frame_ports(CONTAINER, remote(i), 64, L4::Udp, 2000 + i, 53);
        match dp.run(Hook::BridgeIngress, &packet).0 {
            TC_ACT_REDIRECT => {}
            verdict => {
                assert_eq!(verdict, TC_ACT_SHOT);
                refused += 1;
            }
        }
    }
    assert!(refused >= 256 - 64);
    assert_eq!(dp.counter(Counter::DropNatTableFull).packets, refused);
    // The reverse half of a live translation is never evicted, so every
    // translation in the table still answers to its own container.
    let flows = dp.maps.nat_flows().unwrap();
    assert!(!flows.is_empty());
    for (key, flow) in &flows {
        let (port, remote_addr) = (u16::from_be(key.src_port), key.dst_addr.to_ne_bytes());
        let (verdict, out) = dp.run(
            Hook::UplinkIngress,
            &reply(
                remote_addr,
                UPLINK_ADDR,
                L4::Udp,
                u16::from_be(flow.nat_port),
                53,
                50,
            ),
        );
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out, reply(remote_addr, CONTAINER, L4::Udp, port, 53, 49));
    }
    // Once the translations expire and `nat gc` runs, new flows get one.
    dp.age_translations();
    Sweeper::open(&dp.dir)
        .unwrap()
        .gc(&dp.maps, &Timeouts::default())
        .unwrap();
    let reverse: HashMap<MapData, ReverseKey, Reverse> = dp.raw_map(map_names::NAT_REVERSE);
    assert_eq!(reverse.iter().count(), 0);
    dp.translate_out(CONTAINER, remote(0), L4::Udp, (2000, 53));
}

/// A container reusing its address and port toward the same server after
/// its flow expired (a client opening connections at a high rate) leaves
/// from its old port again: the expired translation is reopened on it, its
/// reverse half kept. A port another flow reclaimed meanwhile, or one the
/// range no longer holds, is not taken back.
#[test]
fn a_reused_flow_reopens_its_expired_translation_on_its_port() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    let ports: Vec<u16> = ALL_L4
        .iter()
        .map(|&l4| dp.translate_out(CONTAINER, EXTERNAL, l4, default_ports(l4)))
        .collect();
    dp.age_translations();
    for (&l4, &port) in ALL_L4.iter().zip(&ports) {
        // Out of 22,768 ports, not by chance.
        assert_eq!(
            dp.translate_out(CONTAINER, EXTERNAL, l4, default_ports(l4)),
            port,
            "{l4:?}"
        );
        let flow = dp
            .translation(CONTAINER, EXTERNAL, l4.proto(), default_ports(l4))
            .unwrap();
        assert!(
            flow.created_ns > 1 && flow.last_seen_ns == flow.created_ns,
            "{flow:?}"
        );
    }
    assert_eq!(dp.counter(Counter::NatExpired).packets, 3);
    assert_eq!(dp.counter(Counter::NatCreated).packets, 6);
    // One reverse half per flow, each naming the container, and replies
    // reach it.
    let reverse: HashMap<MapData, ReverseKey, Reverse> = dp.raw_map(map_names::NAT_REVERSE);
    let halves: Vec<_> = reverse.iter().map(Result::unwrap).collect();
    assert_eq!(halves.len(), 3);
    for (rkey, half) in &halves {
        assert!(ports.contains(&u16::from_be(rkey.nat_port)), "{rkey:?}");
        assert_eq!(half.origin.addr, to_map_addr(CONTAINER.into()));
    }
    let (udp_port, (src, dst)) = (ports[1], default_ports(L4::Udp));
    assert_eq!(
        dp.run(
            Hook::UplinkIngress,
            &reply(EXTERNAL, UPLINK_ADDR, L4::Udp, udp_port, dst, 50)
        ),
        (
            TC_ACT_REDIRECT,
            reply(EXTERNAL, CONTAINER, L4::Udp, src, dst, 49)
        )
    );

    // Its only port reclaimed by another container's flow: not taken back.
    let cfg = DatapathConfig {
        nat_port_min: 61000,
        nat_port_max: 61000,
        ..nat_config()
    };
    let mut dp = nat_datapath(cfg, DEFAULT_TABLE_SIZE);
    dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, (src, dst));
    dp.age_translations();
    assert_eq!(
        dp.translate_out(OTHER_CONTAINER, EXTERNAL, L4::Udp, (src, dst)),
        61000
    );
    let again = frame_ports(CONTAINER, EXTERNAL, 64, L4::Udp, src, dst);
    assert_eq!(dp.run(Hook::BridgeIngress, &again).0, TC_ACT_SHOT);
    assert_eq!(dp.counter(Counter::DropNatPortsExhausted).packets, 1);

    // The range moved on (`up --nat-ports`): a port of the new one.
    dp.age_translations();
    let moved = DatapathConfig {
        nat_port_min: 62000,
        nat_port_max: 62000,
        ..dp.maps.config().unwrap()
    };
    dp.maps.set_config(&moved).unwrap();
    assert_eq!(
        dp.translate_out(OTHER_CONTAINER, EXTERNAL, L4::Udp, (src, dst)),
        62000
    );
    // Reclaimed by the other flow once, its own removed once.
    assert_eq!(dp.counter(Counter::NatExpired).packets, 2);
    let reverse: HashMap<MapData, ReverseKey, Reverse> = dp.raw_map(map_names::NAT_REVERSE);
    assert_eq!(reverse.iter().count(), 1, "the old port released");
}
