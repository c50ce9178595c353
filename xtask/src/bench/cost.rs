//! What forwarding costs the host, not how fast it goes: every workload runs
//! at a fixed offered load (below every mode's ceiling here), on one CPU
//! with its sender at real-time priority, and the machine's busy CPU time
//! over the run (wall time minus measured idle time, see `CpuSample`) is
//! divided by what it moved. The same workloads without forwarding give the
//! floor: between two containers on one bridge (on the wire-like segment,
//! whose switch cuts and checksums every frame a mode sends across, the
//! bridge's ports do the same), for the NAT workloads
//! (whose server is behind a router both modes cross) from the host's own
//! process to the same external server, and for the published port the
//! host's own process answering on its address; each mode's overhead is its
//! cost above the floor. All setups of a segment are up at once and each
//! workload runs on them back to back, in blocks of short runs (see
//! `Bench::cost_round`). Both kinds of segment: wire-like (no GSO/TSO, as
//! now) and offloaded (veth defaults, like a NIC doing GRO/TSO). With dr,
//! the kernel's BPF run-time statistics, in runs of their own, give each
//! program's ns per run on each workload's path.
use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use dr_tests::{
    cluster::EXTERNAL_ADDR,
    load::{self, CpuSample, Server},
    netns::Netns,
    Cluster, Host,
};
use serde_json::Value;

use super::{fmt_num, median, spread, Bench, Mode, Row, Sample, Segment, SEGMENTS};

/// A workload at a fixed offered load: at most about half of the one CPU
/// it runs on in the most expensive setup (on the slowest VM seen here,
/// where the recipe's UDP to a peer cost 9 µs a packet and could not
/// sustain twice these loads), and high enough that the
/// machine's background work (about 20 ms of CPU a second, from 6 to 60 ms
/// in a given second: DAMON's kdamond and the VM's agent) and the pacing's
/// wakeups stay small per unit.
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
    /// published port: the kernel's DNAT and conntrack both ways with the
    /// recipe, dr's own translation with dr.
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
            Self::UdpPeer => 40_000,
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
                let srv = Server::udp_echo(e.nat, (e.nat_addr, 0).into())?;
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
                let _srv = Server::udp_echo(e.published, e.published_server)?;
                load::udp_rr_paced(e.nat, e.published_target, rate, d)? as f64
            }
        })
    }
}

/// The port the published-port workload's server listens on, and the host
/// port it is published on.
const PUBLISHED_PORT: u16 = 5353;

/// A cost workload's name in the results and for `--workload`:
/// `segment: workload`.
fn workload_key(segment: Segment, workload: Workload) -> String {
    format!("{}: {}", segment.name(), workload.name())
}

/// Every cost workload's `segment: workload` name, as `--workload` matches it.
pub(super) fn workload_names() -> Vec<String> {
    SEGMENTS
        .into_iter()
        .flat_map(|s| Workload::ALL.map(|w| workload_key(s, w)))
        .collect()
}

/// A setup measured: no forwarding (the floor) or one of the modes.
#[derive(Clone, Copy)]
enum Setup {
    Floor,
    Forwarding(Mode),
}

impl Setup {
    const ALL: [Self; 4] = [
        Setup::Floor,
        Setup::Forwarding(Mode::Recipe),
        Setup::Forwarding(Mode::Tc),
        Setup::Forwarding(Mode::Xdp),
    ];

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
    /// published port (Docker's DNAT on h0's uplink address, set up with
    /// the rig); in the floor, h0's own process on that address.
    published: &'a Netns,
    published_server: SocketAddr,
    /// Where the external server sends to: h0's uplink address.
    published_target: SocketAddr,
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

/// One setup's cluster, kept up through a round so every workload runs on
/// all setups back to back.
struct Rig {
    setup: Setup,
    cluster: Cluster,
    /// dr's programs on both hosts (empty without dr).
    progs: Vec<(String, u64)>,
}

impl Rig {
    fn ends(&self) -> Result<Ends<'_>> {
        let c = &self.cluster;
        let ext = c.external.as_ref().context("external")?;
        let (h0, h1) = (&c.hosts[0], &c.hosts[1]);
        let published_target = (h0.uplink_addr, PUBLISHED_PORT).into();
        Ok(match self.setup {
            Setup::Floor => Ends {
                client: &h0.containers[0].ns,
                client2: &h0.ns,
                server: &h0.containers[2].ns,
                server_addr: h0.containers[2].addr,
                nat: ext,
                nat_addr: EXTERNAL_ADDR,
                published: &h0.ns,
                published_server: published_target,
                published_target,
            },
            Setup::Forwarding(_) => Ends {
                client: &h0.containers[0].ns,
                client2: &h0.containers[1].ns,
                server: &h1.containers[0].ns,
                server_addr: h1.containers[0].addr,
                nat: ext,
                nat_addr: EXTERNAL_ADDR,
                published: &h0.containers[2].ns,
                published_server: (h0.containers[2].addr, PUBLISHED_PORT).into(),
                published_target,
            },
        })
    }

    /// Runs `workload` for `d` on one CPU (see `cost_round`) and returns
    /// the machine's busy CPU seconds and what it moved. A run that moved
    /// less than 90% of the offered load measured something else than the
    /// cost of the load it names, and is run again (said on stderr): one
    /// such run is a stall of the VM (seen here once in a 30-minute bench),
    /// while a limit on the way (a rate limiter, a ceiling) fails every
    /// run, and after [`SHORT_RUNS`] of them the bench fails.
    fn run(&self, workload: Workload, d: Duration) -> Result<(f64, f64)> {
        let ends = self.ends()?;
        let offered = workload.offered(d);
        let mut short = Vec::new();
        while short.len() < SHORT_RUNS {
            let cpu0 = CpuSample::now()?;
            let done = load::on_cpu(0, || workload.run(&ends, d))??;
            let cpu_secs = CpuSample::now()?.busy_since(&cpu0);
            if done >= 0.9 * offered {
                return Ok((cpu_secs, done));
            }
            eprintln!(
                "  cost     {:<14} {}: moved {done:.3} of {offered:.3} offered, run again",
                self.setup.name(),
                workload.name()
            );
            short.push(format!("{done:.3}"));
        }
        anyhow::bail!(
            "{}: moved {} of {offered:.3} offered, {SHORT_RUNS} runs in a row",
            workload.name(),
            short.join(", then ")
        )
    }
}

/// Runs in a row that move less than 90% of their load before a cost
/// workload fails.
const SHORT_RUNS: usize = 3;

impl Bench {
    /// Each segment's setups are all built first; then each workload runs on
    /// every setup back to back, in blocks (see `COST_RUN`), each block
    /// starting at the next setup, so a floor and the overheads above it
    /// are measured seconds apart and drift hits all setups alike. Each run
    /// keeps its client, server and the packets they send on one CPU, its
    /// sender at real-time priority (see `load::paced`): left to the
    /// scheduler, a paced sender and its receiver on different CPUs could
    /// wake each other with an interrupt per burst or per packet as timing
    /// had it, an expensive exit on a VM. The kernel's BPF run-time
    /// statistics, which cost two clock reads per program run, are on only
    /// for a separate run that measures them.
    pub(super) fn cost_round(&mut self, round: usize) -> Result<()> {
        for segment in SEGMENTS {
            let runs = |s: &Setup| match s {
                Setup::Forwarding(mode) => segment.runs(*mode),
                Setup::Floor => true,
            };
            let chosen = |w: &Workload| {
                self.cost_workload
                    .as_ref()
                    .is_none_or(|only| workload_key(segment, *w).contains(only.as_str()))
            };
            let workloads: Vec<Workload> = Workload::ALL.into_iter().filter(chosen).collect();
            if workloads.is_empty() {
                continue;
            }
            let mut rigs = Vec::new();
            for setup in Setup::ALL.into_iter().filter(runs) {
                let rig = self
                    .rig(segment, setup)
                    .with_context(|| format!("cost: {} on {}", setup.name(), segment.name()))?;
                rigs.push(rig);
            }
            for (k, workload) in workloads.into_iter().enumerate() {
                let key = workload_key(segment, workload);
                for block in 0..self.cost_blocks {
                    let mut order: Vec<&Rig> = rigs.iter().collect();
                    order.rotate_left((round + k + block) % rigs.len());
                    for rig in order {
                        let setup = rig.setup.name();
                        let (cpu_secs, done) = rig
                            .run(workload, COST_RUN)
                            .with_context(|| format!("cost: {setup} on {}", segment.name()))?;
                        let cost = cpu_secs * workload.per_unit() / done;
                        self.record("cost", setup, round, &key, workload.unit(), cost);
                    }
                }
                let _stats = BpfStats::enable()?;
                for rig in rigs.iter().filter(|r| !r.progs.is_empty()) {
                    let before = prog_stats(&rig.progs)?;
                    rig.run(workload, BPF_STATS_RUN)?;
                    for (prog, (runs1, ns1)) in prog_stats(&rig.progs)? {
                        let (runs0, ns0) = before[&prog];
                        if runs1 - runs0 >= 100 {
                            let ns = (ns1 - ns0) as f64 / (runs1 - runs0) as f64;
                            let key = format!("{key}: {prog}");
                            self.record("bpf", rig.setup.name(), round, &key, "ns/run", ns);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn rig(&self, segment: Segment, setup: Setup) -> Result<Rig> {
        let mut c = self.cluster_on(segment)?;
        match setup {
            Setup::Floor => {
                c.bare_all(3)?;
                // The floor's containers share a bridge, not the segment:
                // on the wire-like one, its ports cut and checksum what
                // they send as the switch's do for every mode.
                if segment == Segment::Wire {
                    c.emulate_wire_to_containers()?;
                }
            }
            Setup::Forwarding(mode) => mode.set_up(&mut c, 3)?,
        }
        // Errors for the ICMP error path come back at the offered rate.
        c.external.as_ref().context("external")?.exec(
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
        if let Setup::Forwarding(mode) = setup {
            let h0 = &c.hosts[0];
            let server = (h0.containers[2].addr, PUBLISHED_PORT).into();
            h0.publish("udp", PUBLISHED_PORT, server)?;
            if mode != Mode::Recipe {
                // dr learns the port, as its timer would, and translates it.
                h0.dr(&["sync"])?;
            }
        }
        let progs = match setup {
            Setup::Forwarding(Mode::Tc | Mode::Xdp) => {
                let mut p = programs("h0", &c.hosts[0])?;
                p.extend(programs("h1", &c.hosts[1])?);
                p
            }
            _ => Vec::new(),
        };
        Ok(Rig {
            setup,
            cluster: c,
            progs,
        })
    }
}

/// How long one cost run lasts. The same run's cost varies by 20-30% from
/// one second to the next here (about 1 run in 5 costs a third more, and the
/// other CPU's background work comes and goes), so a round runs each
/// workload on every setup in several short blocks and the tables take
/// medians over all of them.
pub(super) const COST_RUN: Duration = Duration::from_secs(1);

/// How long the run with BPF statistics on lasts: long enough for
/// thousands of program runs at every workload's rate.
const BPF_STATS_RUN: Duration = Duration::from_secs(1);

/// The cost tables: per segment and workload, each setup's cost, each
/// mode's overhead above the floor and the ratio of dr's overhead to the
/// recipe's; then the per-program BPF run times.
pub(super) fn markdown(rows: &[Row], samples: &[Sample]) -> String {
    let mut md = String::new();
    let find = |g: &str, w: &str, m: &str| rows.iter().find(|r| r.0 == g && r.1 == w && r.3 == m);
    let mut workloads: Vec<&str> = rows
        .iter()
        .filter(|r| r.0 == "cost")
        .map(|r| r.1.as_str())
        .collect();
    workloads.dedup();
    if !workloads.is_empty() {
        let _ = writeln!(md, "\n## Cost at a fixed offered load\n\nMachine CPU per unit moved, median [min - max] over every 1 s run (all rounds and blocks); overhead = cost above the floor, the same workload without forwarding: between two containers on one bridge (on the wire-like segment with ports that cut and checksum frames as the segment's switch does), for the NAT workloads from the host's own process to the same external server (the path beyond the host is the same), and for the published port the host's own process answering on its address; the ratio columns are dr's overhead over the recipe's (below 1 favours dr): of the medians, and paired, the median [min - max] of each round's ratio (from each setup's median in that round; a round runs each workload on all setups back to back, in blocks).\n\n| workload | unit | floor | recipe | dr-tc | dr-xdp | overhead recipe | overhead dr-tc | overhead dr-xdp | dr-tc / recipe | dr-xdp / recipe | dr-tc / recipe, paired | dr-xdp / recipe, paired |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|");
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
            "| {w} | {unit} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell("floor"),
            cell("recipe"),
            cell("dr-tc"),
            cell("dr-xdp"),
            shown(overhead("recipe")),
            shown(overhead("dr-tc")),
            shown(overhead("dr-xdp")),
            ratio("dr-tc"),
            ratio("dr-xdp"),
            paired_ratio(samples, w, "dr-tc"),
            paired_ratio(samples, w, "dr-xdp"),
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

/// `mode`'s overhead over the recipe's in each round, each above that
/// round's floor (each setup's median over the round's blocks): median
/// [min - max] over the rounds, with how many there were when a round's
/// recipe overhead was not above its floor (no ratio).
fn paired_ratio(samples: &[Sample], workload: &str, mode: &str) -> String {
    let mut rounds: BTreeMap<usize, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    for s in samples
        .iter()
        .filter(|s| s.group == "cost" && s.workload == workload)
    {
        let setups = rounds.entry(s.round).or_default();
        setups.entry(&s.mode).or_default().push(s.value);
    }
    let (mut ratios, mut skipped) = (Vec::new(), 0);
    for mut setups in rounds.into_values() {
        let mut cost = |setup: &str| setups.get_mut(setup).map(|v| median(v));
        let (Some(floor), Some(recipe), Some(dr)) = (cost("floor"), cost("recipe"), cost(mode))
        else {
            continue;
        };
        if recipe > floor {
            ratios.push((dr - floor) / (recipe - floor));
        } else {
            skipped += 1;
        }
    }
    if ratios.is_empty() {
        return "-".into();
    }
    let lo = ratios.iter().cloned().fold(f64::MAX, f64::min);
    let hi = ratios.iter().cloned().fold(f64::MIN, f64::max);
    let skipped = match skipped {
        0 => String::new(),
        n => format!(
            ", {n} of {} rounds with the recipe at its floor",
            n + ratios.len()
        ),
    };
    format!("{:.2}x [{lo:.2} - {hi:.2}]{skipped}", median(&mut ratios))
}
