//! The NAT soak: `cargo xtask soak` (CI runs it for 10 minutes). Two hosts
//! with SNAT on, two containers each, talk to one external server for
//! `DR_SOAK_SECS` seconds (default 600) with:
//! - long flows: per container two UDP flows and one TCP connection, each
//!   pausing up to 3 s between exchanges (under their timeouts);
//! - short flows: one-shot UDP queries from fresh ports, fast enough to
//!   exhaust the 256-port range, and short TCP connections closed by the
//!   client or by the server in turn;
//! - short timeouts, so flows expire all along, and `nat gc` every 2 s.
//!
//! Every reply names the flow it answers and the source the server saw.
//! Checked: no reply reaches another flow (another container) than the one
//! it answers, no long flow is seen from another port during its life
//! (re-ported), long flows lose nothing, table pressure was reached, and
//! after the timeouts both tables are empty.
use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use dr_common::map_names;
use dr_tests::{cluster::EXTERNAL_ADDR, dr_ctl_path, netns::Netns, require_root, Cluster, Host};

const UDP_PORT: u16 = 7001;
const TCP_PORT: u16 = 7002;
const UP: [&str; 14] = [
    "--nat-ports",
    "20000-20255",
    "--nat-table-size",
    "1024",
    "--nat-timeout",
    "udp=4",
    "--nat-timeout",
    "tcp-established=20",
    "--nat-timeout",
    "tcp-closed=2",
    "--nat-timeout",
    "tcp-time-wait=2",
    "--nat-timeout",
    "tcp-closing=4",
];
/// The longest timeout above, which every flow has left once traffic stops.
const LONGEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Everything the clients saw, summed over threads.
#[derive(Default)]
struct Tally {
    misdelivered: AtomicU64,
    re_ported: AtomicU64,
    long_exchanges: AtomicU64,
    long_lost: AtomicU64,
    short_answered: AtomicU64,
    short_refused: AtomicU64,
}

fn pause(rng: &mut u64, max_ms: u64) -> Duration {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    Duration::from_millis(*rng % max_ms)
}

/// The server's answer: the request, then who sent it as the server saw it.
fn answer(request: &str, from: SocketAddr) -> String {
    format!("{request}|{from}")
}

/// Splits an answer into the request it answers and the source seen.
fn parse_answer(line: &str) -> Result<(&str, SocketAddr)> {
    let (request, seen) = line.trim_end().rsplit_once('|').context("no source")?;
    Ok((request, seen.parse()?))
}

fn serve_udp(sock: UdpSocket, stop: Arc<AtomicBool>) -> Result<()> {
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = [0u8; 1500];
    while !stop.load(Relaxed) {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let request = String::from_utf8_lossy(&buf[..n]);
        sock.send_to(answer(&request, from).as_bytes(), from)?;
    }
    Ok(())
}

fn serve_tcp(listener: TcpListener, stop: Arc<AtomicBool>) -> Result<()> {
    listener.set_nonblocking(true)?;
    while !stop.load(Relaxed) {
        match listener.accept() {
            Ok((conn, from)) => {
                thread::spawn(move || serve_connection(conn, from));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(2))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Answers each line; a line ending in "bye" makes the server close first.
fn serve_connection(conn: TcpStream, from: SocketAddr) -> Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(LONGEST_TIMEOUT))?;
    let mut writer = conn.try_clone()?;
    for line in BufReader::new(conn).lines() {
        let line = line?;
        writeln!(writer, "{}", answer(&line, from))?;
        if line.ends_with("bye") {
            break;
        }
    }
    Ok(())
}

/// One client container's workload until `stop`.
struct Client<'a> {
    name: &'a str,
    ns: &'a Netns,
    server: Ipv4Addr,
    tally: &'a Tally,
    stop: &'a AtomicBool,
}

impl Client<'_> {
    fn udp_socket(&self) -> Result<UdpSocket> {
        let sock = self
            .ns
            .enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))??;
        sock.set_read_timeout(Some(Duration::from_millis(1500)))?;
        Ok(sock)
    }

    /// Checks that `reply` answers `request`; returns the source seen.
    fn check(&self, request: &str, reply: &str) -> Result<SocketAddr> {
        let (answered, seen) = parse_answer(reply)?;
        if answered != request {
            self.tally.misdelivered.fetch_add(1, Relaxed);
            bail!(
                "{}: sent {request:?}, got the answer to {answered:?}",
                self.name
            );
        }
        Ok(seen)
    }

    /// A UDP flow that lives for the whole soak: every exchange must be
    /// answered and seen from the same translated port.
    fn long_udp(&self, flow: usize) -> Result<()> {
        let sock = self.udp_socket()?;
        let target = SocketAddr::from((self.server, UDP_PORT));
        let (mut first_seen, mut rng) = (None, 0x9e37_79b9 + flow as u64);
        let mut seq = 0u64;
        while !self.stop.load(Relaxed) {
            seq += 1;
            let request = format!("{}-udp{flow}-{seq}", self.name);
            let mut buf = [0u8; 1500];
            // A loaded machine may delay an answer: three tries, same flow.
            let reply = (0..3).find_map(|_| {
                sock.send_to(request.as_bytes(), target).ok()?;
                loop {
                    let n = sock.recv(&mut buf).ok()?;
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    // A late answer to this flow's previous request is fine.
                    match parse_answer(&text) {
                        Ok((answered, _))
                            if answered != request
                                && answered.starts_with(&format!("{}-udp{flow}-", self.name)) =>
                        {
                            continue
                        }
                        _ => return Some(text),
                    }
                }
            });
            let Some(reply) = reply else {
                self.tally.long_lost.fetch_add(1, Relaxed);
                bail!("{}: long UDP flow {flow} got no answer to {seq}", self.name);
            };
            let seen = self.check(&request, &reply)?;
            if *first_seen.get_or_insert(seen) != seen {
                self.tally.re_ported.fetch_add(1, Relaxed);
                bail!(
                    "{}: long UDP flow {flow} seen from {seen}, first from {first_seen:?}",
                    self.name
                );
            }
            self.tally.long_exchanges.fetch_add(1, Relaxed);
            thread::sleep(pause(&mut rng, 3000));
        }
        Ok(())
    }

    /// A TCP connection for the whole soak, closed by the client at the end.
    fn long_tcp(&self) -> Result<()> {
        let conn = self.connect()?;
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut writer = conn;
        let (mut first_seen, mut rng, mut seq) = (None, 0x5eed_u64, 0u64);
        while !self.stop.load(Relaxed) {
            seq += 1;
            let request = format!("{}-tcp-{seq}", self.name);
            writeln!(writer, "{request}")?;
            let mut reply = String::new();
            if reader.read_line(&mut reply).unwrap_or(0) == 0 {
                self.tally.long_lost.fetch_add(1, Relaxed);
                bail!("{}: long TCP connection broke at {seq}", self.name);
            }
            let seen = self.check(&request, &reply)?;
            if *first_seen.get_or_insert(seen) != seen {
                self.tally.re_ported.fetch_add(1, Relaxed);
                bail!("{}: long TCP connection seen from {seen}", self.name);
            }
            self.tally.long_exchanges.fetch_add(1, Relaxed);
            thread::sleep(pause(&mut rng, 3000));
        }
        Ok(())
    }

    fn connect(&self) -> Result<TcpStream> {
        let target = SocketAddr::from((self.server, TCP_PORT));
        let conn = self
            .ns
            .enter(|| TcpStream::connect_timeout(&target, Duration::from_secs(3)))??;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(conn)
    }

    /// Short flows until `stop`: a UDP query from a fresh port, then a
    /// short TCP connection, closed by the client or (every other one) by
    /// the server. With the port range exhausted a flow may be refused;
    /// an answer that comes must be this flow's.
    fn short_flows(&self) -> Result<()> {
        let target = SocketAddr::from((self.server, UDP_PORT));
        let mut n = 0u64;
        while !self.stop.load(Relaxed) {
            n += 1;
            let sock = self.udp_socket()?;
            let request = format!("{}-short{n}", self.name);
            sock.send_to(request.as_bytes(), target)?;
            let mut buf = [0u8; 1500];
            match sock.recv(&mut buf) {
                Ok(len) => {
                    self.check(&request, &String::from_utf8_lossy(&buf[..len]))?;
                    self.tally.short_answered.fetch_add(1, Relaxed);
                }
                Err(_) => {
                    self.tally.short_refused.fetch_add(1, Relaxed);
                }
            }
            if n.is_multiple_of(8) {
                self.short_tcp(n)?;
            }
        }
        Ok(())
    }

    fn short_tcp(&self, n: u64) -> Result<()> {
        let Ok(conn) = self.connect() else {
            self.tally.short_refused.fetch_add(1, Relaxed);
            return Ok(());
        };
        let server_closes = n.is_multiple_of(16);
        let request = format!(
            "{}-shorttcp{n}{}",
            self.name,
            if server_closes { "-bye" } else { "" }
        );
        let mut writer = conn.try_clone()?;
        writeln!(writer, "{request}")?;
        let mut reader = BufReader::new(conn);
        let mut reply = String::new();
        if reader.read_line(&mut reply).unwrap_or(0) == 0 {
            self.tally.short_refused.fetch_add(1, Relaxed);
            return Ok(());
        }
        self.check(&request, &reply)?;
        self.tally.short_answered.fetch_add(1, Relaxed);
        if !server_closes {
            writer.shutdown(std::net::Shutdown::Both)?;
        } else {
            // Wait for the server's FIN, then close our side.
            let mut rest = String::new();
            let _ = reader.read_line(&mut rest);
        }
        Ok(())
    }
}

/// Entries in one of the host's pinned NAT maps, live or not, as bpftool sees them.
fn map_entries(host: &Host, map: &str) -> Result<usize> {
    let pin = format!("/sys/fs/bpf/dr/netns-{}/{map}", host.ns.inode()?);
    let out = dr_tests::netns::run("bpftool", &["-j", "map", "dump", "pinned", &pin])?;
    let entries: serde_json::Value = serde_json::from_str(&out)?;
    entries
        .as_array()
        .map(Vec::len)
        .context("bpftool: not a list")
}

#[test]
#[ignore = "a 10-minute soak: run by `cargo xtask soak`"]
fn nat_soak() {
    require_root();
    let secs: u64 = std::env::var("DR_SOAK_SECS")
        .ok()
        .map(|s| s.parse().expect("DR_SOAK_SECS: seconds"))
        .unwrap_or(600);
    let c = Cluster::with_external("drsoak", &UP, &dr_ctl_path()).expect("cluster");
    let ext = c.external.as_ref().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let udp = ext
        .enter(|| UdpSocket::bind((EXTERNAL_ADDR, UDP_PORT)))
        .unwrap()
        .unwrap();
    let tcp = ext
        .enter(|| TcpListener::bind((EXTERNAL_ADDR, TCP_PORT)))
        .unwrap()
        .unwrap();
    let servers = [
        thread::spawn({
            let stop = stop.clone();
            move || serve_udp(udp, stop)
        }),
        thread::spawn({
            let stop = stop.clone();
            move || serve_tcp(tcp, stop)
        }),
    ];

    let tally = Tally::default();
    let mut gc_runs = 0;
    let results: Vec<Result<()>> = thread::scope(|scope| {
        let mut workers = Vec::new();
        for host in &c.hosts {
            for container in &host.containers {
                let client = Client {
                    name: &container.ns.name,
                    ns: &container.ns,
                    server: EXTERNAL_ADDR,
                    tally: &tally,
                    stop: &stop,
                };
                let client = Arc::new(client);
                for task in 0..4 {
                    let client = client.clone();
                    workers.push(scope.spawn(move || match task {
                        0 | 1 => client.long_udp(task),
                        2 => client.long_tcp(),
                        _ => client.short_flows(),
                    }));
                }
            }
        }
        // `nat gc` every 2 s on both hosts while the load runs.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(secs)
            && !workers.iter().any(|w| w.is_finished())
        {
            for host in &c.hosts {
                host.dr(&["nat", "gc"]).expect("nat gc");
            }
            gc_runs += 1;
            thread::sleep(Duration::from_secs(2));
        }
        stop.store(true, Relaxed);
        workers
            .into_iter()
            .map(|w| w.join().expect("worker panicked"))
            .collect()
    });
    for server in servers {
        server.join().expect("server panicked").expect("server");
    }
    let t = &tally;
    eprintln!(
        "soak {secs} s: long exchanges {}, short answered {}, short refused {}, gc runs {gc_runs}",
        t.long_exchanges.load(Relaxed),
        t.short_answered.load(Relaxed),
        t.short_refused.load(Relaxed),
    );
    for r in &results {
        if let Err(e) = r {
            eprintln!("client: {e:#}");
        }
    }
    assert_eq!(
        t.misdelivered.load(Relaxed),
        0,
        "replies reached the wrong flow"
    );
    assert_eq!(t.re_ported.load(Relaxed), 0, "live flows changed port");
    assert_eq!(t.long_lost.load(Relaxed), 0, "long flows lost answers");
    assert!(results.iter().all(Result::is_ok), "a client failed (above)");
    assert!(t.long_exchanges.load(Relaxed) > 0 && t.short_answered.load(Relaxed) > 0);

    let mut pressure = 0;
    for host in &c.hosts {
        for counter in [
            "drop_nat_ports_exhausted",
            "drop_nat_table_full",
            "nat_evicted",
        ] {
            pressure += host.counter(counter).unwrap();
        }
    }
    assert!(
        pressure > 0,
        "the soak never filled the port range or the table"
    );

    // Every flow has ended: after the longest timeout and a gc, nothing is left.
    thread::sleep(LONGEST_TIMEOUT + Duration::from_secs(3));
    for host in &c.hosts {
        host.dr(&["nat", "gc"]).unwrap();
        assert_eq!(host.nat_list().unwrap(), Vec::<serde_json::Value>::new());
        for map in [map_names::NAT_FLOWS, map_names::NAT_REVERSE] {
            let left = map_entries(host, map).unwrap();
            assert_eq!(left, 0, "{left} entries left in {map} on {}", host.ns.name);
        }
    }
}
