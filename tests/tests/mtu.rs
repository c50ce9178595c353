//! Path MTU through the real dr-ctl: the hosts' segment at MTU 1400 while
//! docker0 and the containers keep 1500, the segment wire-like (frames cross
//! it MTU-sized with full checksums; no GRO, TSO or GSO on the uplinks).
//!
//! ```text
//!  container ── docker0 ── eth0 ══ switch ══ eth0 ── docker0 ── container
//!    1500        1500      1400     1400     1400     1500        1500
//!                                     ╚══ router (1400) ── external 203.0.113.10
//! ```
//!
//! `bpf_redirect_neigh` skips the forwarding path's MTU check, so without
//! dr's own check the uplink drops what does not fit and TCP stalls.
use std::net::IpAddr;

use dr_tests::{
    cluster::{Container, EXTERNAL_ADDR},
    dr_ctl_path,
    netns::Netns,
    require_root, traffic, Cluster, Host,
};
use serde_json::Value;

const SEGMENT_MTU: u32 = 1400;
/// Bulk transfers: thousands of full-sized segments.
const BULK: usize = 5 << 20;

fn cluster(tag: &str, extra_up: &[&str]) -> Cluster {
    require_root();
    let mut c = Cluster::new(tag, 2, &dr_ctl_path()).expect("cluster");
    c.add_external().expect("external network");
    c.emulate_wire().unwrap();
    c.set_segment_mtu(SEGMENT_MTU).unwrap();
    c.up_all_with(2, extra_up).unwrap();
    if extra_up.contains(&"--xdp") {
        c.sync_endpoints().unwrap();
    }
    c
}

/// `dr-ctl sync --json` on `host`.
fn sync(host: &Host) -> Value {
    serde_json::from_str(&host.dr(&["sync", "--json"]).unwrap()).unwrap()
}

/// The MTU the container's stack has learned toward `to`, from `ip route get`.
fn learned_mtu(container: &Container, to: IpAddr) -> Option<u32> {
    let route = container.ns.ip(&["route", "get", &to.to_string()]).unwrap();
    let mut words = route.split_whitespace();
    words.find(|w| *w == "mtu")?;
    words.next()?.parse().ok()
}

/// A full-sized DF ping from `from` to `to`: its output (it fails: the
/// answer is an error).
fn ping_1500_df(from: &Container, to: IpAddr) -> String {
    let out = from
        .ns
        .exec_output(
            "ping",
            &[
                "-n",
                "-c",
                "1",
                "-W",
                "2",
                "-M",
                "do",
                "-s",
                "1472",
                &to.to_string(),
            ],
        )
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A bulk TCP transfer from `client` to `server` that must make `host`'s
/// datapath answer with frag-needed; returns the client address the server saw.
fn bulk_with_frag_needed(
    host: &Host,
    client: &Container,
    server_ns: &Netns,
    server: IpAddr,
) -> std::net::SocketAddr {
    let IpAddr::V4(server_addr) = server else {
        unreachable!("IPv4 only")
    };
    let before = host.counter("icmp_frag_needed").unwrap();
    // tcp_transfer checks every byte and the count the server received.
    let (_, seen) = traffic::tcp_transfer(&client.ns, server_ns, server_addr, BULK)
        .unwrap_or_else(|e| panic!("{} -> {server}: {e:#}", client.addr));
    assert!(
        host.counter("icmp_frag_needed").unwrap() > before,
        "the transfer to {server} never needed an ICMP from dr"
    );
    assert_eq!(learned_mtu(client, server), Some(SEGMENT_MTU));
    seen
}

fn path_mtu_is_learned_and_bulk_tcp_completes(c: &Cluster) {
    let (h0, h1) = (&c.hosts[0], &c.hosts[1]);
    for host in [h0, h1] {
        let status: Value = serde_json::from_str(&host.dr(&["status", "--json"]).unwrap()).unwrap();
        assert_eq!(status["uplink_mtu"], SEGMENT_MTU, "host {}", host.id);
        assert_eq!(sync(host)["uplink_mtu"], SEGMENT_MTU, "host {}", host.id);
    }
    // ping: the answer comes from docker0's address, with the uplink's MTU.
    let (c0, peer) = (&h0.containers[0], &h1.containers[0]);
    let text = ping_1500_df(c0, peer.addr.into());
    assert!(
        text.contains("Frag needed") && text.contains(&format!("mtu = {SEGMENT_MTU}")),
        "{text}"
    );
    assert!(text.contains(&format!("From 10.0.{}.1", h0.id)), "{text}");
    assert_eq!(learned_mtu(c0, peer.addr.into()), Some(SEGMENT_MTU));
    // Packets without DF that do not fit are dropped, counted, not fragmented.
    let before = h0.counter("drop_too_big_no_df").unwrap();
    let out = c0
        .ns
        .exec_output(
            "ping",
            &[
                "-n",
                "-c",
                "1",
                "-W",
                "1",
                "-M",
                "dont",
                "-s",
                "1472",
                &h1.containers[1].addr.to_string(),
            ],
        )
        .unwrap();
    assert!(
        !out.status.success(),
        "a too-big packet without DF got an answer"
    );
    assert_eq!(h0.counter("drop_too_big_no_df").unwrap(), before + 1);

    // Bulk TCP both ways on the peer path, each from a container that has
    // learned nothing toward a server that has learned nothing toward it
    // (a server that knows the path MTU advertises a fitting MSS).
    let (a, b) = (&h0.containers[1], &h1.containers[1]);
    bulk_with_frag_needed(h0, a, &b.ns, b.addr.into());
    bulk_with_frag_needed(h1, peer, &a.ns, a.addr.into());
    // And through SNAT to the external server.
    let ext = c.external.as_ref().unwrap();
    let seen = bulk_with_frag_needed(h0, a, ext, EXTERNAL_ADDR.into());
    assert_eq!(seen.ip(), IpAddr::V4(h0.uplink_addr));
}

#[test]
fn path_mtu_on_a_narrow_uplink() {
    path_mtu_is_learned_and_bulk_tcp_completes(&cluster("drmtu", &[]));
}

#[test]
fn path_mtu_on_a_narrow_uplink_with_xdp() {
    path_mtu_is_learned_and_bulk_tcp_completes(&cluster("drmtux", &["--xdp"]));
}

#[test]
fn sync_follows_a_changed_uplink_mtu() {
    let c = cluster("drmtusync", &[]);
    let (h0, h1) = (&c.hosts[0], &c.hosts[1]);
    h0.ns.ip(&["link", "set", "eth0", "mtu", "1300"]).unwrap();
    assert_eq!(sync(h0)["uplink_mtu"], 1300);
    let status = h0.dr(&["status"]).unwrap();
    assert!(status.contains("(mtu 1300)"), "{status}");
    let text = ping_1500_df(&h0.containers[0], h1.containers[0].addr.into());
    assert!(text.contains("mtu = 1300"), "{text}");
}

#[test]
fn up_gives_docker_the_uplink_mtu_when_it_is_below_1500() {
    require_root();
    let c = Cluster::new("drmtudock", 1, &dr_ctl_path()).expect("cluster");
    c.set_segment_mtu(SEGMENT_MTU).unwrap();
    let h0 = &c.hosts[0];
    let dir = TempDir::new(&c.prefix);
    let path = dir.0.join("daemon.json");
    std::fs::write(&path, r#"{"log-driver": "journald"}"#).unwrap();
    let mut up = h0.up_args();
    up.extend(["--docker-config".into(), path.display().to_string()]);
    let up: Vec<&str> = up.iter().map(String::as_str).collect();
    let report: Value =
        serde_json::from_str(&h0.dr(&[&up[..], &["--json"]].concat()).unwrap()).unwrap();
    assert_eq!(report["docker_config"]["written"], true, "{report}");
    assert_eq!(report["docker_config"]["mtu"], SEGMENT_MTU, "{report}");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(doc["mtu"], SEGMENT_MTU);
    assert_eq!(doc["bip"], h0.bip());
    assert_eq!(doc["log-driver"], "journald");
    // The text output says so too, once the file needs writing again.
    h0.ns.ip(&["link", "set", "eth0", "mtu", "1300"]).unwrap();
    let text = h0.dr(&up).unwrap();
    assert!(
        text.contains("wrote bip and mtu 1300 to daemon.json"),
        "{text}"
    );
}

/// A directory under the system's temporary directory, removed on drop
/// (also when a test fails).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
