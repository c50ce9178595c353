//! Cross-host forwarding through the real dr-ctl in emulated hosts.
use dr_common::marks;
use dr_tests::{dr_ctl_path, require_root, traffic, Cluster, Host};
use serde_json::Value;

fn cluster(tag: &str) -> Cluster {
    require_root();
    let mut c = Cluster::new(tag, 3, &dr_ctl_path()).expect("cluster");
    c.up_all(2).expect("dr up on all hosts");
    c
}

/// A cluster with the XDP fast path on every host, on a segment that behaves
/// like a wire, with the hosts' container endpoints learned.
fn xdp_cluster(tag: &str) -> Cluster {
    require_root();
    let mut c = Cluster::new(tag, 3, &dr_ctl_path()).expect("cluster");
    c.emulate_wire().unwrap();
    c.up_all_with(2, &["--xdp"])
        .expect("dr up --xdp on all hosts");
    c.sync_endpoints().unwrap();
    c
}

#[test]
fn ping_tcp_udp_across_three_hosts_without_routes_or_forwarding() {
    cross_host_traffic(&cluster("drfwd"));
}

#[test]
fn ping_tcp_udp_across_three_hosts_with_the_xdp_fast_path() {
    let c = xdp_cluster("drfwdx");
    cross_host_traffic(&c);
    // Hosts 0 and 1 each received an 8 MiB TCP transfer (thousands of
    // MSS-sized frames on this wire-like segment); host 2 at least the
    // pings and their replies (its TCP ACKs vary with the receiver's GRO).
    for (host, at_least) in c.hosts.iter().zip([1000, 1000, 8]) {
        let s = host.status().unwrap();
        assert!(
            ["native", "generic"].contains(&s["xdp"].as_str().unwrap()),
            "{s}"
        );
        assert_eq!(s["endpoints"], 2);
        let redirected = s["counters"]["xdp_redirect"]["packets"].as_u64().unwrap();
        assert!(redirected >= at_least, "{}", s["counters"]);
    }
}

/// Docker leaves GRO off on a container's eth0, and native XDP cannot
/// redirect into a veth whose other end has neither GRO nor an XDP program
/// (the kernel drops the frame). `sync` turns GRO on for every container it
/// learns and says how many XDP delivers to; the next `sync` finds it on.
#[test]
fn sync_turns_gro_on_in_containers_so_native_xdp_can_deliver() {
    let c = xdp_cluster("drxgro");
    for host in &c.hosts {
        let s = host.status().unwrap();
        assert_eq!(s["xdp"], "native", "this test needs native XDP on veth");
        for container in &host.containers {
            let features = container.ns.exec("ethtool", &["-k", "eth0"]).unwrap();
            assert!(
                features.contains("generic-receive-offload: on"),
                "{features}"
            );
        }
        let sync: Value = serde_json::from_str(&host.dr(&["sync", "--json"]).unwrap()).unwrap();
        assert_eq!(sync["xdp_endpoints"], 2, "{sync}");
        assert_eq!(sync["endpoints"], 2, "{sync}");
    }
}

/// A restarted container gets a new docker0 port; until `sync` learns it,
/// XDP must leave its traffic to TC instead of sending it to the old,
/// deleted port (the kernel drops its `ENDPOINT_PORTS` entry with it).
#[test]
fn xdp_leaves_a_restarted_containers_traffic_to_tc_until_sync() {
    let c = xdp_cluster("drxrst");
    let (from, host) = (&c.hosts[0].containers[0], &c.hosts[1]);
    let to = host.containers[0].addr;
    traffic::ping(&from.ns, to, 3).unwrap();
    let before = host.status().unwrap()["counters"]["xdp_pass"]["packets"]
        .as_u64()
        .unwrap();
    host.restart_container_link(0).unwrap();
    assert_eq!(host.status().unwrap()["endpoints"], 2, "not synced yet");
    traffic::ping(&from.ns, to, 5).unwrap();
    let after = host.status().unwrap()["counters"]["xdp_pass"]["packets"]
        .as_u64()
        .unwrap();
    assert!(
        after >= before + 5,
        "XDP passed {} packets to TC",
        after - before
    );
    // `sync` learns the new port: the fast path takes over again.
    host.dr(&["sync"]).unwrap();
    let redirected = || {
        host.status().unwrap()["counters"]["xdp_redirect"]["packets"]
            .as_u64()
            .unwrap()
    };
    let before = redirected();
    traffic::ping(&from.ns, to, 3).unwrap();
    assert!(redirected() >= before + 3);
}

/// Once the hosts have learned their containers (`sync`: neighbour table
/// and bridge FDB), traffic between two of them skips both bridges: the
/// sender's port program sends it to the uplink before docker0 sees it, and
/// the receiving host puts it straight into the container's veth. The bytes
/// arrive, and docker0 receives and transmits (almost) none of the frames on
/// either host. A container restarted on a new port is reached through
/// docker0 again until the next `sync` learns it and hooks the new port.
#[test]
fn peer_traffic_between_learned_containers_skips_docker0() {
    let c = cluster("drdirect");
    let (from_host, to_host) = (&c.hosts[0], &c.hosts[1]);
    let (from, to) = (&from_host.containers[0], &to_host.containers[0]);
    // The hosts meet the containers (through docker0) and learn them.
    traffic::ping(&from.ns, to.addr, 2).unwrap();
    for host in [from_host, to_host] {
        let sync: Value = serde_json::from_str(&host.dr(&["sync", "--json"]).unwrap()).unwrap();
        assert!(sync["endpoints"].as_u64().unwrap() >= 1, "{sync}");
        assert_eq!(sync["port_hooks"], sync["endpoints"], "{sync}");
        let status = host.status().unwrap();
        assert_eq!(
            status["port_hooks"]["hooked"], sync["port_hooks"],
            "{status}"
        );
    }

    let docker0 = |host: &Host| {
        let ns = &host.ns;
        ns.link_packets("docker0", "rx").unwrap() + ns.link_packets("docker0", "tx").unwrap()
    };
    let before = [docker0(from_host), docker0(to_host)];
    let eth0 = to.ns.link_packets("eth0", "rx").unwrap();
    let (_, seen) = traffic::tcp_transfer(&from.ns, &to.ns, to.addr, 8 << 20).unwrap();
    assert_eq!(seen.ip(), from.addr);
    let received = to.ns.link_packets("eth0", "rx").unwrap() - eth0;
    // At least 128 frames even as 64 KiB GSO frames; the hosts' own ARP may
    // pass docker0 meanwhile.
    assert!(received >= 128, "the container received {received} frames");
    for (host, before) in [from_host, to_host].into_iter().zip(before) {
        let via_docker0 = docker0(host) - before;
        assert!(
            via_docker0 <= 5,
            "host {}: docker0 carried {via_docker0} frames of a transfer of {received}",
            host.id
        );
    }

    // What the port program leaves to the bridge (pings to the host's own
    // address) is counted once, at the port, and dr's mark on it is gone
    // before the host's stack sees it.
    let ns = &from_host.ns;
    let passed_by_port = format!("{:#x}/{0:#x}", marks::PASSED_BY_PORT);
    ns.exec(
        "iptables",
        &["-I", "INPUT", "-m", "mark", "--mark", &passed_by_port],
    )
    .unwrap();
    let passed = from_host.counter("passed").unwrap();
    traffic::ping(&from.ns, from_host.gateway(), 20).unwrap();
    // The container's ARP and IPv6 chatter may come along (7 frames seen
    // once); counted twice, the pings alone would be 40.
    let counted = from_host.counter("passed").unwrap() - passed;
    assert!(
        (20..40).contains(&counted),
        "20 pings counted {counted} times"
    );
    let listing = ns
        .exec("iptables", &["-L", "INPUT", "-v", "-n", "-x"])
        .unwrap();
    // pkts bytes target prot opt in out source destination [mark match]
    let marked: u64 = listing
        .lines()
        .nth(2)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(marked, 0, "the host's stack saw dr's mark:\n{listing}");

    to_host.restart_container_link(0).unwrap();
    let tx = || to_host.ns.link_packets("docker0", "tx").unwrap();
    let before = tx();
    traffic::ping(&from.ns, to.addr, 3).unwrap();
    assert!(tx() >= before + 3);
    let sync: Value = serde_json::from_str(&to_host.dr(&["sync", "--json"]).unwrap()).unwrap();
    assert_eq!(sync["port_hooks"], sync["endpoints"], "{sync}");
}

fn cross_host_traffic(c: &Cluster) {
    for host in &c.hosts {
        let routes = host.ns.ip(&["route", "show"]).unwrap();
        for peer in c.hosts.iter().filter(|p| p.id != host.id) {
            assert!(
                !routes.contains(&peer.subnet()),
                "kernel route for a peer subnet:\n{routes}"
            );
        }
        let forwarding = host
            .ns
            .exec("sysctl", &["-n", "net.ipv4.ip_forward"])
            .unwrap();
        assert_eq!(forwarding.trim(), "0", "dr must not need ip_forward");
    }
    for a in &c.hosts {
        for b in c.hosts.iter().filter(|b| b.id != a.id) {
            traffic::ping(&a.containers[0].ns, b.containers[1].addr, 2).unwrap();
        }
    }
    let (h0, h1, h2) = (&c.hosts[0], &c.hosts[1], &c.hosts[2]);
    let (_, seen) = traffic::tcp_transfer(
        &h0.containers[0].ns,
        &h1.containers[0].ns,
        h1.containers[0].addr,
        8 << 20,
    )
    .unwrap();
    // Cross-host traffic keeps container addresses (SNAT is on for external only).
    assert_eq!(seen.ip(), h0.containers[0].addr);
    traffic::tcp_transfer(
        &h2.containers[1].ns,
        &h0.containers[1].ns,
        h0.containers[1].addr,
        8 << 20,
    )
    .unwrap();
    let seen = traffic::udp_exchange(
        &h1.containers[1].ns,
        &h2.containers[0].ns,
        h2.containers[0].addr,
        20,
    )
    .unwrap();
    assert_eq!(
        seen.ip(),
        h1.containers[1].addr,
        "container addresses are kept end to end"
    );

    // The datapath, not the kernel, moved the traffic: counters show it.
    let s = h0.status().unwrap();
    // (Packets are GSO aggregates on veth: count bytes.)
    assert!(s["counters"]["to_peer"]["bytes"].as_u64().unwrap() > 8 << 20);
    assert!(s["counters"]["from_peer"]["bytes"].as_u64().unwrap() > 8 << 20);
    assert_eq!(s["counters"]["drop_spoofed_source"]["packets"], 0);
    let peers = s["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2);
    let to_h1 = peers.iter().find(|p| p["subnet"] == h1.subnet()).unwrap();
    assert!(to_h1["to_peer"]["bytes"].as_u64().unwrap() > 8 << 20);
    for hook in s["hooks"].as_array().unwrap() {
        assert_eq!(hook["attached"], true, "{hook}");
    }
}

#[test]
fn peer_del_stops_traffic_and_peer_add_resumes_it() {
    let c = cluster("drpeer");
    let (h0, h1) = (&c.hosts[0], &c.hosts[1]);
    let (from, to) = (&h0.containers[0].ns, h1.containers[0].addr);
    traffic::ping(from, to, 1).unwrap();
    h0.dr(&["peer", "del", &h1.subnet()]).unwrap();
    assert!(
        !traffic::reachable(from, to).unwrap(),
        "traffic still flows after peer del"
    );
    // The third host is unaffected.
    traffic::ping(from, c.hosts[2].containers[0].addr, 1).unwrap();
    h0.dr(&[
        "peer",
        "add",
        &h1.subnet(),
        "via",
        &h1.uplink_addr.to_string(),
    ])
    .unwrap();
    traffic::ping(from, to, 2).unwrap();
}

#[test]
fn spoofed_container_source_is_dropped_and_counted() {
    let c = cluster("drspoof");
    let (h0, h1) = (&c.hosts[0], &c.hosts[1]);
    let container = &h0.containers[0];
    // Datapath events on, and someone watching them.
    h0.up_with(&["--datapath-log", "warn"]).unwrap();
    let monitor = std::process::Command::new("ip")
        .args(["netns", "exec", &h0.ns.name])
        .arg(dr_ctl_path())
        .arg("monitor")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // The container claims an address from another host's subnet.
    container
        .ns
        .ip(&["addr", "add", "10.0.130.77/32", "dev", "eth0"])
        .unwrap();
    let out = container
        .ns
        .exec_output(
            "ping",
            &[
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "1",
                "-I",
                "10.0.130.77",
                &h1.containers[0].addr.to_string(),
            ],
        )
        .unwrap();
    assert!(!out.status.success());
    // The drops were reported as events.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = std::process::Command::new("kill")
        .arg(monitor.id().to_string())
        .status();
    let events = String::from_utf8_lossy(&monitor.wait_with_output().unwrap().stderr).into_owned();
    assert!(
        events.contains("dropped a packet from spoofed source 10.0.130.77"),
        "{events}"
    );
    let s = h0.status().unwrap();
    assert!(
        s["counters"]["drop_spoofed_source"]["packets"]
            .as_u64()
            .unwrap()
            >= 3,
        "{s}"
    );
}
