//! SNAT: translations out and back, ICMP errors with their quoted packets,
//! exclusions, port collisions and exhaustion, expiry, a full table.
use aya::maps::{HashMap, Map, MapData};
use dr_common::{
    map_names,
    nat::{Flow, FlowKey, Origin, ReverseKey, IPPROTO_UDP},
};
use etherparse::{icmpv4, IcmpEchoHeader, Icmpv4Type};

use dr_ctl::datapath::Sweeper;

use super::*;

const ROUTER: [u8; 4] = [192, 168, 91, 254];
const NOT_A_PEER: [u8; 4] = [10, 0, 200, 5];
const EXCLUDED: [u8; 4] = [172, 16, 3, 4];

pub(super) fn nat_config() -> DatapathConfig {
    DatapathConfig {
        nat_enabled: 1,
        ..config()
    }
}

/// A datapath with SNAT on, the cluster 10.0.0.0/16 and 172.16.0.0/12 excluded.
pub(super) fn nat_datapath(config: DatapathConfig, table_size: u32) -> Datapath {
    let mut dp = datapath_sized(config, table_size);
    dp.maps
        .set_exclusions(&[
            "10.0.0.0/16".parse().unwrap(),
            "172.16.0.0/12".parse().unwrap(),
        ])
        .unwrap();
    dp
}

impl Datapath {
    /// The translation of the container flow `frame` would start.
    pub(super) fn translation(
        &self,
        src: [u8; 4],
        dst: [u8; 4],
        proto: u8,
        ports: (u16, u16),
    ) -> Option<Flow> {
        self.maps
            .nat_flows()
            .unwrap()
            .into_iter()
            .find(|(k, _)| {
                k.src_addr == to_map_addr(src.into())
                    && k.dst_addr == to_map_addr(dst.into())
                    && k.proto == proto
                    && u16::from_be(k.src_port) == ports.0
                    && u16::from_be(k.dst_port) == ports.1
            })
            .map(|(_, f)| f)
    }

    pub(super) fn raw_map<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> HashMap<MapData, K, V> {
        let data = MapData::from_pin(self.dir.join(name)).unwrap();
        Map::from_map_data(data).unwrap().try_into().unwrap()
    }

    /// Sends a container packet out; returns the allocated port.
    pub(super) fn translate_out(
        &mut self,
        src: [u8; 4],
        dst: [u8; 4],
        l4: L4,
        ports: (u16, u16),
    ) -> u16 {
        let packet = frame_ports(src, dst, 64, l4, ports.0, ports.1);
        let (verdict, out) = self.run(Hook::BridgeIngress, &packet);
        assert_eq!(verdict, TC_ACT_REDIRECT, "{src:?}:{ports:?} -> {dst:?}");
        let port = u16::from_be(
            self.translation(src, dst, proto(l4), ports)
                .expect("translation recorded")
                .nat_port,
        );
        // Only source address, source port (ICMP: identifier), TTL and checksums change.
        assert_eq!(out, frame_ports(UPLINK_ADDR, dst, 63, l4, port, ports.1));
        port
    }
}

fn proto(l4: L4) -> u8 {
    match l4 {
        L4::Icmp => 1,
        L4::Tcp => 6,
        L4::Udp => 17,
    }
}

/// The remote's answer to the translated flow.
pub(super) fn reply(
    from: [u8; 4],
    to: [u8; 4],
    l4: L4,
    nat_port: u16,
    remote_port: u16,
    ttl: u8,
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 1]);
    let ip = eth.ipv4(from, to, ttl);
    let mut out = Vec::new();
    match l4 {
        L4::Icmp => ip
            .icmpv4(Icmpv4Type::EchoReply(IcmpEchoHeader {
                id: nat_port,
                seq: 7,
            }))
            .write(&mut out, PAYLOAD),
        L4::Udp => ip.udp(remote_port, nat_port).write(&mut out, PAYLOAD),
        L4::Tcp => ip
            .tcp(remote_port, nat_port, 5000, 65535)
            .ack(1001)
            .write(&mut out, PAYLOAD),
    }
    .unwrap();
    out
}

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
    assert_eq!(tcp.state, dr_common::nat::State::TcpEstablished as u8);
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
fn fragments_to_external_destinations_are_dropped_and_counted() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    let mut packet = frame(CONTAINER, EXTERNAL, 64, L4::Udp);
    packet[14 + 6] = 0x20; // more fragments
    packet[14 + 10] = 0;
    packet[14 + 11] = 0;
    let header = etherparse::Ipv4HeaderSlice::from_slice(&packet[14..])
        .unwrap()
        .to_header();
    let csum = header.calc_header_checksum().to_be_bytes();
    packet[14 + 10..14 + 12].copy_from_slice(&csum);
    assert_eq!(dp.run(Hook::BridgeIngress, &packet).0, TC_ACT_SHOT);
    dp.assert_only(Counter::DropNatFragment, 1);
}

#[test]
fn inbound_fragments_of_replies_go_to_the_host_counted() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    let port = dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, (SRC_PORT, 53));
    let mut fragment = reply(EXTERNAL, UPLINK_ADDR, L4::Udp, port, 53, 50);
    fragment[14 + 6] = 0x20; // more fragments
    fragment[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let header = etherparse::Ipv4HeaderSlice::from_slice(&fragment[14..])
        .unwrap()
        .to_header();
    let csum = header.calc_header_checksum().to_be_bytes();
    fragment[14 + 10..14 + 12].copy_from_slice(&csum);
    assert_eq!(
        dp.run(Hook::UplinkIngress, &fragment),
        (TC_ACT_OK, fragment.clone())
    );
    assert_eq!(dp.counter(Counter::NatFragmentIn).packets, 1);
    assert_eq!(dp.counter(Counter::NatIn).packets, 0);
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
fn expired_translations_are_not_used_and_their_ports_are_reclaimed() {
    let cfg = DatapathConfig {
        nat_port_min: 61000,
        nat_port_max: 61000,
        ..nat_config()
    };
    let mut dp = nat_datapath(cfg, DEFAULT_TABLE_SIZE);
    let port = dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, (SRC_PORT, 53));
    assert_eq!(port, 61000);
    // Age the translation past its timeout.
    let mut flows: HashMap<MapData, FlowKey, Flow> = dp.raw_map(map_names::NAT_FLOWS);
    let (key, mut flow) = flows.iter().next().unwrap().unwrap();
    flow.last_seen_ns = 1;
    flows.insert(key, flow, 0).unwrap();
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
    let reverse: HashMap<MapData, ReverseKey, Origin> = dp.raw_map(map_names::NAT_REVERSE);
    assert_eq!(reverse.iter().count(), 1);
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
    let mut table: HashMap<MapData, FlowKey, Flow> = dp.raw_map(map_names::NAT_FLOWS);
    for (key, mut flow) in flows {
        flow.last_seen_ns = 1;
        table.insert(key, flow, 0).unwrap();
    }
    Sweeper::open(&dp.dir)
        .unwrap()
        .gc(&dp.maps, &Timeouts::default())
        .unwrap();
    let reverse: HashMap<MapData, ReverseKey, Origin> = dp.raw_map(map_names::NAT_REVERSE);
    assert_eq!(reverse.iter().count(), 0);
    dp.translate_out(CONTAINER, remote(0), L4::Udp, (2000, 53));
}

/// An ICMP error from the router quoting `quoted` (an IP packet).
pub(super) fn icmp_error(to: [u8; 4], icmp: Icmpv4Type, quoted: &[u8], ttl: u8) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 1])
        .ipv4(ROUTER, to, ttl)
        .icmpv4(icmp)
        .write(&mut out, quoted)
        .unwrap();
    out
}

#[test]
fn icmp_errors_about_translated_packets_are_translated_with_their_quote() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    let kinds = [
        Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit),
        Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: 1280,
        }),
        Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port),
    ];
    for l4 in ALL_L4 {
        // What the container sent, and what left the host after SNAT.
        let sent = frame(CONTAINER, EXTERNAL, 64, l4);
        let (_, translated) = dp.run(Hook::BridgeIngress, &sent);
        // The container's packet as the router saw it: TTL 63, original addresses.
        let original = frame(CONTAINER, EXTERNAL, 63, l4);
        // Whole quotes, and quotes cut after 8 bytes of L4 (the TCP checksum is then absent).
        for quote_len in [translated.len() - 14, 20 + 8] {
            for kind in &kinds {
                let error = icmp_error(
                    UPLINK_ADDR,
                    kind.clone(),
                    &translated[14..14 + quote_len],
                    60,
                );
                let (verdict, out) = dp.run(Hook::UplinkIngress, &error);
                assert_eq!(verdict, TC_ACT_REDIRECT, "{l4:?} {kind:?}");
                let expected =
                    icmp_error(CONTAINER, kind.clone(), &original[14..14 + quote_len], 59);
                assert_eq!(out, expected, "{l4:?} {kind:?} quote {quote_len}");
            }
        }
    }
    assert_eq!(dp.counter(Counter::NatIcmpErrorIn).packets, 3 * 2 * 3);
    // An error about a packet that was never translated goes to the host.
    let stranger = frame(UPLINK_ADDR, [203, 0, 113, 99], 63, L4::Udp);
    let error = icmp_error(UPLINK_ADDR, kinds[0].clone(), &stranger[14..], 60);
    assert_eq!(
        dp.run(Hook::UplinkIngress, &error),
        (TC_ACT_OK, error.clone())
    );
}
