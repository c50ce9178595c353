//! dr under a real dockerd (Debian's docker.io): host A's docker0 comes from
//! `dr-ctl up --docker-config`, and dockerd, started with that daemon.json,
//! brings its own iptables chains (FORWARD policy DROP, DOCKER-USER, its
//! MASQUERADE for the bip subnet), docker-proxy and published ports (which
//! `dr-ctl sync` learns from dockerd's rules and dr translates). Host B
//! runs dr with a hand-made container; a router leads to an external
//! namespace.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{ensure, Context as _, Result};
use dr_tests::{
    cluster::{EXTERNAL_ADDR, ROUTER_ADDR},
    docker::Dockerd,
    dr_ctl_path, require_root,
    traffic::{self, TestServer},
    Cluster, Container, Host, Netns,
};
use serde_json::Value;

/// What every test container runs; the tests' servers and clients enter its
/// network namespace from outside.
const IDLE: [&str; 2] = ["sleep", "3600"];

/// Drop order is field order: dockerd (and its containers) before the
/// namespaces they live in.
struct DockerCluster {
    dockerd: Dockerd,
    cluster: Cluster,
}

impl DockerCluster {
    /// Host A: `dr-ctl up --docker-config`, then dockerd on that config.
    /// Host B: dr and one container. Peers meshed, external network added.
    fn new(tag: &str) -> Self {
        Self::with_up_args(tag, &[])
    }

    /// [`Self::new`], with `extra` for A's `dr-ctl up`.
    fn with_up_args(tag: &str, extra: &[&str]) -> Self {
        let mut env = Self::without_dr_on_a(tag);
        env.adopt_docker0(extra);
        env.dockerd.start().expect("dockerd");
        // dockerd adopted the bridge dr made, with dr's bip.
        let gateway = env
            .dockerd
            .docker(&[
                "network",
                "inspect",
                "bridge",
                "-f",
                "{{(index .IPAM.Config 0).Gateway}} {{index .Options \"com.docker.network.bridge.name\"}}",
            ])
            .unwrap();
        assert_eq!(gateway, format!("10.0.{}.1 docker0", env.a().id));
        env
    }

    /// Host A without dr, its dockerd not started and configured with
    /// Docker's defaults; host B with dr and one container; the external
    /// network.
    fn without_dr_on_a(tag: &str) -> Self {
        require_root();
        let mut cluster = Cluster::new(tag, 2, &dr_ctl_path()).expect("cluster");
        cluster.add_external().expect("external network");
        let dockerd = Dockerd::new(&cluster.hosts[0].ns).expect("dockerd directory");
        let prefix = cluster.prefix.clone();
        let b = &mut cluster.hosts[1];
        b.up().expect("dr-ctl up on B");
        b.add_container(&prefix).unwrap();
        Self { dockerd, cluster }
    }

    /// `dr-ctl up --docker-config` (and `extra`) on A (dockerd reads the
    /// bip at its next start), and the peers meshed.
    fn adopt_docker0(&self, extra: &[&str]) {
        let config = self.dockerd.daemon_json();
        let mut args = vec!["--docker-config", config.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.a().up_with(&args).expect("dr-ctl up --docker-config");
        self.cluster.mesh().unwrap();
    }

    fn a(&self) -> &Host {
        &self.cluster.hosts[0]
    }

    fn b(&self) -> &Host {
        &self.cluster.hosts[1]
    }

    fn external(&self) -> &Netns {
        self.cluster.external.as_ref().unwrap()
    }

    /// `docker run -d` of an idle container on A, with `options`.
    fn run(&self, name: &str, options: &[&str]) -> Container {
        let container = self
            .dockerd
            .run_container(name, options, &IDLE)
            .unwrap_or_else(|e| panic!("docker run {name}: {e:#}"));
        self.assert_in_dr_subnet(name, &container);
        container
    }

    fn assert_in_dr_subnet(&self, name: &str, container: &Container) {
        assert_eq!(
            container.addr.octets()[..3],
            [10, 0, self.a().id],
            "{name} ({}) is not in dr's subnet {}",
            container.addr,
            self.a().subnet()
        );
    }
}

/// The packets counted by the rule of `chain` (table `table`) in `ns` that
/// jumps to `target` for `source`; an error if there is no such rule.
fn rule_packets(ns: &Netns, table: &str, chain: &str, target: &str, source: &str) -> Result<u64> {
    let listing = ns.exec("iptables", &["-t", table, "-L", chain, "-v", "-n", "-x"])?;
    // pkts bytes target prot opt in out source destination
    let rule = listing
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() >= 9 && f[2] == target && f[7] == source)
        .with_context(|| format!("no {target} rule for {source} in {table}/{chain}:\n{listing}"))?;
    Ok(rule[0].parse()?)
}

/// TCP then UDP both ways between `local` (on A) and `remote` (on B); each
/// server must see the other container's own address.
fn exchange_with_peer(local: &Container, remote: &Container) {
    traffic::ping(&local.ns, remote.addr, 3).unwrap();
    let (_, seen) = traffic::tcp_transfer(&local.ns, &remote.ns, remote.addr, 4 << 20).unwrap();
    assert_eq!(seen.ip(), local.addr, "B's server saw A's container as");
    let (_, seen) = traffic::tcp_transfer(&remote.ns, &local.ns, local.addr, 4 << 20).unwrap();
    assert_eq!(seen.ip(), remote.addr, "A's container saw B's container as");
    let seen = traffic::udp_exchange(&local.ns, &remote.ns, remote.addr, 20).unwrap();
    assert_eq!(seen.ip(), local.addr);
    let seen = traffic::udp_exchange(&remote.ns, &local.ns, local.addr, 20).unwrap();
    assert_eq!(seen.ip(), remote.addr);
}

#[test]
fn docker_containers_reach_peers_and_peer_hosts_through_forward_drop_and_docker_user() {
    let env = DockerCluster::new("drdkfwd");
    let (a, b) = (env.a(), env.b());
    let web = env.run("web", &[]);
    let client = env.run("client", &[]);
    let peer = &b.containers[0];

    let forward = a.ns.exec("iptables", &["-S", "FORWARD"]).unwrap();
    assert!(
        forward.lines().any(|l| l == "-P FORWARD DROP"),
        "dockerd did not set FORWARD's policy to DROP:\n{forward}"
    );
    exchange_with_peer(&client, peer);
    // With br_netfilter on (dockerd turns it on with icc=false; loading the
    // module turns it on in every namespace), iptables sees what crosses the
    // bridge: web's packets, until dr hooks web's port.
    a.ns.exec(
        "sysctl",
        &["-q", "-w", "net.bridge.bridge-nf-call-iptables=1"],
    )
    .unwrap();
    let web_src = web.addr.to_string();
    a.ns.exec(
        "iptables",
        &[
            "-t",
            "raw",
            "-I",
            "PREROUTING",
            "-s",
            &web_src,
            "-j",
            "ACCEPT",
        ],
    )
    .unwrap();
    let netfilter_saw = || rule_packets(&a.ns, "raw", "PREROUTING", "ACCEPT", &web_src).unwrap();
    traffic::ping(&web.ns, peer.addr, 2).unwrap();
    assert!(
        netfilter_saw() >= 2,
        "iptables did not see web's packets cross the bridge: the test cannot see"
    );

    // `sync` learns Docker's containers and hooks their ports: traffic
    // between them and B's skips docker0 both ways, and netfilter.
    let sync: Value = serde_json::from_str(&a.dr(&["sync", "--json"]).unwrap()).unwrap();
    assert_eq!(sync["endpoints"], 2, "client and web learned: {sync}");
    assert_eq!(sync["port_hooks"], 2, "{sync}");
    let docker0 = |dir| a.ns.link_packets("docker0", dir).unwrap();
    let (tx, rx, seen_before) = (docker0("tx"), docker0("rx"), netfilter_saw());
    let (_, seen) = traffic::tcp_transfer(&peer.ns, &web.ns, web.addr, 4 << 20).unwrap();
    assert_eq!(seen.ip(), peer.addr);
    let (_, seen) = traffic::tcp_transfer(&web.ns, &peer.ns, peer.addr, 4 << 20).unwrap();
    assert_eq!(seen.ip(), web.addr);
    let (via_tx, via_rx) = (docker0("tx") - tx, docker0("rx") - rx);
    assert!(via_tx <= 5, "docker0 sent {via_tx} frames");
    assert!(via_rx <= 5, "docker0 received {via_rx} frames");
    assert_eq!(netfilter_saw(), seen_before, "iptables saw web's packets");

    // Where Docker tells operators to filter: dr's path never reaches it.
    a.ns.exec("iptables", &["-I", "DOCKER-USER", "-j", "DROP"])
        .unwrap();
    exchange_with_peer(&web, peer);
    // Nor for the hosts' own processes: each side sees the other host's
    // uplink address.
    let (_, seen) = traffic::tcp_transfer(&b.ns, &web.ns, web.addr, 1 << 20).unwrap();
    assert_eq!(
        seen.ip(),
        IpAddr::V4(b.uplink_addr),
        "A's container saw B's host as"
    );
    let (_, seen) = traffic::tcp_transfer(&a.ns, &peer.ns, peer.addr, 1 << 20).unwrap();
    assert_eq!(
        seen.ip(),
        IpAddr::V4(a.uplink_addr),
        "B's container saw A's host as"
    );
    let dropped = rule_packets(&a.ns, "filter", "DOCKER-USER", "DROP", "0.0.0.0/0").unwrap();
    assert_eq!(dropped, 0, "DOCKER-USER's DROP saw dr's traffic");

    let status = a.status().unwrap();
    for counter in ["to_peer", "from_peer"] {
        let bytes = status["counters"][counter]["bytes"].as_u64().unwrap();
        assert!(bytes > 8 << 20, "{counter}: {bytes} bytes");
    }
    assert!(
        a.nat_list().unwrap().is_empty(),
        "peer traffic was translated"
    );
}

/// With native XDP on A, B's traffic to A's Docker containers takes the
/// fast path. Docker leaves GRO off on a container's eth0, and the kernel
/// drops what native XDP redirects into a veth whose other end has neither
/// GRO nor an XDP program: `sync` turns GRO on, and every byte arrives.
#[test]
fn native_xdp_delivers_into_docker_containers_once_sync_turns_their_gro_on() {
    let env = DockerCluster::with_up_args("drdkxdp", &["--xdp"]);
    // Complete checksums on the segment, as on a wire (see emulate_wire).
    env.cluster.emulate_wire().unwrap();
    let (a, b) = (env.a(), env.b());
    let web = env.run("web", &[]);
    let peer = &b.containers[0];
    let gro = || web.ns.exec("ethtool", &["-k", "eth0"]).unwrap();
    assert!(
        gro().contains("generic-receive-offload: off"),
        "not Docker's default, the test cannot see:\n{}",
        gro()
    );
    // A learns web from its first packets (neighbour table, bridge FDB).
    traffic::ping(&web.ns, peer.addr, 2).unwrap();
    let sync: Value = serde_json::from_str(&a.dr(&["sync", "--json"]).unwrap()).unwrap();
    assert_eq!(sync["xdp"], "native", "{sync}");
    assert_eq!(sync["endpoints"], 1, "{sync}");
    assert_eq!(sync["xdp_endpoints"], 1, "{sync}");
    assert!(gro().contains("generic-receive-offload: on"), "{}", gro());
    let before = a.counter("xdp_redirect").unwrap();
    exchange_with_peer(&web, peer);
    // Thousands of MSS-sized frames of B's 4 MiB went through XDP.
    let redirected = a.counter("xdp_redirect").unwrap() - before;
    assert!(redirected > 2000, "xdp_redirect {redirected}");
}

/// One published-port check: `Ok` with the address the server saw.
type Seen = Result<SocketAddr>;

/// A TCP client in `client` sends to `target`, which Docker forwards to
/// port 80 of `server`; the server checks every byte and answers with the
/// count, which the client checks.
fn published_tcp(server: &Container, client: &Netns, target: SocketAddr) -> Seen {
    let sink = TestServer::tcp_sink_at(&server.ns, (Ipv4Addr::UNSPECIFIED, 80).into(), 1)?;
    let sent = traffic::tcp_send(client, 0, target, 1 << 20);
    // Waited for either way: the next check binds the same port.
    let seen = sink.finish();
    sent?;
    Ok(seen?[0])
}

/// UDP requests from `client` to `target`, forwarded to port 53 of `server`,
/// which echoes them; the client checks every echo.
fn published_udp(server: &Container, client: &Netns, target: SocketAddr) -> Seen {
    const DATAGRAMS: u32 = 10;
    let echo = TestServer::udp_echo_at(&server.ns, (Ipv4Addr::UNSPECIFIED, 53).into(), DATAGRAMS)?;
    let answered = traffic::udp_requests(client, 0, target, DATAGRAMS);
    let seen = echo.finish();
    answered?;
    let seen = seen?;
    ensure!(seen.len() == 1, "expected one client, saw {seen:?}");
    Ok(seen[0])
}

#[test]
fn published_tcp_and_udp_ports_answer_peer_hosts_and_the_external_network() {
    let env = DockerCluster::new("drdkpub");
    let (a, b) = (env.a(), env.b());
    let web = env.run("web", &["-p", "8080:80", "-p", "5353:53/udp"]);
    let tcp_target = SocketAddr::from((a.uplink_addr, 8080));
    let udp_target = SocketAddr::from((a.uplink_addr, 5353));
    // dr learns the ports from the rules dockerd wrote, and translates
    // them itself.
    let sync: Value = serde_json::from_str(&a.dr(&["sync", "--json"]).unwrap()).unwrap();
    let want = serde_json::json!([
        {"proto": "tcp", "host_port": 8080, "container": web.addr, "container_port": 80},
        {"proto": "udp", "host_port": 5353, "container": web.addr, "container_port": 53},
    ]);
    assert_eq!(sync["published"]["offloaded"], want, "sync: {sync}");

    // Who connects, and the source the container must see: B's dr
    // translates its container's traffic to A's uplink address (outside the
    // cluster CIDR) to B's own address.
    let clients = [
        ("B's container", &b.containers[0].ns, b.uplink_addr),
        ("B's root namespace", &b.ns, b.uplink_addr),
        ("the external namespace", env.external(), EXTERNAL_ADDR),
    ];
    // Every client and protocol is tried, so one run reports all that fail.
    let mut failures = Vec::new();
    for (who, client, expected) in clients {
        let checks = [
            ("TCP", tcp_target, published_tcp(&web, client, tcp_target)),
            ("UDP", udp_target, published_udp(&web, client, udp_target)),
        ];
        for (proto, target, result) in checks {
            match result {
                Ok(seen) if seen.ip() == IpAddr::V4(expected) => {}
                Ok(seen) => failures.push(format!(
                    "{proto} from {who} to {target}: the container saw {seen}, expected {expected}"
                )),
                Err(e) => failures.push(format!("{proto} from {who} to {target}: {e:#}")),
            }
        }
    }
    // dr translated both ways, with its published-port translation, not
    // with a SNAT translation, and left nothing to the kernel's conntrack.
    let translated: Vec<_> = a
        .nat_list()
        .unwrap()
        .into_iter()
        .filter(|e| e["original"]["src_addr"] == web.addr.to_string())
        .collect();
    if !translated.is_empty() {
        failures.push(format!("dr translated the answers: {translated:?}"));
    }
    let counters = ["published_in", "published_out", "inbound_reply"]
        .map(|name| (name, a.counter(name).unwrap()));
    if counters[0].1 == 0 || counters[1].1 == 0 || counters[2].1 != 0 {
        failures.push(format!("counters on A: {counters:?}"));
    }
    assert!(
        failures.is_empty(),
        "published ports of {} (`docker run -p 8080:80 -p 5353:53/udp`):\n{}",
        web.addr,
        failures.join("\n"),
    );
}

#[test]
fn outbound_traffic_goes_through_dr_snat_not_docker_masquerade() {
    let env = DockerCluster::new("drdknat");
    let a = env.a();
    let client = env.run("client", &[]);
    let ext = env.external();

    traffic::ping(&client.ns, EXTERNAL_ADDR, 3).unwrap();
    let (_, seen) = traffic::tcp_transfer(&client.ns, ext, EXTERNAL_ADDR, 4 << 20).unwrap();
    assert_eq!(seen.ip(), IpAddr::V4(a.uplink_addr));
    assert!(
        (10000..=32767).contains(&seen.port()),
        "not a port of dr's range: {seen}"
    );
    let seen = traffic::udp_exchange(&client.ns, ext, EXTERNAL_ADDR, 20).unwrap();
    assert_eq!(seen.ip(), IpAddr::V4(a.uplink_addr));

    let entries = a.nat_list().unwrap();
    for proto in ["icmp", "tcp", "udp"] {
        let entry = entries
            .iter()
            .find(|e| e["proto"] == proto && e["original"]["src_addr"] == client.addr.to_string())
            .unwrap_or_else(|| panic!("no {proto} translation for {}: {entries:?}", client.addr));
        assert_eq!(entry["translated"]["src_addr"], a.uplink_addr.to_string());
        assert_eq!(entry["original"]["dst_addr"], EXTERNAL_ADDR.to_string());
        // dockerd turned forwarding on: the FIB named the default route's
        // router, which the flow's packets are handed to.
        assert_eq!(entry["next_hop"], ROUTER_ADDR.to_string(), "{entry}");
    }
    let masqueraded = rule_packets(&a.ns, "nat", "POSTROUTING", "MASQUERADE", &a.subnet()).unwrap();
    assert_eq!(masqueraded, 0, "Docker's MASQUERADE translated packets");
}

#[test]
fn restarting_dockerd_keeps_forwarding() {
    let mut env = DockerCluster::new("drdkrst");
    let kept = env.run("kept", &[]);
    let pid = env.dockerd.pid("kept").unwrap();
    let peer_addr = env.b().containers[0].addr;
    traffic::ping(&kept.ns, peer_addr, 2).unwrap();

    env.dockerd.stop().unwrap();
    // Forwarding does not depend on dockerd.
    traffic::ping(&kept.ns, peer_addr, 3).unwrap();
    env.dockerd.start().unwrap();

    assert_eq!(
        env.dockerd.pid("kept").unwrap(),
        pid,
        "the container did not survive the restart (live-restore)"
    );
    let peer = &env.b().containers[0];
    exchange_with_peer(&kept, peer);
    let fresh = env.run("fresh", &[]);
    exchange_with_peer(&fresh, peer);
}

/// Starts A's dockerd with Docker's defaults (no bip: docker0 is
/// 172.17.0.1/16) and a container `name` on it, which reaches the external
/// server through Docker's MASQUERADE.
fn start_with_docker_defaults(env: &mut DockerCluster, name: &str) -> Container {
    env.dockerd.start().expect("dockerd");
    let container = env.dockerd.run_container(name, &[], &IDLE).unwrap();
    let docker0 = env.a().ns.ip(&["-4", "addr", "show", "docker0"]).unwrap();
    assert!(docker0.contains("172.17.0.1/16"), "{docker0}");
    let (_, seen) =
        traffic::tcp_transfer(&container.ns, env.external(), EXTERNAL_ADDR, 1 << 20).unwrap();
    assert_eq!(seen.ip(), IpAddr::V4(env.a().uplink_addr));
    container
}

// Before `up` refused this, it added its address to the bridge and dropped
// the container's packets as spoofed.
#[test]
fn up_refuses_a_docker0_with_another_address_and_leaves_its_containers_alone() {
    let mut env = DockerCluster::without_dr_on_a("drdkadopt");
    let old = start_with_docker_defaults(&mut env, "old");
    let a = env.a();

    let up_args = a.up_args();
    let up_args: Vec<&str> = up_args.iter().map(String::as_str).collect();
    let up = a.dr_output(&up_args).unwrap();
    let stderr = String::from_utf8_lossy(&up.stderr);
    // Every check runs, so one run reports all that fail.
    let mut failures = Vec::new();
    if up.status.success() {
        failures.push(format!(
            "`dr-ctl {}` succeeded; stdout: {}",
            up_args.join(" "),
            String::from_utf8_lossy(&up.stdout).trim()
        ));
    }
    let one_line_error = stderr.lines().count() == 1 && stderr.starts_with("dr-ctl: error:");
    if !one_line_error || !stderr.contains("docker0") {
        failures.push(format!(
            "expected a one-line error naming docker0, got: {stderr:?}"
        ));
    }
    if let Err(e) = traffic::tcp_transfer(&old.ns, env.external(), EXTERNAL_ADDR, 1 << 20) {
        let docker0 = a.ns.ip(&["-4", "addr", "show", "docker0"]).unwrap();
        let counters = a.status().map(|s| s["counters"].to_string());
        failures.push(format!(
            "the running container lost the external network: {e:#}\ndocker0: {docker0}\ndr counters: {counters:?}"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn switch_over_from_dockers_default_bridge_as_the_readme_says() {
    let mut env = DockerCluster::without_dr_on_a("drdkswitch");
    drop(start_with_docker_defaults(&mut env, "app"));

    // What `up`'s refusal says: stop the containers, `up --docker-config`,
    // restart dockerd; then start the containers again.
    env.dockerd.docker(&["stop", "-t", "1", "app"]).unwrap();
    env.adopt_docker0(&[]);
    env.dockerd.stop().unwrap();
    env.dockerd.start().unwrap();
    env.dockerd.docker(&["start", "app"]).unwrap();

    let app = env.dockerd.container("app").unwrap();
    env.assert_in_dr_subnet("app", &app);
    exchange_with_peer(&app, &env.b().containers[0]);
    let a = env.a();
    let (_, seen) = traffic::tcp_transfer(&app.ns, env.external(), EXTERNAL_ADDR, 1 << 20).unwrap();
    assert_eq!(seen.ip(), IpAddr::V4(a.uplink_addr));
    let entries = a.nat_list().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["original"]["src_addr"] == app.addr.to_string()),
        "dr did not translate {}: {entries:?}",
        app.addr
    );
}
