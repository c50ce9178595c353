//! `cargo xtask bench`: dr side by side with the recipe it replaces, on the
//! same emulated topology (two hosts, two containers each, a router and an
//! external server), every mode set up from scratch each round and the modes
//! interleaved round by round, so drift on a noisy machine hits all alike.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use dr_tests::{
    cluster::EXTERNAL_ADDR,
    etcd::{agent, wait_for, Agents, Etcd},
    load::{self, Server},
    netns::{run, unique_prefix, Netns},
    Cluster,
};
use serde_json::json;

mod cost;
mod paths;

/// Concurrent connections in the saturating workloads (two per vCPU here).
const STREAMS: usize = 4;

/// The hosts' segment in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// GSO/TSO/GRO off and complete checksums: a NIC without offloads.
    Wire,
    /// veth defaults: super-frames, as a NIC doing GRO/TSO hands the host.
    /// The XDP path needs complete checksums: it does not run here.
    Offloaded,
}

/// Both, in the order the tables list them.
const SEGMENTS: [Segment; 2] = [Segment::Wire, Segment::Offloaded];

impl Segment {
    fn name(self) -> &'static str {
        match self {
            Segment::Wire => "wire",
            Segment::Offloaded => "offloaded",
        }
    }

    /// Whether `mode` is measured here. XDP sees a veth's checksum-offloaded
    /// frames before their checksum is filled in and delivers them
    /// unfinished; on a real NIC's wire every frame is complete. So dr-xdp
    /// runs on the wire-like segment only.
    fn runs(self, mode: Mode) -> bool {
        self == Segment::Wire || mode != Mode::Xdp
    }
}

/// How a cluster forwards in one benchmark run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// Docker's direct-routing recipe: static routes, ip_forward,
    /// iptables MASQUERADE and FORWARD accepts.
    Recipe,
    /// dr, TC programs only.
    Tc,
    /// dr, TC programs plus the XDP fast path on the uplink.
    Xdp,
}

impl Mode {
    /// Sets up every host of `c` with `containers` containers to forward
    /// this way. dr's hosts then learn their containers, as
    /// `dr-sync.timer` does within 10 s on a real host.
    fn set_up(self, c: &mut Cluster, containers: usize) -> Result<()> {
        match self {
            Mode::Recipe => return c.recipe_all(containers),
            Mode::Tc => c.up_all(containers)?,
            Mode::Xdp => c.up_all_with(containers, &["--xdp"])?,
        }
        c.sync_endpoints()
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Recipe => "recipe",
            Mode::Tc => "dr-tc",
            Mode::Xdp => "dr-xdp",
        }
    }
}

pub struct Options {
    pub quick: bool,
    pub rounds: usize,
    /// Only the cost workloads (and the per-program run times).
    pub cost_only: bool,
    /// Only the cost workloads whose `segment: workload` name contains it.
    pub workload: Option<String>,
    pub results: PathBuf,
}

/// One measurement.
struct Sample {
    group: &'static str,
    mode: String,
    workload: String,
    unit: &'static str,
    round: usize,
    value: f64,
}

struct Bench {
    dr_ctl: PathBuf,
    duration: Duration,
    /// Blocks of cost runs per workload and round (see `cost::COST_RUN`).
    cost_blocks: usize,
    /// See [`Options::workload`].
    cost_workload: Option<String>,
    samples: Vec<Sample>,
}

impl Bench {
    fn record(
        &mut self,
        group: &'static str,
        mode: &str,
        round: usize,
        workload: &str,
        unit: &'static str,
        value: f64,
    ) {
        println!("  {group:<8} {mode:<14} {workload:<26} {value:>14.1} {unit}");
        self.samples.push(Sample {
            group,
            mode: mode.to_string(),
            workload: workload.to_string(),
            unit,
            round,
            value,
        });
    }

    /// A cluster on a segment that behaves like a wire (see
    /// `Cluster::emulate_wire`): what dr meets on real NICs, and what its
    /// XDP path needs.
    fn cluster(&self) -> Result<Cluster> {
        self.cluster_on(Segment::Wire)
    }

    fn cluster_on(&self, segment: Segment) -> Result<Cluster> {
        let mut c = Cluster::new("drbench", 2, &self.dr_ctl)?;
        c.add_external()?;
        if segment == Segment::Wire {
            c.emulate_wire()?;
        }
        Ok(c)
    }

    /// The cross-host and NAT workloads for one mode on one segment.
    fn modes_round(&mut self, mode: Mode, segment: Segment, round: usize) -> Result<()> {
        let mut c = self.cluster_on(segment)?;
        mode.set_up(&mut c, 2)?;
        let (h0, h1) = (&c.hosts[0], &c.hosts[1]);
        let (a, b) = (&h0.containers[0], &h1.containers[0]);
        let ext = c.external.as_ref().context("external")?;
        let d = self.duration;
        let m = mode.name();
        let results = {
            let (bps, cpu) = load::iperf3(&a.ns, &b.ns, b.addr, d)?;
            let rr = rr_one(&a.ns, &b.ns, b.addr, d)?;
            let rr_par = rr_parallel(&a.ns, &b.ns, b.addr, d)?;
            let crr = crr_parallel(&h0.containers[1].ns, &b.ns, b.addr, d)?;
            let crr_ext = crr_parallel(&a.ns, ext, EXTERNAL_ADDR, d)?;
            let rr_ext = rr_parallel(&h0.containers[1].ns, ext, EXTERNAL_ADDR, d)?;
            let udp = load::udp_rate(&a.ns, &h1.containers[1].ns, h1.containers[1].addr, d)?;
            [
                ("tcp_throughput", "Gbit/s", bps / 1e9),
                ("cpu_per_gb", "CPU-s/GB", cpu),
                ("tcp_rr_1_conn", "trans/s", rr),
                ("tcp_rr_4_conns", "trans/s", rr_par),
                ("tcp_crr_4_streams", "conn/s", crr),
                ("tcp_crr_external_nat", "conn/s", crr_ext),
                ("tcp_rr_external_nat", "trans/s", rr_ext),
                ("udp_small_rate", "pkt/s", udp),
            ]
        };
        for (w, unit, v) in results {
            let workload = format!("{}: {w}", segment.name());
            self.record("modes", m, round, &workload, unit, v);
        }
        Ok(())
    }

    /// What the emulated hardware allows: two containers on one bridge, and
    /// host to host on the segment, with no dr and no recipe.
    fn ceilings_round(&mut self, round: usize) -> Result<()> {
        let mut c = self.cluster()?;
        c.bare_all(2)?;
        let (h0, h1) = (&c.hosts[0], &c.hosts[1]);
        let d = self.duration;
        let pairs: [(&str, &Netns, &Netns, Ipv4Addr); 2] = [
            (
                "same-bridge",
                &h0.containers[0].ns,
                &h0.containers[1].ns,
                h0.containers[1].addr,
            ),
            ("host-to-host", &h0.ns, &h1.ns, h1.uplink_addr),
        ];
        for (name, from, to, addr) in pairs {
            let (bps, cpu) = load::iperf3(from, to, addr, d)?;
            let rr = rr_one(from, to, addr, d)?;
            let rr_par = rr_parallel(from, to, addr, d)?;
            let crr = crr_parallel(from, to, addr, d)?;
            let udp = load::udp_rate(from, to, addr, d)?;
            for (w, unit, v) in [
                ("tcp_throughput", "Gbit/s", bps / 1e9),
                ("cpu_per_gb", "CPU-s/GB", cpu),
                ("tcp_rr_1_conn", "trans/s", rr),
                ("tcp_rr_4_conns", "trans/s", rr_par),
                ("tcp_crr_4_streams", "conn/s", crr),
                ("udp_small_rate", "pkt/s", udp),
            ] {
                self.record("ceiling", name, round, w, unit, v);
            }
        }
        Ok(())
    }

    /// Forwarding with 1, 1,000 and 100,000 peer subnets in the map.
    fn scale_round(&mut self, peers: usize, round: usize) -> Result<()> {
        let mut c = self.cluster()?;
        // Room for exactly the peers of the round (1 is the other host).
        c.up_all_with(2, &["--max-peers", &peers.to_string()])?;
        let (h0, h1) = (&c.hosts[0], &c.hosts[1]);
        if peers > 1 {
            let file = peer_file(peers - 1, h1.uplink_addr)?;
            h0.dr(&["peer", "add", "--file", file.to_str().context("path")?])?;
            std::fs::remove_file(file)?;
        }
        let (a, b) = (&h0.containers[0], &h1.containers[0]);
        let rr = rr_parallel(&a.ns, &b.ns, b.addr, self.duration)?;
        let udp = load::udp_rate(
            &a.ns,
            &h1.containers[1].ns,
            h1.containers[1].addr,
            self.duration,
        )?;
        let mode = format!("{peers} peers");
        self.record("scale", &mode, round, "tcp_rr_4_conns", "trans/s", rr);
        self.record("scale", &mode, round, "udp_small_rate", "pkt/s", udp);
        Ok(())
    }

    /// Installing `n` peers: `dr-ctl peer add --file` against the recipe's
    /// `ip route add`, batched with `ip -batch`, each in a fresh host.
    fn install_round(&mut self, n: usize, round: usize) -> Result<()> {
        let via = std::net::Ipv4Addr::new(192, 168, 91, 129);
        let peers = peer_file(n, via)?;
        let routes = PathBuf::from(format!("{}.routes", peers.display()));
        let text = std::fs::read_to_string(&peers)?;
        std::fs::write(
            &routes,
            text.lines()
                .map(|l| format!("route add {}\n", l))
                .collect::<String>(),
        )?;
        let host = |tag: &str| -> Result<Netns> {
            let ns = Netns::add(&unique_prefix(tag))?;
            ns.ip(&[
                "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
            ])?;
            ns.ip(&["addr", "add", "192.168.91.128/24", "dev", "eth0"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            Ok(ns)
        };
        let dr_ctl = self.dr_ctl.to_str().context("path")?.to_string();
        let dr_host = host("drinst")?;
        dr_host.exec(
            &dr_ctl,
            &[
                "up",
                "--subnet",
                "10.0.128.1/24",
                "--uplink",
                "eth0",
                "--max-peers",
                &n.to_string(),
            ],
        )?;
        let start = Instant::now();
        dr_host.exec(
            &dr_ctl,
            &["peer", "add", "--file", peers.to_str().context("path")?],
        )?;
        let dr_secs = start.elapsed().as_secs_f64();
        dr_host.exec(&dr_ctl, &["down"])?;
        let ip_host = host("ipinst")?;
        let start = Instant::now();
        ip_host.ip(&["-batch", routes.to_str().context("path")?])?;
        let ip_secs = start.elapsed().as_secs_f64();
        let workload = format!("install_{n}_peers");
        self.record(
            "install",
            "dr-ctl peer add --file",
            round,
            &workload,
            "s",
            dr_secs,
        );
        self.record(
            "install",
            "ip -batch route add",
            round,
            &workload,
            "s",
            ip_secs,
        );
        std::fs::remove_file(peers)?;
        std::fs::remove_file(routes)?;
        Ok(())
    }
}

impl Bench {
    /// Applying a plan of `n` hosts on one of them: the first apply (dr up,
    /// n-1 peers) and a repeated one (nothing to change).
    fn apply_round(&mut self, n: usize, round: usize) -> Result<()> {
        let mut plan = String::from("cluster_cidr = \"10.0.0.0/8\"\n");
        for i in 0..n {
            let _ = writeln!(
                plan,
                "[[host]]\nname = \"n{i}\"\naddress = \"172.16.{}.{}\"\nsubnet = \"10.{}.{}.1/24\"",
                i / 250,
                i % 250 + 1,
                i / 256,
                i % 256
            );
        }
        let path = std::env::temp_dir().join(format!("{}.toml", unique_prefix("dr-bench-plan-")));
        std::fs::write(&path, plan)?;
        let ns = Netns::add(&unique_prefix("drapply"))?;
        ns.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ])?;
        ns.ip(&["addr", "add", "172.16.0.1/16", "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        let dr_ctl = self.dr_ctl.to_str().context("path")?.to_string();
        let file = path.to_str().context("path")?;
        for what in ["first", "repeated"] {
            let start = Instant::now();
            ns.exec(&dr_ctl, &["apply", "-f", file, "--host", "n0"])?;
            let secs = start.elapsed().as_secs_f64();
            self.record(
                "install",
                &format!("dr-ctl apply ({what})"),
                round,
                &format!("apply_{n}_host_plan"),
                "s",
                secs,
            );
        }
        ns.exec(&dr_ctl, &["down"])?;
        std::fs::remove_file(path)?;
        Ok(())
    }
}

impl Bench {
    /// How long the agents take to see a new host: two agents run, a third
    /// starts, and the time until both others have its subnet is recorded.
    fn agent_round(&mut self, round: usize) -> Result<()> {
        let mut c = Cluster::new("drbagent", 2, &self.dr_ctl)?;
        let _etcd = Etcd::start(&c, None);
        let mut agents = Agents(c.hosts.iter().map(|h| agent(h, true)).collect());
        let has = |h: &dr_tests::Host, n: usize| {
            h.dr(&["peer", "list", "--json"])
                .ok()
                .and_then(|o| serde_json::from_str::<serde_json::Value>(&o).ok())
                .and_then(|v| v.as_array().map(Vec::len))
                == Some(n)
        };
        if !wait_for(Duration::from_secs(20), || {
            c.hosts.iter().all(|h| has(h, 1))
        }) {
            anyhow::bail!("two agents did not converge");
        }
        let dr_ctl = self.dr_ctl.clone();
        c.add_host(&dr_ctl)?;
        let start = Instant::now();
        agents.0.push(agent(&c.hosts[2], true));
        let seen = wait_for(Duration::from_secs(20), || {
            c.hosts[..2].iter().all(|h| has(h, 2))
        });
        let secs = start.elapsed().as_secs_f64();
        if !seen {
            anyhow::bail!("the new host was not seen");
        }
        self.record(
            "install",
            "dr-ctl agent (etcd)",
            round,
            "new_host_seen_by_all",
            "s",
            secs,
        );
        Ok(())
    }
}

/// Round trips per second on one connection from `client` to an echo
/// server on `addr` in `server`.
fn rr_one(client: &Netns, server: &Netns, addr: Ipv4Addr, d: Duration) -> Result<f64> {
    let srv = Server::tcp_echo(server, addr)?;
    load::tcp_rr(client, srv.addr, d)
}

/// Round trips per second on `STREAMS` connections, each client pinned to
/// a CPU with its server (see `Server::tcp_echo_pinned`).
fn rr_parallel(client: &Netns, server: &Netns, addr: Ipv4Addr, d: Duration) -> Result<f64> {
    let srv = Server::tcp_echo_pinned(server, addr)?;
    load::parallel_pinned(STREAMS, || load::tcp_rr(client, srv.addr, d))
}

/// Connections per second from `STREAMS` threads of `client`.
fn crr_parallel(client: &Netns, server: &Netns, addr: Ipv4Addr, d: Duration) -> Result<f64> {
    let srv = Server::tcp_answer_once(server, addr)?;
    load::parallel(STREAMS, || load::tcp_crr(client, srv.addr, d))
}

/// `n` disjoint /24 peer subnets outside the cluster (100.64.0.0/10 onward).
fn peer_file(n: usize, via: std::net::Ipv4Addr) -> Result<PathBuf> {
    let path = std::env::temp_dir().join(unique_prefix("dr-peers-"));
    let mut text = String::with_capacity(n * 40);
    for i in 0..n as u32 {
        let base = 0x6440_0000u32 + (i << 8);
        let _ = writeln!(text, "{}/24 via {via}", std::net::Ipv4Addr::from(base));
    }
    std::fs::write(&path, text)?;
    Ok(path)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Summary rows: (group, workload, unit, mode, median, min, max, rounds).
type Row = (String, String, String, String, f64, f64, f64, usize);

fn summarize(samples: &[Sample]) -> Vec<Row> {
    let mut groups: BTreeMap<(String, String, String, String), Vec<f64>> = BTreeMap::new();
    let order = |g: &str| {
        [
            "modes", "cost", "bpf", "path", "ceiling", "scale", "install",
        ]
        .iter()
        .position(|x| *x == g)
        .unwrap_or(9)
    };
    for s in samples {
        groups
            .entry((
                format!("{}{}", order(s.group), s.group),
                s.workload.clone(),
                s.unit.to_string(),
                s.mode.clone(),
            ))
            .or_default()
            .push(s.value);
    }
    groups
        .into_iter()
        .map(|((g, w, u, m), mut v)| {
            let (lo, hi) = (
                v.iter().cloned().fold(f64::MAX, f64::min),
                v.iter().cloned().fold(f64::MIN, f64::max),
            );
            let n = v.len();
            (g[1..].to_string(), w, u, m, median(&mut v), lo, hi, n)
        })
        .collect()
}

fn fmt_num(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// A row's median with its spread: `median [min - max]`.
fn spread(r: &Row) -> String {
    format!("{} [{} - {}]", fmt_num(r.4), fmt_num(r.5), fmt_num(r.6))
}

fn markdown(rows: &[Row], samples: &[Sample], machine: &str, opts_line: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# dr benchmark\n\n{machine}\n\n{opts_line}\n");
    let _ = writeln!(md, "Median over rounds, [min - max] in brackets; the ratio is dr's median over the recipe's (for CPU-s/GB, lower is better, so a ratio below 1 favours dr).\n");
    let _ = writeln!(md, "## dr against the recipe\n\n| workload | unit | recipe | dr-tc | dr-xdp | dr-tc / recipe | dr-xdp / recipe |\n|---|---|---|---|---|---|---|");
    let find = |g: &str, w: &str, m: &str| rows.iter().find(|r| r.0 == g && r.1 == w && r.3 == m);
    let mut workloads: Vec<&str> = rows
        .iter()
        .filter(|r| r.0 == "modes")
        .map(|r| r.1.as_str())
        .collect();
    workloads.dedup();
    for w in workloads {
        let cell = |m: &str| find("modes", w, m).map_or("-".into(), spread);
        let ratio = |m: &str| match (find("modes", w, m), find("modes", w, "recipe")) {
            (Some(d), Some(r)) if r.4 > 0.0 => format!("{:.2}x", d.4 / r.4),
            _ => "-".into(),
        };
        let unit = find("modes", w, "recipe").map_or("", |r| r.2.as_str());
        let _ = writeln!(
            md,
            "| {w} | {unit} | {} | {} | {} | {} | {} |",
            cell("recipe"),
            cell("dr-tc"),
            cell("dr-xdp"),
            ratio("dr-tc"),
            ratio("dr-xdp")
        );
    }
    md += &cost::markdown(rows, samples);
    for (group, title) in [
        (
            "path",
            "Each path's own cost per packet (BPF_PROG_TEST_RUN, warm: the median of 20,000 runs on a crafted frame)",
        ),
        ("ceiling", "Ceilings (no dr, no recipe)"),
        ("scale", "dr-tc with many peer subnets in the map"),
        ("install", "Installing peers and applying plans"),
    ] {
        let part: Vec<&Row> = rows.iter().filter(|r| r.0 == group).collect();
        if part.is_empty() {
            continue;
        }
        let _ = writeln!(md, "\n## {title}\n\n| setup | workload | unit | median [min - max] | rounds |\n|---|---|---|---|---|");
        for r in part {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                r.3,
                r.1,
                r.2,
                spread(r),
                r.7
            );
        }
    }
    md
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = run("uname", &["-r"]).unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("Machine: {cpus} vCPU ({cpu}), kernel {}; hosts, containers and the segment are network namespaces joined by veth pairs and bridges.", kernel.trim())
}

/// Refuses a `--workload` that names no cost workload, before anything runs.
pub fn check_workload(only: &str) -> Result<()> {
    let names = cost::workload_names();
    if !names.iter().any(|n| n.contains(only)) {
        anyhow::bail!(
            "--workload {only:?} matches no cost workload; they are: {}",
            names.join(", ")
        );
    }
    Ok(())
}

pub fn run_bench(dr_ctl: &Path, opts: &Options) -> Result<()> {
    dr_tests::require_root();
    let started = Instant::now();
    let mut bench = Bench {
        dr_ctl: dr_ctl.to_path_buf(),
        duration: Duration::from_secs_f64(if opts.quick { 0.5 } else { 3.0 }),
        cost_blocks: if opts.quick { 1 } else { 3 },
        cost_workload: opts.workload.clone(),
        samples: Vec::new(),
    };
    let scales: &[usize] = if opts.quick {
        &[1, 1000]
    } else {
        &[1, 1000, 100_000]
    };
    let install = if opts.quick { 1000 } else { 10_000 };
    for round in 1..=opts.rounds {
        println!("round {round}/{}", opts.rounds);
        bench.paths_round(round)?;
        bench.cost_round(round)?;
        if opts.cost_only {
            continue;
        }
        // Alternate the order of modes so neither always runs first.
        let mut modes = [Mode::Recipe, Mode::Tc, Mode::Xdp];
        modes.rotate_left(round % 3);
        for segment in SEGMENTS {
            for mode in modes.into_iter().filter(|m| segment.runs(*m)) {
                bench
                    .modes_round(mode, segment, round)
                    .with_context(|| format!("{mode:?} on {segment:?}, round {round}"))?;
            }
        }
        bench.ceilings_round(round)?;
        for &n in scales {
            bench.scale_round(n, round)?;
        }
        bench.install_round(install, round)?;
        bench.apply_round(if opts.quick { 100 } else { 1000 }, round)?;
        bench.agent_round(round)?;
    }
    let rows = summarize(&bench.samples);
    let opts_line = format!(
        "`cargo xtask bench{}{}{}`: {} rounds, {} s per rate workload, cost workloads in {} blocks of {} s runs per round, {:.0} s in all.",
        if opts.quick { " --quick" } else { "" },
        if opts.cost_only { " --cost-only" } else { "" },
        opts.workload
            .as_ref()
            .map_or(String::new(), |w| format!(" --workload '{w}'")),
        opts.rounds,
        bench.duration.as_secs_f64(),
        bench.cost_blocks,
        cost::COST_RUN.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let md = markdown(&rows, &bench.samples, &machine(), &opts_line);
    std::fs::create_dir_all(&opts.results)?;
    let stamp = run("date", &["-u", "+%Y%m%d-%H%M%S"])?.trim().to_string();
    let base = opts.results.join(format!(
        "bench-{stamp}{}",
        if opts.quick { "-quick" } else { "" }
    ));
    let json = json!({
        "machine": machine(),
        "options": {"quick": opts.quick, "rounds": opts.rounds, "seconds_per_workload": bench.duration.as_secs_f64()},
        "samples": bench.samples.iter().map(|s| json!({"group": s.group, "mode": s.mode, "workload": s.workload, "unit": s.unit, "round": s.round, "value": s.value})).collect::<Vec<_>>(),
        "summary": rows.iter().map(|r| json!({"group": r.0, "workload": r.1, "unit": r.2, "mode": r.3, "median": r.4, "min": r.5, "max": r.6, "rounds": r.7})).collect::<Vec<_>>(),
    });
    std::fs::write(
        base.with_extension("json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    std::fs::write(base.with_extension("md"), &md)?;
    println!("\n{md}\nwritten: {}.{{md,json}}", base.display());
    Ok(())
}
