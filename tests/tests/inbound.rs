//! Flows the containers did not start, through the real dr-ctl in emulated
//! hosts, in TC and XDP modes: a published port (Docker's DNAT rule, as
//! dockerd installs it for `docker run -p`) answers clients outside the
//! cluster and on a peer host, translated by dr once `sync` has learned it,
//! or by the kernel when DOCKER-USER filters; the hosts' own processes
//! reach containers on peer hosts with no kernel route for peer subnets.
//!
//! ```text
//!  external 203.0.113.10 ── router ──┬── A 192.168.91.128 (docker0 10.0.128.1, DNAT :8080 -> c0)
//!                                    └── B 192.168.91.129 (docker0 10.0.129.1)
//! ```
use std::net::{IpAddr, SocketAddr};

use dr_tests::{
    cluster::EXTERNAL_ADDR,
    dr_ctl_path,
    netns::Netns,
    require_root,
    traffic::{self, TestServer},
    Cluster,
};
use serde_json::Value;

fn cluster(tag: &str, extra_up: &[&str]) -> Cluster {
    require_root();
    Cluster::with_external(tag, extra_up, &dr_ctl_path()).expect("cluster with dr up")
}

#[test]
fn published_ports_answer_external_clients_and_peer_hosts() {
    published_ports(&cluster("drpub", &[]), Translation::Dr);
}

#[test]
fn published_ports_answer_with_the_xdp_fast_path() {
    published_ports(&cluster("drpubx", &["--xdp"]), Translation::Dr);
}

/// An operator's rule in DOCKER-USER (Docker's place for filtering
/// published ports) keeps every published port with the kernel, whose
/// FORWARD chain applies the rule: dr's translation would bypass it.
#[test]
fn published_ports_filtered_in_docker_user_stay_with_the_kernel() {
    let c = cluster("drpubu", &[]);
    let a = &c.hosts[0];
    let ipt = |args: &[&str]| a.ns.exec("iptables", args).unwrap();
    ipt(&["-N", "DOCKER-USER"]);
    let external = EXTERNAL_ADDR.to_string();
    ipt(&[
        "-A",
        "DOCKER-USER",
        "-s",
        &external,
        "-p",
        "tcp",
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ]);
    ipt(&["-A", "DOCKER-USER", "-j", "RETURN"]);
    ipt(&["-I", "FORWARD", "-j", "DOCKER-USER"]);
    published_ports(&c, Translation::Kernel);
}

/// Who translates the published ports' traffic.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Translation {
    /// dr (`dr-ctl sync` learned Docker's rules).
    Dr,
    /// The kernel: an operator's DOCKER-USER rule (refusing TCP from the
    /// external network) keeps them there.
    Kernel,
}

fn published_ports(c: &Cluster, translation: Translation) {
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
    let refused = |client: &Netns| translation == Translation::Kernel && client.name == ext.name;
    let tcp_clients = clients.iter().filter(|c| !refused(c)).count();

    const DATAGRAMS: u32 = 20;
    let sink = TestServer::tcp_sink(&server.ns, server.addr, tcp_clients).unwrap();
    let echo = TestServer::udp_echo(&server.ns, server.addr, DATAGRAMS * 3).unwrap();
    a.publish("tcp", 8080, sink.addr).unwrap();
    a.publish("udp", 5353, echo.addr).unwrap();
    let sync: Value = serde_json::from_str(&a.dr(&["sync", "--json"]).unwrap()).unwrap();
    let offloaded = &sync["published"]["offloaded"];
    match translation {
        Translation::Dr => {
            let want = serde_json::json!([
                {"proto": "tcp", "host_port": 8080, "container": server.addr, "container_port": sink.addr.port()},
                {"proto": "udp", "host_port": 5353, "container": server.addr, "container_port": echo.addr.port()},
            ]);
            assert_eq!(offloaded, &want, "sync: {sync}");
        }
        Translation::Kernel => {
            assert_eq!(offloaded, &serde_json::json!([]), "sync: {sync}");
            let reason = sync["published"]["left_to_kernel"][0]["reason"].to_string();
            assert!(reason.contains("DOCKER-USER"), "sync: {sync}");
        }
    }

    let published = SocketAddr::from((a.uplink_addr, 8080));
    for client in clients {
        let sent = traffic::tcp_send(client, 0, published, 256 << 10);
        match (refused(client), sent) {
            (false, Err(e)) => panic!(
                "TCP {} -> {published}: {e:#}; the server's host: {}",
                client.name,
                a.status()
                    .map_or_else(|e| format!("{e:#}"), |s| s.to_string())
            ),
            (true, Ok(_)) => panic!("TCP {} -> {published} passed DOCKER-USER", client.name),
            _ => {}
        }
    }
    let seen: Vec<IpAddr> = sink.finish().unwrap().iter().map(|s| s.ip()).collect();
    let want: Vec<IpAddr> = seen_as
        .iter()
        .zip(clients)
        .filter(|(_, client)| !refused(client))
        .map(|(addr, _)| *addr)
        .collect();
    assert_eq!(seen, want, "the addresses the TCP server saw");

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

    // Either way no answer got a SNAT translation.
    let nat = a.nat_list().unwrap();
    assert!(nat.is_empty(), "host A translated: {nat:?}");
    let (published_in, published_out, inbound_reply) = (
        a.counter("published_in").unwrap(),
        a.counter("published_out").unwrap(),
        a.counter("inbound_reply").unwrap(),
    );
    let counters = format!(
        "published_in {published_in}, published_out {published_out}, inbound_reply {inbound_reply}"
    );
    match translation {
        // Every request and answer through dr, none through the kernel.
        Translation::Dr => {
            assert!(published_in > 3 * u64::from(DATAGRAMS), "{counters}");
            assert!(published_out > 3 * u64::from(DATAGRAMS), "{counters}");
            assert_eq!(inbound_reply, 0, "{counters}");
        }
        // The answers went back through the kernel's conntrack.
        Translation::Kernel => {
            assert_eq!((published_in, published_out), (0, 0), "{counters}");
            assert!(inbound_reply > 2 * u64::from(DATAGRAMS), "{counters}");
        }
    }
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
