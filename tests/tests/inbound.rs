//! Flows the containers did not start, through the real dr-ctl in emulated
//! hosts, in TC and XDP modes: a published port (Docker's DNAT rule, as
//! dockerd installs it for `docker run -p`) answers clients outside the
//! cluster and on a peer host; the hosts' own processes reach containers on
//! peer hosts with no kernel route for peer subnets.
//!
//! ```text
//!  external 203.0.113.10 ── router ──┬── A 192.168.91.128 (docker0 10.0.128.1, DNAT :8080 -> c0)
//!                                    └── B 192.168.91.129 (docker0 10.0.129.1)
//! ```
use std::net::{IpAddr, SocketAddr};

use dr_tests::{
    cluster::EXTERNAL_ADDR,
    dr_ctl_path, require_root,
    traffic::{self, TestServer},
    Cluster,
};

fn cluster(tag: &str, extra_up: &[&str]) -> Cluster {
    require_root();
    Cluster::with_external(tag, extra_up, &dr_ctl_path()).expect("cluster with dr up")
}

#[test]
fn published_ports_answer_external_clients_and_peer_hosts() {
    published_ports(&cluster("drpub", &[]));
}

#[test]
fn published_ports_answer_with_the_xdp_fast_path() {
    published_ports(&cluster("drpubx", &["--xdp"]));
}

fn published_ports(c: &Cluster) {
    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    let ext = c.external.as_ref().unwrap();
    let server = &a.containers[0];
    // Clients: outside the cluster, a container on the peer host (its own
    // SNAT gives it B's address), and B's own root namespace.
    let clients = [ext, &b.containers[0].ns, &b.ns];
    let seen_as = [
        IpAddr::V4(EXTERNAL_ADDR),
        IpAddr::V4(b.uplink_addr),
        IpAddr::V4(b.uplink_addr),
    ];

    let sink = TestServer::tcp_sink(&server.ns, server.addr, clients.len()).unwrap();
    a.publish("tcp", 8080, sink.addr).unwrap();
    let published = SocketAddr::from((a.uplink_addr, 8080));
    for client in clients {
        traffic::tcp_send(client, 0, published, 256 << 10)
            .unwrap_or_else(|e| panic!("TCP {} -> {published}: {e:#}", client.name));
    }
    let seen: Vec<IpAddr> = sink.finish().unwrap().iter().map(|s| s.ip()).collect();
    assert_eq!(seen, seen_as, "the addresses the TCP server saw");

    const DATAGRAMS: u32 = 20;
    let echo = TestServer::udp_echo(&server.ns, server.addr, DATAGRAMS * 3).unwrap();
    a.publish("udp", 5353, echo.addr).unwrap();
    let published = SocketAddr::from((a.uplink_addr, 5353));
    for client in clients {
        traffic::udp_requests(client, 0, published, DATAGRAMS)
            .unwrap_or_else(|e| panic!("UDP {} -> {published}: {e:#}", client.name));
    }
    let seen: Vec<IpAddr> = echo.finish().unwrap().iter().map(|s| s.ip()).collect();
    assert_eq!(seen.len(), 3, "three UDP clients: {seen:?}");
    for want in seen_as {
        assert!(seen.contains(&want), "UDP server saw {seen:?}");
    }

    // The answers went back through the kernel: none got a translation.
    assert!(a.counter("inbound_reply").unwrap() > 2 * u64::from(DATAGRAMS));
    let nat = a.nat_list().unwrap();
    assert!(nat.is_empty(), "host A translated: {nat:?}");
}

#[test]
fn host_processes_reach_containers_on_peer_hosts() {
    host_traffic(&cluster("drhost", &[]));
}

#[test]
fn host_processes_reach_peer_containers_with_the_xdp_fast_path() {
    host_traffic(&cluster("drhostx", &["--xdp"]));
}

fn host_traffic(c: &Cluster) {
    for (from, to) in [(&c.hosts[0], &c.hosts[1]), (&c.hosts[1], &c.hosts[0])] {
        let target = &to.containers[0];
        let no_route = from
            .ns
            .ip(&["route", "get", &target.addr.to_string()])
            .unwrap();
        assert!(
            !no_route.contains(&to.uplink_addr.to_string()),
            "a kernel route to the peer subnet: {no_route}"
        );
        traffic::ping(&from.ns, target.addr, 3).unwrap();
        let (_, seen) = traffic::tcp_transfer(&from.ns, &target.ns, target.addr, 1 << 20).unwrap();
        assert_eq!(seen.ip(), IpAddr::V4(from.uplink_addr), "TCP source seen");
        let seen = traffic::udp_exchange(&from.ns, &target.ns, target.addr, 20).unwrap();
        assert_eq!(seen.ip(), IpAddr::V4(from.uplink_addr), "UDP source seen");
        assert!(from.counter("host_to_peer").unwrap() > 20);
        // Neither host needed IP forwarding for it.
        let forwarding = from
            .ns
            .exec("sysctl", &["-n", "net.ipv4.ip_forward"])
            .unwrap();
        assert_eq!(forwarding.trim(), "0");
    }
}
