//! `dr-ctl metrics`: the Prometheus families, printed once and served over
//! HTTP, through the real dr-ctl in emulated hosts.
use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Child, Command},
    time::Duration,
};

use dr_ctl::metrics::{FAMILIES, MAX_CONNECTIONS};
use dr_tests::{dr_ctl_path, notify::NotifySocket, require_root, traffic, Cluster, Host};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

/// Parses the Prometheus text format into (series, value).
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            (
                series.to_string(),
                value
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {l:?}")),
            )
        })
        .collect()
}

fn get(m: &[(String, f64)], series: &str) -> Option<f64> {
    m.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
}

/// `dr-ctl metrics --listen` in a host, killed when dropped.
struct Server(Child);

impl Server {
    fn start(host: &Host, listen: &str) -> Self {
        Self(
            Command::new("ip")
                .args(["netns", "exec", &host.ns.name])
                .arg(dr_ctl_path())
                .args(["metrics", "--listen", listen])
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connects to the server in `host`, waiting for it to listen.
fn connect(host: &Host, addr: &str) -> TcpStream {
    for _ in 0..100 {
        if let Ok(Ok(conn)) = host.ns.enter(|| TcpStream::connect(addr)) {
            // A guard against a hang, not a timed assertion.
            conn.set_read_timeout(Some(Duration::from_secs(120)))
                .unwrap();
            return conn;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing listens on {addr} in {}", host.ns.name);
}

/// One request; returns (status line and headers, body).
fn request(host: &Host, addr: &str, head: &str) -> (String, String) {
    let mut conn = connect(host, addr);
    conn.write_all(format!("{head}\r\nHost: dr\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a full response");
    (head.to_string(), body.to_string())
}

#[test]
fn metrics_are_served_in_the_prometheus_text_format() {
    require_root();
    let mut c = Cluster::new("drmetrics", 2, &dr_ctl_path()).unwrap();
    let before = parse_metrics(&c.hosts[0].dr(&["metrics"]).unwrap());
    assert_eq!(get(&before, "dr_datapath_up"), Some(0.0), "{before:?}");
    c.up_all(1).unwrap();
    let (h0, h1) = (&c.hosts[0], &c.hosts[1]);
    traffic::ping(&h0.containers[0].ns, h1.containers[0].addr, 3).unwrap();

    let once = parse_metrics(&h0.dr(&["metrics"]).unwrap());
    assert!(get(&once, "dr_forwarded_packets_total{direction=\"to_peer\"}").unwrap() >= 3.0);
    assert_eq!(get(&once, "dr_peers"), Some(1.0));
    assert_eq!(get(&once, "dr_datapath_up"), Some(1.0));

    let addr = "127.0.0.1:19464";
    let _server = Server::start(h0, addr);
    // Query strings are ignored, as Prometheus' `params` would send them.
    let (head, body) = request(h0, addr, "GET /metrics?collect=all HTTP/1.1");
    assert!(
        head.starts_with("HTTP/1.1 200") && head.contains("text/plain; version=0.0.4"),
        "{head}"
    );
    for family in FAMILIES {
        assert!(
            body.contains(&format!("# TYPE {} {}\n", family.name, family.kind)),
            "{} missing:\n{body}",
            family.name
        );
    }
    let m = parse_metrics(&body);
    let peer = format!(
        "dr_peer_packets_total{{subnet=\"{}\",via=\"{}\",direction=\"to_peer\"}}",
        h1.subnet(),
        h1.uplink_addr
    );
    assert!(get(&m, &peer).unwrap() >= 3.0, "{body}");
    assert_eq!(get(&m, "dr_peer_series_omitted"), Some(0.0));
    assert!(get(&m, "dr_dropped_packets_total{reason=\"spoofed_source\"}").is_some());
    assert_eq!(get(&m, "dr_xdp_info{mode=\"off\"}"), Some(1.0));
    for hook in [
        "bridge_ingress",
        "uplink_ingress",
        "bridge_egress",
        "uplink_egress",
    ] {
        let series = format!("dr_datapath_hook_attached{{hook=\"{hook}\"}}");
        assert_eq!(get(&m, &series), Some(1.0), "{body}");
    }
    let version = format!("dr_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    assert_eq!(get(&m, &version), Some(1.0));

    let (head, body) = request(h0, addr, "HEAD /metrics HTTP/1.1");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: "),
        "{head}"
    );
    assert_eq!(body, "", "HEAD answered with a body");
    let (head, _) = request(h0, addr, "GET /other HTTP/1.1");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = request(h0, addr, "POST /metrics HTTP/1.1");
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
}

#[test]
fn the_server_tells_systemd_it_is_ready_and_stopping() {
    require_root();
    let mut c = Cluster::new("drmetready", 1, &dr_ctl_path()).unwrap();
    c.up_all(1).unwrap();
    let h0 = &c.hosts[0];
    let notify = NotifySocket::bind().unwrap();
    let addr = "127.0.0.1:19466";
    let mut server = Server(
        Command::new("ip")
            .args(["netns", "exec", &h0.ns.name])
            .arg(dr_ctl_path())
            .args(["metrics", "--listen", addr])
            .env("NOTIFY_SOCKET", notify.path())
            .spawn()
            .unwrap(),
    );
    let ready = notify.next(Duration::from_secs(60)).unwrap();
    assert_eq!(ready.as_deref(), Some("READY=1"));
    // Ready means listening: the first connection is answered, no retry.
    let mut conn = h0.ns.enter(|| TcpStream::connect(addr)).unwrap().unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: dr\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    // systemd's stop: STOPPING=1, then a clean exit. (`ip netns exec` execs
    // dr-ctl: the child is dr-ctl itself.)
    kill(Pid::from_raw(server.0.id() as i32), Signal::SIGTERM).unwrap();
    let stopping = notify.next(Duration::from_secs(30)).unwrap();
    assert_eq!(stopping.as_deref(), Some("STOPPING=1"));
    assert!(server.0.wait().unwrap().success());
}

#[test]
fn idle_clients_cannot_hold_the_endpoint() {
    require_root();
    let mut c = Cluster::new("drmetidle", 1, &dr_ctl_path()).unwrap();
    c.up_all(1).unwrap();
    let h0 = &c.hosts[0];
    let addr = "127.0.0.1:19465";
    let _server = Server::start(h0, addr);
    // Every connection slot taken by a client that never sends a request:
    // the header read timeout frees them, and a real scrape gets through.
    let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS + 4)
        .map(|_| connect(h0, addr))
        .collect();
    let (head, body) = request(h0, addr, "GET /metrics HTTP/1.1");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("dr_datapath_up 1"), "{body}");
    drop(idle);
}

#[test]
fn per_peer_series_are_bounded() {
    require_root();
    let mut c = Cluster::new("drmetpeers", 3, &dr_ctl_path()).unwrap();
    c.up_all(1).unwrap();
    let h0 = &c.hosts[0];
    let m = parse_metrics(&h0.dr(&["metrics", "--peer-series", "1"]).unwrap());
    assert_eq!(get(&m, "dr_peers"), Some(2.0));
    let peer_series = m
        .iter()
        .filter(|(s, _)| s.starts_with("dr_peer_packets_total{"))
        .count();
    assert_eq!(peer_series, 2, "one peer, both directions: {m:?}");
    assert_eq!(get(&m, "dr_peer_series_omitted"), Some(1.0));
    let m = parse_metrics(&h0.dr(&["metrics", "--peer-series", "0"]).unwrap());
    assert!(!m.iter().any(|(s, _)| s.starts_with("dr_peer_bytes_total")));
    assert_eq!(get(&m, "dr_peer_series_omitted"), Some(2.0));
}
