//! Published ports dr translates itself, across uplink ingress and docker0
//! ingress (and the container's port): a request to the uplink's address
//! and a port in `PUBLISHED_PORTS` is translated to the container and
//! delivered, its answers leave with the uplink's address and the published
//! port, and ICMP errors about the answers reach the container. Any other
//! port stays the kernel's (Docker's DNAT).
//!
//! ```text
//!  EXTERNAL 203.0.113.7:40000 ──> UPLINK_ADDR:8080 [dr_uplink_ingress] ──TC_ACT_REDIRECT──> CONTAINER 10.0.128.2:80
//!                                  PUBLISHED_PORTS {8080, proto}          │ dst CONTAINER:80, TTL - 1, checksums
//!                                  records INBOUND_FLOWS (port 8080)      └─TC_ACT_OK──> the host (port not published)
//!            (or [dr_uplink_xdp] ──XDP_REDIRECT──> the learned container's veth)
//!  EXTERNAL <──TC_ACT_REDIRECT (uplink)── src UPLINK_ADDR:8080, TTL - 1 ── [dr_bridge_ingress | port] <── answer from :80
//!  ROUTER ── ICMP error quoting UPLINK_ADDR:8080 -> EXTERNAL ──> [dr_uplink_ingress] ──> CONTAINER, quote translated
//!  maps: DATAPATH_CONFIG (SNAT on or off), PUBLISHED_PORTS, INBOUND_FLOWS, NAT_FLOWS (stays empty)
//! ```
use dr_common::{
    map_names,
    nat::{Origin, PublishedKey},
};
use etherparse::{icmpv4, Icmpv4Type};

use super::*;

const HOST_PORT: u16 = 8080;
const CONTAINER_PORT: u16 = 80;
const PUBLISHED: [L4; 2] = [L4::Udp, L4::Tcp];

/// What `dr-ctl sync` writes for `docker run -p 8080:80[/udp]`.
fn publish(dp: &Datapath, l4: L4, host_port: u16, to: [u8; 4], port: u16) {
    let mut map = dp.raw_map::<PublishedKey, Origin>(map_names::PUBLISHED_PORTS);
    let key = PublishedKey {
        port: host_port.to_be(),
        proto: l4.proto(),
        _pad: 0,
    };
    let target = Origin {
        addr: to_map_addr(to.into()),
        port: port.to_be(),
        _pad: 0,
    };
    map.insert(key, target, 0).unwrap();
}

fn published_datapath(config: DatapathConfig) -> Datapath {
    let dp = datapath(config);
    for l4 in PUBLISHED {
        publish(&dp, l4, HOST_PORT, CONTAINER, CONTAINER_PORT);
    }
    dp
}

/// The container's answer from its service port: a SYN-ACK or a datagram.
fn answer(l4: L4, from: [u8; 4], port: u16, ttl: u8) -> Vec<u8> {
    match l4 {
        L4::Tcp => syn_ack(from, EXTERNAL, (port, SRC_PORT), ttl),
        _ => frame_ports(from, EXTERNAL, ttl, l4, port, SRC_PORT),
    }
}

#[test]
fn requests_are_translated_to_the_container_and_answers_back_with_snat_on_or_off() {
    for config in [nat_config(), config()] {
        let mut dp = published_datapath(config);
        for l4 in PUBLISHED {
            let request = frame_ports(EXTERNAL, UPLINK_ADDR, 64, l4, SRC_PORT, HOST_PORT);
            let (verdict, out) = dp.run(Hook::UplinkIngress, &request);
            assert_eq!(verdict, TC_ACT_REDIRECT, "{l4:?} request");
            let delivered = frame_ports(EXTERNAL, CONTAINER, 63, l4, SRC_PORT, CONTAINER_PORT);
            assert_eq!(out, delivered, "{l4:?} request");

            let (verdict, out) = dp.run(Hook::BridgeIngress, &answer(l4, CONTAINER, 80, 64));
            assert_eq!(verdict, TC_ACT_REDIRECT, "{l4:?} answer");
            assert_eq!(out, answer(l4, UPLINK_ADDR, HOST_PORT, 63), "{l4:?} answer");
            // The container's port runs the same logic.
            let (verdict, out) = dp.run_port(&answer(l4, CONTAINER, 80, 64));
            assert_eq!(verdict, TC_ACT_REDIRECT, "{l4:?} answer at the port");
            assert_eq!(out, answer(l4, UPLINK_ADDR, HOST_PORT, 63));
        }
        assert_eq!(dp.counter(Counter::PublishedIn).packets, 2);
        assert_eq!(dp.counter(Counter::PublishedOut).packets, 4);
        assert_eq!(dp.counter(Counter::NatCreated).packets, 0);
        assert_eq!(dp.counter(Counter::InboundReply).packets, 0);
        assert!(
            dp.maps.nat_flows().unwrap().is_empty(),
            "no SNAT translation"
        );
    }
}

/// A request for a container dr has learned goes straight into its veth.
#[test]
fn requests_to_a_learned_container_go_straight_into_its_veth() {
    let mut dp = published_datapath(nat_config());
    add_endpoint(&mut dp, CONTAINER);
    for l4 in PUBLISHED {
        let request = frame_ports(EXTERNAL, UPLINK_ADDR, 64, l4, SRC_PORT, HOST_PORT);
        let (verdict, out) = dp.run(Hook::UplinkIngress, &request);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let delivered = frame_ports(EXTERNAL, CONTAINER, 63, l4, SRC_PORT, CONTAINER_PORT);
        assert_eq!(out, from_docker0(delivered), "{l4:?}");
    }
    assert_eq!(dp.counter(Counter::PublishedIn).packets, 2);
}

/// XDP's fast path translates requests for a learned container the same
/// way, and their answers then go back through the container's port.
#[test]
fn xdp_translates_requests_to_a_learned_container_with_snat_on_or_off() {
    for config in [nat_config(), config()] {
        let mut dp = published_datapath(config);
        add_endpoint(&mut dp, CONTAINER);
        for l4 in PUBLISHED {
            let request = frame_ports(EXTERNAL, UPLINK_ADDR, 64, l4, SRC_PORT, HOST_PORT);
            let (verdict, out) = dp.run_xdp(&request);
            assert_eq!(verdict, XDP_REDIRECT, "{l4:?}");
            // The same bytes TC would produce, with the MACs of a frame from docker0.
            let delivered = frame_ports(EXTERNAL, CONTAINER, 63, l4, SRC_PORT, CONTAINER_PORT);
            assert_eq!(out, from_docker0(delivered), "{l4:?}");
            let (verdict, out) = dp.run_port(&answer(l4, CONTAINER, 80, 64));
            assert_eq!(verdict, TC_ACT_REDIRECT, "{l4:?} answer");
            assert_eq!(out, answer(l4, UPLINK_ADDR, HOST_PORT, 63));
        }
        assert_eq!(dp.counter(Counter::PublishedIn).packets, 2);
        assert_eq!(dp.counter(Counter::PublishedOut).packets, 2);
        // Another port, or a container XDP does not know, is TC's.
        let other = frame_ports(EXTERNAL, UPLINK_ADDR, 64, L4::Udp, SRC_PORT, 8081);
        assert_eq!(dp.run_xdp(&other), (XDP_PASS, other.clone()));
        publish(&dp, L4::Udp, 8082, OTHER_CONTAINER, CONTAINER_PORT);
        let unknown = frame_ports(EXTERNAL, UPLINK_ADDR, 64, L4::Udp, SRC_PORT, 8082);
        assert_eq!(dp.run_xdp(&unknown), (XDP_PASS, unknown.clone()));
    }
}

#[test]
fn ports_not_published_and_fragments_stay_the_kernels() {
    let mut dp = published_datapath(nat_config());
    for packet in [
        frame_ports(EXTERNAL, UPLINK_ADDR, 64, L4::Tcp, SRC_PORT, 8081), // other port
        frame_ports(EXTERNAL, UPLINK_ADDR, 64, L4::Icmp, SRC_PORT, HOST_PORT), // echo
        frame_ports(EXTERNAL, CONTAINER, 64, L4::Udp, SRC_PORT, HOST_PORT), // not the uplink's
    ] {
        assert_eq!(
            dp.run(Hook::UplinkIngress, &packet),
            (TC_ACT_OK, packet.clone())
        );
    }
    assert_eq!(dp.counter(Counter::Passed).packets, 3);
    let fragment = more_fragments(frame_ports(
        EXTERNAL,
        UPLINK_ADDR,
        64,
        L4::Udp,
        SRC_PORT,
        HOST_PORT,
    ));
    assert_eq!(
        dp.run(Hook::UplinkIngress, &fragment),
        (TC_ACT_OK, fragment.clone()),
        "the kernel reassembles and DNATs fragments"
    );
    assert_eq!(dp.counter(Counter::PublishedIn).packets, 0);
}

#[test]
fn a_port_published_to_no_local_container_is_not_used() {
    let mut dp = datapath(nat_config());
    for to in [EXTERNAL, GATEWAY, BROADCAST] {
        publish(&dp, L4::Udp, HOST_PORT, to, CONTAINER_PORT);
        let request = frame_ports(EXTERNAL, UPLINK_ADDR, 64, L4::Udp, SRC_PORT, HOST_PORT);
        assert_eq!(
            dp.run(Hook::UplinkIngress, &request),
            (TC_ACT_OK, request.clone()),
            "{to:?}"
        );
    }
    assert_eq!(dp.counter(Counter::PublishedIn).packets, 0);
}

#[test]
fn answers_without_a_request_dr_translated_are_not_translated_back() {
    let mut dp = published_datapath(nat_config());
    // The kernel's DNAT delivered this one (no request through dr).
    let syn_ack_80 = answer(L4::Tcp, CONTAINER, CONTAINER_PORT, 64);
    assert_eq!(
        dp.run(Hook::BridgeIngress, &syn_ack_80),
        (TC_ACT_OK, syn_ack_80.clone())
    );
    dp.assert_only(Counter::InboundReply, 1);
    // A request to another client does not answer for this one.
    let request = frame_ports(EXTERNAL, UPLINK_ADDR, 64, L4::Udp, SRC_PORT, HOST_PORT);
    dp.run(Hook::UplinkIngress, &request);
    let port = dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, (CONTAINER_PORT, SRC_PORT + 1));
    assert!((10000..=32767).contains(&port), "a new SNAT translation");
    assert_eq!(dp.counter(Counter::PublishedOut).packets, 0);
}

#[test]
fn icmp_errors_about_a_published_ports_answers_reach_the_container() {
    let mut dp = published_datapath(nat_config());
    let kinds = [
        Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: 1280,
        }),
        Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port),
    ];
    for l4 in PUBLISHED {
        let request = frame_ports(EXTERNAL, UPLINK_ADDR, 64, l4, SRC_PORT, HOST_PORT);
        dp.run(Hook::UplinkIngress, &request);
        let (_, translated) = dp.run(Hook::BridgeIngress, &answer(l4, CONTAINER, 80, 64));
        // The answer as the router saw it, and as the container sent it.
        let original = answer(l4, CONTAINER, CONTAINER_PORT, 63);
        for kind in &kinds {
            let error = icmp_error(UPLINK_ADDR, kind.clone(), &translated[14..], 60);
            let (verdict, out) = dp.run(Hook::UplinkIngress, &error);
            assert_eq!(verdict, TC_ACT_REDIRECT, "{l4:?} {kind:?}");
            assert_eq!(
                out,
                icmp_error(CONTAINER, kind.clone(), &original[14..], 59)
            );
        }
    }
    // Requests and errors.
    assert_eq!(dp.counter(Counter::PublishedIn).packets, 2 + 2 * 2);
    // An error quoting the published port toward a client that sent nothing.
    let (_, translated) = dp.run(Hook::BridgeIngress, &answer(L4::Udp, CONTAINER, 80, 64));
    let mut stranger = translated[14..].to_vec();
    stranger[16..20].copy_from_slice(&[203, 0, 113, 99]);
    let error = icmp_error(UPLINK_ADDR, kinds[0].clone(), &stranger, 60);
    assert_eq!(
        dp.run(Hook::UplinkIngress, &error),
        (TC_ACT_OK, error.clone())
    );
}
