//! SNAT to external networks through the real dr-ctl in emulated hosts: an
//! external namespace behind a router on the hosts' segment, which knows no
//! route to container subnets. No iptables or nftables rule is involved.
use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use dr_tests::{
    cluster::{EXTERNAL_ADDR, ROUTER_ADDR},
    dr_ctl_path,
    netns::Netns,
    require_root,
    traffic::{self, TestServer},
    Cluster, Host,
};
use etherparse::{NetSlice, SlicedPacket, TcpHeader, TransportSlice};
use serde_json::Value;
use socket2::{Domain, Protocol, Socket, Type};

fn cluster(tag: &str, extra_up: &[&str]) -> Cluster {
    require_root();
    Cluster::with_external(tag, extra_up, &dr_ctl_path()).expect("cluster with dr up")
}

fn assert_no_netfilter_nat(host: &Host) {
    let ipt = host
        .ns
        .exec("iptables", &["-t", "nat", "-S"])
        .unwrap_or_default();
    assert!(
        !ipt.contains("MASQUERADE") && !ipt.contains("SNAT"),
        "iptables NAT rule: {ipt}"
    );
    let nft = host
        .ns
        .exec("nft", &["list", "ruleset"])
        .unwrap_or_default();
    assert!(
        !nft.contains("masquerade") && !nft.contains("snat"),
        "nftables NAT rule: {nft}"
    );
}

#[test]
fn external_server_sees_the_host_address_for_tcp_udp_and_ping() {
    // Every translation must still be listed when the checks end, also in
    // the emulated VM, where they take longer than tcp-closed's 2 s and
    // icmp's 30 s.
    let timeouts = [
        "--nat-timeout",
        "tcp-closed=300",
        "--nat-timeout",
        "icmp=300",
        "--nat-timeout",
        "udp=300",
    ];
    external_traffic(&cluster("drnat", &timeouts));
}

#[test]
fn snat_works_alongside_the_xdp_fast_path() {
    let c = cluster("drnatx", &["--xdp"]);
    external_traffic(&c);
    // The replies took the fast path: XDP translated and redirected all but
    // the server's FIN, which TC checks against the container's window.
    let h0 = &c.hosts[0];
    let (nat_in, xdp) = (
        h0.counter("nat_in").unwrap(),
        h0.counter("xdp_redirect").unwrap(),
    );
    assert!(
        nat_in > 50 && xdp + 1 >= nat_in,
        "nat_in {nat_in}, xdp_redirect {xdp}"
    );
    // Cross-host traffic still takes the fast path.
    let (h0, h1) = (&c.hosts[0], &c.hosts[1]);
    traffic::tcp_transfer(
        &h0.containers[0].ns,
        &h1.containers[0].ns,
        h1.containers[0].addr,
        1 << 20,
    )
    .unwrap();
    assert!(h1.counter("xdp_redirect").unwrap() > 10);
}

fn external_traffic(c: &Cluster) {
    let ext = c.external.as_ref().unwrap();
    let h0 = &c.hosts[0];
    let container = &h0.containers[0];
    assert_no_netfilter_nat(h0);

    traffic::ping(&container.ns, EXTERNAL_ADDR, 3).unwrap();
    let (_, seen) = traffic::tcp_transfer(&container.ns, ext, EXTERNAL_ADDR, 4 << 20).unwrap();
    assert_eq!(seen.ip(), IpAddr::V4(h0.uplink_addr));
    assert!((10000..=32767).contains(&seen.port()), "port {seen}");
    let seen = traffic::udp_exchange(&container.ns, ext, EXTERNAL_ADDR, 50).unwrap();
    let quiet_since = Instant::now();
    assert_eq!(seen.ip(), IpAddr::V4(h0.uplink_addr));

    let entries = h0.nat_list().unwrap();
    for proto in ["icmp", "tcp", "udp"] {
        let e = entries
            .iter()
            .find(|e| e["proto"] == proto)
            .unwrap_or_else(|| panic!("no {proto} entry: {entries:?}"));
        assert_eq!(e["original"]["src_addr"], container.addr.to_string());
        assert_eq!(e["translated"]["src_addr"], h0.uplink_addr.to_string());
        assert_eq!(e["original"]["dst_addr"], EXTERNAL_ADDR.to_string());
        // With forwarding off (dr needs none) the FIB has no answer and the
        // kernel routes each packet: no next hop is kept.
        assert_eq!(e["next_hop"], Value::Null, "{e}");
    }
    assert!(h0.counter("nat_created").unwrap() >= 3);
    assert!(h0.counter("nat_out").unwrap() > 50 && h0.counter("nat_in").unwrap() > 50);

    // The text table names the same translations.
    let table = h0.dr(&["nat", "list"]).unwrap();
    assert!(table.contains(&format!("{}:", container.addr)), "{table}");
    assert!(
        table.contains(&format!("{} id ", container.addr)),
        "{table}"
    );

    // The programs' clock (jiffies, set by `up`) is dr-ctl's: the UDP
    // flow is listed as idle as long as it has been quiet, within a second.
    std::thread::sleep(Duration::from_millis(2_200).saturating_sub(quiet_since.elapsed()));
    let status = h0.status().unwrap();
    assert_eq!(status["clock"]["source"], "jiffies", "{status}");
    let udp_timeout = status["nat"]["timeouts"]["udp"].as_u64().unwrap();
    let listed_after = quiet_since.elapsed();
    let entries = h0.nat_list().unwrap();
    let listed_by = quiet_since.elapsed();
    let udp = entries.iter().find(|e| e["proto"] == "udp").unwrap();
    let idle = udp["idle_secs"].as_u64().unwrap();
    assert!(
        idle + 1 >= listed_after.as_secs() && idle <= listed_by.as_secs() + 1,
        "quiet for {listed_after:?} to {listed_by:?}: {udp}"
    );
    assert!(
        udp["expires_in_secs"].as_u64().unwrap() <= udp_timeout - 2,
        "{udp}"
    );
}

/// The host's default route moves to another address of the router and
/// the old one goes away (as when a cloud's gateway changes): a live
/// translated flow keeps its port and reaches the new gateway within a
/// route period, as the recipe's kernel, routing every packet, would.
#[test]
fn a_live_flow_follows_the_default_route_to_a_new_gateway() {
    let c = cluster("drnatgw", &[]);
    let (h0, ext) = (&c.hosts[0], c.external.as_ref().unwrap());
    let router = c.router.as_ref().unwrap();
    let container = &h0.containers[0];
    let new_gateway = Ipv4Addr::new(192, 168, 91, 253);
    // Forwarding on docker0, as dockerd sets it: the FIB answers.
    h0.ns
        .exec(
            "sysctl",
            &["-q", "-w", "net.ipv4.conf.docker0.forwarding=1"],
        )
        .unwrap();
    let echo = TestServer::udp_echo(ext, EXTERNAL_ADDR, u32::MAX).unwrap();
    // One socket: one flow, one translation throughout.
    let sock = container
        .ns
        .enter(|| std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .unwrap()
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let answered = |i: u32| {
        sock.send_to(format!("dr gateway {i}").as_bytes(), echo.addr)
            .unwrap();
        sock.recv_from(&mut [0u8; 64]).is_ok()
    };
    let translation = || {
        let port = sock.local_addr().unwrap().port();
        let entries = h0.nat_list().unwrap();
        let entry = entries
            .into_iter()
            .find(|e| e["proto"] == "udp" && e["original"]["src_port"] == port)
            .unwrap_or_else(|| panic!("no translation of port {port}"));
        (
            entry["translated"]["src_port"].clone(),
            entry["next_hop"].clone(),
        )
    };
    assert!(answered(0), "no answer before the move");
    let (port, next_hop) = translation();
    assert_eq!(next_hop, ROUTER_ADDR.to_string());
    let table = h0.dr(&["nat", "list"]).unwrap();
    assert!(table.contains(&format!(" {ROUTER_ADDR} ")), "{table}");

    // The second address stays when the first goes.
    router
        .exec(
            "sysctl",
            &["-q", "-w", "net.ipv4.conf.eth0.promote_secondaries=1"],
        )
        .unwrap();
    router
        .ip(&["addr", "add", &format!("{new_gateway}/24"), "dev", "eth0"])
        .unwrap();
    let via = new_gateway.to_string();
    h0.ns
        .ip(&["route", "replace", "default", "via", &via, "dev", "eth0"])
        .unwrap();
    router
        .ip(&["addr", "del", &format!("{ROUTER_ADDR}/24"), "dev", "eth0"])
        .unwrap();
    // The host forgets the old gateway's MAC: a packet sent there now
    // waits for an answer to ARP that never comes.
    h0.ns
        .ip(&["neigh", "flush", "to", &ROUTER_ADDR.to_string()])
        .unwrap();
    // 25 tries of 200 ms: several route periods.
    assert!(
        (1..=25).any(answered),
        "no answer through the new gateway: {}",
        h0.dr(&["nat", "list"]).unwrap()
    );
    assert_eq!(translation(), (port, Value::from(via)));
}

#[test]
fn flows_the_host_routes_elsewhere_are_left_to_the_kernel() {
    let c = cluster("drnatfib", &[]);
    let h0 = &c.hosts[0];
    let container = &h0.containers[0];
    // Host 0's second interface, toward a management network with a server.
    let host_mgmt = Ipv4Addr::new(198, 18, 0, 1);
    let server = Ipv4Addr::new(198, 18, 0, 10);
    let mgmt = Netns::add(&format!("{}-mgmt", c.prefix)).unwrap();
    h0.ns
        .ip(&[
            "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", &mgmt.name,
        ])
        .unwrap();
    h0.ns
        .ip(&["addr", "add", &format!("{host_mgmt}/24"), "dev", "eth1"])
        .unwrap();
    h0.ns.ip(&["link", "set", "eth1", "up"]).unwrap();
    mgmt.ip(&["addr", "add", &format!("{server}/24"), "dev", "eth0"])
        .unwrap();
    mgmt.ip(&["link", "set", "eth0", "up"]).unwrap();
    // What a Docker host has: forwarding on, and Docker's MASQUERADE for
    // container traffic leaving by any interface but docker0.
    h0.ns
        .exec("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"])
        .unwrap();
    h0.ns
        .exec(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-s",
                &h0.subnet(),
                "!",
                "-o",
                "docker0",
                "-j",
                "MASQUERADE",
            ],
        )
        .unwrap();

    // The management server sees the host's address on its network: the
    // connection left by eth1, not by the uplink with the uplink's address.
    let (_, seen) = traffic::tcp_transfer(&container.ns, &mgmt, server, 1 << 20).unwrap();
    assert_eq!(seen.ip(), IpAddr::V4(host_mgmt));
    let seen = traffic::udp_exchange(&container.ns, &mgmt, server, 5).unwrap();
    assert_eq!(seen.ip(), IpAddr::V4(host_mgmt));
    // The host's own address on eth1 is the host's: its listener sees the
    // container's own address, as with the recipe.
    let (_, seen) = traffic::tcp_transfer(&container.ns, &h0.ns, host_mgmt, 1 << 20).unwrap();
    assert_eq!(seen.ip(), IpAddr::V4(container.addr));
    assert!(
        h0.nat_list().unwrap().is_empty(),
        "{:?}",
        h0.nat_list().unwrap()
    );
    // Destinations routed out of the uplink are still dr's to translate.
    let ext = c.external.as_ref().unwrap();
    let (_, seen) = traffic::tcp_transfer(&container.ns, ext, EXTERNAL_ADDR, 1 << 20).unwrap();
    assert_eq!(seen.ip(), IpAddr::V4(h0.uplink_addr));
    assert_eq!(h0.nat_list().unwrap().len(), 1);
}

#[test]
fn peer_traffic_is_not_translated_and_makes_no_entries() {
    let c = cluster("drnatpeer", &[]);
    let (h0, h1) = (&c.hosts[0], &c.hosts[1]);
    let seen = traffic::udp_exchange(
        &h0.containers[0].ns,
        &h1.containers[0].ns,
        h1.containers[0].addr,
        5,
    )
    .unwrap();
    assert_eq!(seen.ip(), IpAddr::V4(h0.containers[0].addr));
    traffic::ping(&h0.containers[1].ns, h1.containers[1].addr, 2).unwrap();
    assert!(
        h0.nat_list().unwrap().is_empty(),
        "peer traffic was translated: {:?}",
        h0.nat_list().unwrap()
    );
    assert_eq!(h0.counter("nat_created").unwrap(), 0);
}

#[test]
fn no_masquerade_ranges_keep_the_container_address() {
    // The router's segment is excluded: traffic to it keeps the container source,
    // so the router (which has no route back) cannot answer.
    let c = cluster("drnatexcl", &["--no-masquerade", "192.168.91.0/24"]);
    let h0 = &c.hosts[0];
    assert!(!traffic::reachable(&h0.containers[0].ns, ROUTER_ADDR).unwrap());
    assert!(h0.nat_list().unwrap().is_empty());
    traffic::ping(&h0.containers[0].ns, EXTERNAL_ADDR, 1).unwrap();
}

#[test]
fn two_containers_with_the_same_source_port_to_the_same_destination() {
    let c = cluster("drnatport", &[]);
    let ext = c.external.as_ref().unwrap();
    let h0 = &c.hosts[0];
    let (a, b) = (&h0.containers[0], &h0.containers[1]);

    let sink = TestServer::tcp_sink(ext, EXTERNAL_ADDR, 2).unwrap();
    let target = sink.addr;
    std::thread::scope(|s| {
        let ta = s.spawn(|| traffic::tcp_send(&a.ns, 40000, target, 2 << 20));
        let tb = s.spawn(|| traffic::tcp_send(&b.ns, 40000, target, 2 << 20));
        ta.join().unwrap().unwrap();
        tb.join().unwrap().unwrap();
    });
    let seen = sink.finish().unwrap();
    assert_eq!(seen.len(), 2);
    assert_ne!(
        seen[0].port(),
        seen[1].port(),
        "both flows got the same port: {seen:?}"
    );

    let echo = TestServer::udp_echo(ext, EXTERNAL_ADDR, 20).unwrap();
    let target = echo.addr;
    std::thread::scope(|s| {
        let ta = s.spawn(|| traffic::udp_requests(&a.ns, 40000, target, 10));
        let tb = s.spawn(|| traffic::udp_requests(&b.ns, 40000, target, 10));
        ta.join().unwrap().unwrap();
        tb.join().unwrap().unwrap();
    });
    let seen = echo.finish().unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|s| s.ip() == IpAddr::V4(h0.uplink_addr)));

    let same_port: Vec<_> = h0
        .nat_list()
        .unwrap()
        .into_iter()
        .filter(|e| e["original"]["src_port"] == 40000)
        .collect();
    assert_eq!(same_port.len(), 4, "{same_port:?}");
}

#[test]
fn long_tcp_transfer_through_nat() {
    let c = cluster("drnatlong", &[]);
    let ext = c.external.as_ref().unwrap();
    let h1 = &c.hosts[1];
    let (_, seen) =
        traffic::tcp_transfer(&h1.containers[1].ns, ext, EXTERNAL_ADDR, 256 << 20).unwrap();
    assert_eq!(seen.ip(), IpAddr::V4(h1.uplink_addr));
}

#[test]
fn icmp_errors_reach_the_container() {
    let c = cluster("drnaticmp", &[]);
    let router = c.router.as_ref().unwrap();
    let h0 = &c.hosts[0];
    let container = &h0.containers[0];
    let ext = EXTERNAL_ADDR.to_string();

    // Time exceeded: TTL 2 leaves the container, dr decrements it to 1, the router answers.
    let out = container
        .ns
        .exec_output("ping", &["-n", "-c", "1", "-W", "1", "-t", "2", &ext])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("From {ROUTER_ADDR}")) && text.contains("Time to live exceeded"),
        "{text}"
    );

    // Fragmentation needed: the router's link to the external network is narrow.
    router.ip(&["link", "set", "eth1", "mtu", "1280"]).unwrap();
    let out = container
        .ns
        .exec_output(
            "ping",
            &["-n", "-c", "2", "-W", "1", "-M", "do", "-s", "1400", &ext],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Frag needed") && text.contains("mtu = 1280"),
        "{text}"
    );
    // The container's stack learned the path MTU, so TCP to the outside still works.
    let route = container.ns.ip(&["route", "get", &ext]).unwrap();
    assert!(route.contains("mtu 1280"), "{route}");
    let ext_ns = c.external.as_ref().unwrap();
    traffic::tcp_transfer(&container.ns, ext_ns, EXTERNAL_ADDR, 1 << 20).unwrap();
    assert!(h0.counter("nat_icmp_error_in").unwrap() >= 2);
}

#[test]
fn translations_expire_after_their_timeout() {
    let c = cluster(
        "drnatexp",
        &["--nat-timeout", "udp=2", "--nat-timeout", "icmp=2"],
    );
    let ext = c.external.as_ref().unwrap();
    let h0 = &c.hosts[0];
    traffic::udp_exchange(&h0.containers[0].ns, ext, EXTERNAL_ADDR, 3).unwrap();
    traffic::ping(&h0.containers[1].ns, EXTERNAL_ADDR, 1).unwrap();
    assert_eq!(h0.nat_list().unwrap().len(), 2);
    std::thread::sleep(Duration::from_millis(3500));
    assert!(
        h0.nat_list().unwrap().is_empty(),
        "still listed: {:?}",
        h0.nat_list().unwrap()
    );
    let gc: Value = serde_json::from_str(&h0.dr(&["nat", "gc", "--json"]).unwrap()).unwrap();
    assert_eq!(gc["removed"], 2);
    assert_eq!(h0.counter("nat_expired_gc").unwrap(), 2);
    // New traffic starts fresh translations.
    traffic::udp_exchange(&h0.containers[0].ns, ext, EXTERNAL_ADDR, 1).unwrap();
    assert_eq!(h0.nat_list().unwrap().len(), 1);
    let flushed: Value =
        serde_json::from_str(&h0.dr(&["nat", "flush", "--json"]).unwrap()).unwrap();
    assert_eq!(flushed["removed"], 1);
    assert!(h0.nat_list().unwrap().is_empty());
}

/// The acknowledgment number of the first segment with ACK that `raw` (a raw
/// TCP socket) sees arrive from `from`.
fn first_ack_from(raw: &Socket, from: SocketAddr) -> u32 {
    let mut buf = [0u8; 2048];
    loop {
        let n = (&*raw)
            .read(&mut buf)
            .expect("a segment from the container");
        let Ok(p) = SlicedPacket::from_ip(&buf[..n]) else {
            continue;
        };
        let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(tcp))) = (p.net, p.transport)
        else {
            continue;
        };
        let src = SocketAddr::from((ip.header().source_addr(), tcp.source_port()));
        if src == from && tcp.ack() {
            return tcp.acknowledgment_number();
        }
    }
}

/// A remote's RSTs and FINs sprayed by an off-path sender at a translated
/// port with wrong sequence numbers, while the container's connection
/// pauses, close nothing: the translation stays established past the
/// `tcp-closed` timeout and the connection goes on.
#[test]
fn sprayed_rsts_out_of_the_window_leave_a_paused_connection_alone() {
    let c = cluster("drnatrst", &["--nat-timeout", "tcp-closed=1"]);
    let ext = c.external.as_ref().unwrap();
    let h0 = &c.hosts[0];
    let listener = ext
        .enter(|| TcpListener::bind((EXTERNAL_ADDR, 0)))
        .unwrap()
        .unwrap();
    let server_at = listener.local_addr().unwrap();
    // Sees every TCP segment reaching the external namespace.
    let raw = ext
        .enter(|| {
            Socket::new(
                Domain::IPV4,
                Type::from(nix::libc::SOCK_RAW),
                Some(Protocol::TCP),
            )
        })
        .unwrap()
        .unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut client = h0.containers[0]
        .ns
        .enter(|| TcpStream::connect(server_at))
        .unwrap()
        .unwrap();
    let (mut server, seen) = listener.accept().unwrap();
    assert_eq!(seen.ip(), IpAddr::V4(h0.uplink_addr));
    client.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    server.read_exact(&mut got).unwrap();
    // The server's next sequence number, as the container acknowledges it.
    let next = first_ack_from(&raw, seen);

    let spray = |seq: u32, flags: &dyn Fn(&mut TcpHeader)| {
        let mut tcp = TcpHeader::new(server_at.port(), seen.port(), seq, 64240);
        flags(&mut tcp);
        tcp.checksum = tcp
            .calc_checksum_ipv4_raw(EXTERNAL_ADDR.octets(), h0.uplink_addr.octets(), &[])
            .unwrap();
        let mut bytes = Vec::new();
        tcp.write(&mut bytes).unwrap();
        raw.send_to(&bytes, &SocketAddr::from((h0.uplink_addr, 0)).into())
            .unwrap();
    };
    let guesses = 32;
    for i in 0..guesses {
        let seq = next.wrapping_add(1 << 31).wrapping_add(i << 20);
        spray(seq, &|t| t.rst = true);
        spray(seq, &|t| {
            t.fin = true;
            t.ack = true;
            t.acknowledgment_number = next;
        });
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        h0.counter("nat_teardown_out_of_window").unwrap(),
        u64::from(2 * guesses)
    );
    let nat = h0.nat_list().unwrap();
    let entry = nat
        .iter()
        .find(|e| e["translated"]["src_port"] == seen.port())
        .unwrap_or_else(|| panic!("the connection's translation is gone: {nat:?}"));
    assert_eq!(entry["state"], "established", "{entry}");
    // The connection works both ways.
    client.write_all(b"more").unwrap();
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"more");
    server.write_all(b"pong").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
}

/// `peer get` tells the way the datapath sends a container's packet: the
/// local subnet, the peer whose subnet holds it, SNAT, or the host's routing
/// for excluded, multicast and broadcast destinations; and checks its input.
#[test]
fn peer_get_tells_the_way_of_each_destination() {
    let c = cluster("drpget", &[]);
    let h0 = &c.hosts[0];
    let uplink = h0.uplink_addr.to_string();
    let peer_host = c.hosts[1].uplink_addr.to_string();
    let way = |addr: &str| -> Value {
        serde_json::from_str(&h0.dr(&["peer", "get", addr, "--json"]).unwrap()).unwrap()
    };
    let local = way("10.0.128.7");
    assert_eq!(
        (local["path"].as_str(), local["subnet"].as_str()),
        (Some("local"), Some("10.0.128.0/24"))
    );
    let peer = way("10.0.129.2");
    assert_eq!(peer["path"], "peer");
    assert_eq!(
        (peer["subnet"].as_str(), peer["via"].as_str()),
        (Some("10.0.129.0/24"), Some(peer_host.as_str()))
    );
    let snat = way(&EXTERNAL_ADDR.to_string());
    assert_eq!(
        (snat["path"].as_str(), snat["source"].as_str()),
        (Some("snat"), Some(uplink.as_str()))
    );
    for host_routed in ["10.0.200.1", "224.0.0.251", "255.255.255.255"] {
        assert_eq!(way(host_routed)["path"], "host", "{host_routed}");
    }
    let text = h0.dr(&["peer", "get", "10.0.129.2"]).unwrap();
    assert_eq!(
        text,
        format!("10.0.129.2: peer 10.0.129.0/24 via {peer_host}\n")
    );
    let out = h0.dr_output(&["peer", "get", "10.0.129"]).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim_end(),
        "dr-ctl: error: invalid address \"10.0.129\": expected an IPv4 address"
    );
}
