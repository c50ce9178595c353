//! What forwarding costs the host, not how fast it goes: every workload runs
//! at a fixed offered load (below every mode's ceiling here) and the
//! machine's busy CPU time over the run (wall time minus measured idle
//! time, see `CpuSample`) is divided by what it
//! moved. The same workloads without forwarding give the floor: between
//! two containers on one bridge, for the NAT workloads (whose server is
//! behind a router both modes cross) from the host's own process to the
//! same external server, and for the published port the host's own process
//! answering on its address; each mode's overhead is its cost above the
//! floor. Both kinds of segment: wire-like (no GSO/TSO, as now) and
//! offloaded (veth defaults, like a NIC doing GRO/TSO). With dr, the
//! kernel's BPF run-time statistics give each program's ns per run on each
//! workload's path.
use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use dr_tests::{
    cluster::EXTERNAL_ADDR,
    load::{self, CpuSample, Server},
    netns::Netns,
    Host,
};
use serde_json::Value;

use super::{fmt_num, spread, Bench, Mode, Row, Segment, SEGMENTS};

/// A workload at a fixed offered load: a fifth or less of the lowest rate
/// any mode reached here, and high enough that the machine's background
/// work (about 20 ms of CPU a second) and the pacing's wakeups stay small
/// per unit.
#[derive(Clone, Copy)]
enum Workload {
    /// Small UDP datagrams to a container on the peer host.
    UdpPeer,
    /// Bulk TCP to a container on the peer host.
    TcpPeer,
    /// Connect-request-close to a container on the peer host.
    CrrPeer,
    /// UDP request/response with the external server, through SNAT.
    UdpRrNat,
    /// Connect-request-close to the external server, through SNAT.
    CrrNat,
    /// UDP to a closed port of the external server: ICMP errors back
    /// through SNAT.
    IcmpErrorsNat,
    /// UDP request/response from the external server to a container's
    /// published port: the kernel's DNAT and conntrack both ways, dr's
    /// programs only passing packets on.
    UdpRrPublished,
}

impl Workload {
    const ALL: [Self; 7] = [
        Self::UdpPeer,
        Self::TcpPeer,
        Self::CrrPeer,
        Self::UdpRrNat,
        Self::CrrNat,
        Self::IcmpErrorsNat,
        Self::UdpRrPublished,
    ];

    /// Units a second (bits for bulk TCP).
    fn rate(self) -> u64 {
        match self {
            Self::UdpPeer => 30_000,
            Self::TcpPeer => 1_000_000_000,
            Self::CrrPeer | Self::CrrNat => 4_000,
            Self::UdpRrNat | Self::UdpRrPublished | Self::IcmpErrorsNat => 20_000,
        }
    }

    fn name(self) -> String {
        let k = self.rate() / 1000;
        match self {
            Self::UdpPeer => format!("udp_peer_{k}k_pps"),
            Self::TcpPeer => format!("tcp_peer_{}_gbit", k / 1_000_000),
            Self::CrrPeer => format!("tcp_crr_peer_{k}k_per_s"),
            Self::UdpRrNat => format!("udp_rr_nat_{k}k_per_s"),
            Self::CrrNat => format!("tcp_crr_nat_{k}k_per_s"),
            Self::IcmpErrorsNat => format!("icmp_errors_nat_{k}k_per_s"),
            Self::UdpRrPublished => format!("udp_rr_published_{k}k_per_s"),
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Self::UdpPeer => "us CPU/pkt",
            Self::TcpPeer => "CPU-s/GB",
            Self::CrrPeer | Self::CrrNat => "us CPU/conn",
            Self::UdpRrNat | Self::UdpRrPublished => "us CPU/exchange",
            Self::IcmpErrorsNat => "us CPU/error",
        }
    }

    /// What `d` at the offered load moves, in the cost's unit.
    fn offered(self, d: Duration) -> f64 {
        let units = self.rate() as f64 * d.as_secs_f64();
        match self {
            Self::TcpPeer => units / 8e9,
            _ => units,
        }
    }

    /// CPU seconds to the unit's CPU time (seconds per GB, else us).
    fn per_unit(self) -> f64 {
        match self {
            Self::TcpPeer => 1.0,
            _ => 1e6,
        }
    }

    /// Runs the workload; returns what it moved in its cost's unit
    /// (packets, GB, connections, exchanges, errors).
    fn run(self, e: &Ends, d: Duration) -> Result<f64> {
        let rate = self.rate();
        Ok(match self {
            Self::UdpPeer => load::udp_paced(e.client, e.server, e.server_addr, rate, d)? as f64,
            Self::TcpPeer => load::iperf3_paced(e.client, e.server, e.server_addr, rate, d)? / 1e9,
            Self::CrrPeer => {
                let srv = Server::tcp_answer_once(e.server, e.server_addr)?;
                load::tcp_crr_paced(e.client, srv.addr, rate, d)? as f64
            }
            Self::UdpRrNat => {
                let srv = Server::udp_echo(e.nat, e.nat_addr)?;
                load::udp_rr_paced(e.client2, srv.addr, rate, d)? as f64
            }
            Self::CrrNat => {
                let srv = Server::tcp_answer_once(e.nat, e.nat_addr)?;
                load::tcp_crr_paced(e.client2, srv.addr, rate, d)? as f64
            }
            Self::IcmpErrorsNat => {
                // A port nobody listens on: each datagram comes back as an error.
                let closed = SocketAddr::from((e.nat_addr, 9));
                load::icmp_errors_paced(e.client2, closed, rate, d)? as f64
            }
            Self::UdpRrPublished => {
                let srv = Server::udp_echo(e.published, e.published_addr)?;
                let target = match e.publisher {
                    Some(host) => {
                        host.publish("udp", PUBLISHED_PORT, srv.addr)?;
                        SocketAddr::from((host.uplink_addr, PUBLISHED_PORT))
                    }
                    None => srv.addr,
                };
                load::udp_rr_paced(e.nat, target, rate, d)? as f64
            }
        })
    }
}

/// The host port the published-port workload's container is published on.
const PUBLISHED_PORT: u16 = 5353;

/// A setup measured: no forwarding (the floor) or one of the modes.
#[derive(Clone, Copy)]
enum Setup {
    Floor,
    Forwarding(Mode),
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Floor => "floor",
            Setup::Forwarding(m) => m.name(),
        }
    }
}

/// A workload's client and server ends for one setup.
struct Ends<'a> {
    client: &'a Netns,
    /// The NAT workloads' client: a second container, so they do not share
    /// a source with others; in the floor, the host itself.
    client2: &'a Netns,
    server: &'a Netns,
    server_addr: std::net::Ipv4Addr,
    /// Where NAT workloads go: the external server, behind the router.
    nat: &'a Netns,
    nat_addr: std::net::Ipv4Addr,
    /// The published-port workload's server: a container of h0 behind a
    /// published port (`publisher`, Docker's DNAT on h0's uplink address);
    /// in the floor, h0's own process on that address.
    published: &'a Netns,
    published_addr: std::net::Ipv4Addr,
    publisher: Option<&'a Host>,
}

/// One program's run count and total run time, as the kernel keeps them.
type ProgStats = BTreeMap<String, (u64, u64)>;

/// Turns the kernel's BPF run-time statistics on while alive.
struct BpfStats(String);

impl BpfStats {
    const SYSCTL: &'static str = "/proc/sys/kernel/bpf_stats_enabled";

    fn enable() -> Result<Self> {
        let before = std::fs::read_to_string(Self::SYSCTL)?;
        std::fs::write(Self::SYSCTL, "1")?;
        Ok(Self(before))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::SYSCTL, self.0.trim());
    }
}

/// dr's programs on `host` (`h0 bridge_ingress`, ...) with their ids.
fn programs(label: &str, host: &Host) -> Result<Vec<(String, u64)>> {
    let status: Value = serde_json::from_str(&host.dr(&["status", "--json"])?)?;
    let mut progs = Vec::new();
    for hook in status["hooks"].as_array().context("hooks")? {
        let name = hook["program"].as_str().context("program")?;
        let id = hook["program_id"].as_u64().context("program_id")?;
        progs.push((format!("{label} {}", name.trim_start_matches("dr_")), id));
    }
    if let Some(id) = status["port_hooks"]["program_id"].as_u64() {
        progs.push((format!("{label} port_ingress"), id));
    }
    let link: Value = serde_json::from_str(&host.ns.ip(&["-j", "link", "show", "eth0"])?)?;
    if let Some(id) = link[0]["xdp"]["prog"]["id"].as_u64() {
        progs.push((format!("{label} uplink_xdp"), id));
    }
    Ok(progs)
}

fn prog_stats(progs: &[(String, u64)]) -> Result<ProgStats> {
    let mut stats = ProgStats::new();
    for (name, id) in progs {
        let out = dr_tests::netns::run("bpftool", &["-j", "prog", "show", "id", &id.to_string()])?;
        let v: Value = serde_json::from_str(&out)?;
        let field = |f: &str| v[f].as_u64().unwrap_or(0);
        stats.insert(name.clone(), (field("run_cnt"), field("run_time_ns")));
    }
    Ok(stats)
}

impl Bench {
    /// Every setup on both segments, the setups in a rotating order.
    pub(super) fn cost_round(&mut self, round: usize) -> Result<()> {
        let _stats = BpfStats::enable()?;
        for segment in SEGMENTS {
            let mut setups = [
                Setup::Floor,
                Setup::Forwarding(Mode::Recipe),
                Setup::Forwarding(Mode::Tc),
                Setup::Forwarding(Mode::Xdp),
            ];
            setups.rotate_left(round % 4);
            let runs = |s: &Setup| match s {
                Setup::Forwarding(mode) => segment.runs(*mode),
                Setup::Floor => true,
            };
            for setup in setups.into_iter().filter(runs) {
                self.cost_setup(segment, setup, round)
                    .with_context(|| format!("cost: {} on {}", setup.name(), segment.name()))?;
            }
        }
        Ok(())
    }

    fn cost_setup(&mut self, segment: Segment, setup: Setup, round: usize) -> Result<()> {
        let mut c = self.cluster_on(segment)?;
        match setup {
            Setup::Floor => c.bare_all(3)?,
            Setup::Forwarding(mode) => mode.set_up(&mut c, 3)?,
        }
        let ext = c.external.as_ref().context("external")?;
        // Errors for the ICMP error path come back at the offered rate.
        ext.exec(
            "sysctl",
            &[
                "-q",
                "-w",
                "net.ipv4.icmp_ratelimit=0",
                "net.ipv4.icmp_msgs_per_sec=1000000",
                // The global limiter adds at most a burst per 20 ms.
                "net.ipv4.icmp_msgs_burst=1000000",
            ],
        )?;
        let (h0, h1) = (&c.hosts[0], &c.hosts[1]);
        let ends = match setup {
            Setup::Floor => Ends {
                client: &h0.containers[0].ns,
                client2: &h0.ns,
                server: &h0.containers[2].ns,
                server_addr: h0.containers[2].addr,
                nat: ext,
                nat_addr: EXTERNAL_ADDR,
                published: &h0.ns,
                published_addr: h0.uplink_addr,
                publisher: None,
            },
            Setup::Forwarding(_) => Ends {
                client: &h0.containers[0].ns,
                client2: &h0.containers[1].ns,
                server: &h1.containers[0].ns,
                server_addr: h1.containers[0].addr,
                nat: ext,
                nat_addr: EXTERNAL_ADDR,
                published: &h0.containers[2].ns,
                published_addr: h0.containers[2].addr,
                publisher: Some(h0),
            },
        };
        let progs = match setup {
            Setup::Forwarding(Mode::Tc | Mode::Xdp) => {
                let mut p = programs("h0", h0)?;
                p.extend(programs("h1", h1)?);
                p
            }
            _ => Vec::new(),
        };
        let d = self.duration.max(Duration::from_secs(2));
        let mode = setup.name();
        for workload in Workload::ALL {
            let before = prog_stats(&progs)?;
            let cpu0 = CpuSample::now()?;
            let done = workload.run(&ends, d)?;
            let cpu_secs = CpuSample::now()?.busy_since(&cpu0);
            let after = prog_stats(&progs)?;
            let cost = cpu_secs * workload.per_unit() / done.max(1e-9);
            let name = workload.name();
            // Less than offered means a limit on the way (a rate limiter,
            // a ceiling), not the cost of the load it names.
            let offered = workload.offered(d);
            if done < 0.9 * offered {
                anyhow::bail!("{name}: moved {done:.3} of {offered:.3} offered");
            }
            let key = format!("{}: {name}", segment.name());
            self.record("cost", mode, round, &key, workload.unit(), cost);
            for (prog, (runs1, ns1)) in &after {
                let (runs0, ns0) = before[prog];
                if runs1 - runs0 >= 100 {
                    let ns = (ns1 - ns0) as f64 / (runs1 - runs0) as f64;
                    let key = format!("{}: {name}: {prog}", segment.name());
                    self.record("bpf", mode, round, &key, "ns/run", ns);
                }
            }
        }
        Ok(())
    }
}

/// The cost tables: per segment and workload, each setup's cost, each
/// mode's overhead above the floor and the ratio of dr's overhead to the
/// recipe's; then the per-program BPF run times.
pub(super) fn markdown(rows: &[Row]) -> String {
    let mut md = String::new();
    let find = |g: &str, w: &str, m: &str| rows.iter().find(|r| r.0 == g && r.1 == w && r.3 == m);
    let mut workloads: Vec<&str> = rows
        .iter()
        .filter(|r| r.0 == "cost")
        .map(|r| r.1.as_str())
        .collect();
    workloads.dedup();
    if !workloads.is_empty() {
        let _ = writeln!(md, "\n## Cost at a fixed offered load\n\nMachine CPU per unit moved; overhead = cost above the floor, the same workload without forwarding: between two containers on one bridge, for the NAT workloads from the host's own process to the same external server (the path beyond the host is the same), and for the published port the host's own process answering on its address; the last two columns are dr's overhead over the recipe's (below 1 favours dr).\n\n| workload | unit | floor | recipe | dr-tc | dr-xdp | overhead recipe | overhead dr-tc | overhead dr-xdp | dr-tc / recipe | dr-xdp / recipe |\n|---|---|---|---|---|---|---|---|---|---|---|");
    }
    for w in workloads {
        let median = |m: &str| find("cost", w, m).map(|r| r.4);
        let cell = |m: &str| find("cost", w, m).map_or("-".into(), spread);
        let overhead = |m: &str| Some(median(m)? - median("floor")?);
        let shown = |v: Option<f64>| v.map_or("-".into(), fmt_num);
        let ratio = |m: &str| match (overhead(m), overhead("recipe")) {
            (Some(d), Some(r)) if r > 0.0 => format!("{:.2}x", d / r),
            _ => "-".into(),
        };
        let unit = find("cost", w, "floor").map_or("", |r| r.2.as_str());
        let _ = writeln!(
            md,
            "| {w} | {unit} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell("floor"),
            cell("recipe"),
            cell("dr-tc"),
            cell("dr-xdp"),
            shown(overhead("recipe")),
            shown(overhead("dr-tc")),
            shown(overhead("dr-xdp")),
            ratio("dr-tc"),
            ratio("dr-xdp"),
        );
    }
    let progs: Vec<&Row> = rows.iter().filter(|r| r.0 == "bpf").collect();
    if !progs.is_empty() {
        let _ = writeln!(md, "\n## BPF run time per program (kernel statistics)\n\nh0 is the sending host (its containers are the clients), h1 the peer.\n\n| segment: workload: program | mode | ns/run median [min - max] |\n|---|---|---|");
        for r in progs {
            let _ = writeln!(md, "| {} | {} | {} |", r.1, r.3, spread(r));
        }
    }
    md
}
