//! Command-line interface.
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{
    commands,
    error::{io_context, Error, Result},
    kernel::AttachMode,
    nat_plan::NatPlan,
    output,
    subnet::{self, LocalSubnet},
};

/// Levels of the datapath's aya-log events; `off` costs one branch per event site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[repr(u8)]
pub enum DatapathLog {
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

/// `--attach` of the commands that bring dr up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Attach {
    /// TCX links where the kernel has them (6.6+), netlink otherwise; a
    /// datapath that is up keeps its mode.
    Auto,
    /// Pinned TCX links (Linux 6.6+).
    Tcx,
    /// clsact qdisc and cls_bpf filters (any supported kernel).
    Netlink,
}

#[derive(Clone, Copy, Debug, clap::Args)]
pub struct AttachArg {
    /// How to attach the TC programs. A datapath that is up changes mode
    /// only after `dr-ctl down`.
    #[arg(long = "attach", value_enum, env = "DR_ATTACH", default_value_t = Attach::Auto)]
    pub attach: Attach,
}

impl AttachArg {
    fn mode(self) -> Option<AttachMode> {
        match self.attach {
            Attach::Auto => None,
            Attach::Tcx => Some(AttachMode::Tcx),
            Attach::Netlink => Some(AttachMode::Netlink),
        }
    }
}

/// A file's text, or standard input's for `-`.
fn read_input(path: &std::path::Path) -> Result<String> {
    if path == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin()).map_err(io_context("reading standard input"))
    } else {
        std::fs::read_to_string(path).map_err(io_context(format!("reading {}", path.display())))
    }
}

/// eBPF direct routing between container hosts.
///
/// Containers on different hosts reach each other by their own IPs: peer
/// subnets live in BPF maps, not in the routing table, and TC programs on
/// docker0 and the uplink forward between them. Run `up` once per host, then
/// `peer add` for every other host.
#[derive(Debug, Parser)]
#[command(name = "dr-ctl", version, propagate_version = true)]
pub struct Cli {
    /// Print results as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set up docker0 and load, attach and pin the datapath (idempotent).
    Up {
        /// The container bridge; created if absent.
        #[arg(long, default_value = "docker0")]
        bridge: String,
        /// The bridge's address with the subnet's prefix (Docker's `bip`), e.g. 10.0.128.1/24.
        #[arg(long)]
        subnet: String,
        /// The interface toward the other hosts, e.g. eth0.
        #[arg(long)]
        uplink: String,
        /// Also set "bip" in this Docker daemon.json (other keys kept, backup written).
        #[arg(long, value_name = "PATH")]
        docker_config: Option<PathBuf>,
        /// Also attach the XDP fast path to the uplink (native mode where the
        /// driver supports it, generic otherwise) for traffic from peers.
        #[arg(long)]
        xdp: bool,
        /// Level of the datapath's own events (read them with `dr-ctl monitor`).
        #[arg(long, value_enum, default_value_t = DatapathLog::Off)]
        datapath_log: DatapathLog,
        /// Turn on SNAT (in place of MASQUERADE): container traffic to anything
        /// outside this range, the peer subnets and --no-masquerade leaves with
        /// the uplink's address.
        #[arg(long, value_name = "CIDR")]
        cluster_cidr: Option<String>,
        /// A further destination range to leave untranslated (repeatable).
        #[arg(long, value_name = "CIDR")]
        no_masquerade: Vec<String>,
        /// Source ports for translations [default: 10000-32767, below Linux's ephemeral range].
        #[arg(long, value_name = "LOW-HIGH")]
        nat_ports: Option<String>,
        /// Entries in each translation table [default: 65536]; a change needs `down` first.
        #[arg(long, value_name = "N")]
        nat_table_size: Option<u32>,
        #[command(flatten)]
        attach: AttachArg,
        /// Idle timeout, repeatable: tcp-syn, tcp-established, tcp-closing (one FIN seen),
        /// tcp-closed (the container closed first, or RST), tcp-time-wait (the remote closed
        /// first), udp or icmp [defaults: 60, 7440, 120, 2, 60, 60, 30].
        #[arg(long, value_name = "KIND=SECONDS")]
        nat_timeout: Vec<String>,
    },
    /// Detach and unpin the datapath and remove what `up` created.
    Down,
    /// Manage peer subnets.
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Show programs, interfaces, local subnet, peers and counters.
    Status,
    /// Apply the cluster plan to this host: validate the whole file, find this
    /// host's entry (by --host or by a local address), bring dr up with it and
    /// make the peers match, without ever dropping a peer that stays.
    Apply {
        /// The cluster plan (TOML), the same file on every host.
        #[arg(long, short = 'f', value_name = "PATH")]
        file: PathBuf,
        /// This host's entry in the plan [default: the entry whose address is local].
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
        /// Print the difference against what is live; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        attach: AttachArg,
    },
    /// Run the agent: register this host's subnet in etcd (leased, or the one
    /// given), keep it alive, and follow the other hosts' entries into the
    /// peer map. Runs until killed; survives etcd restarts.
    Agent {
        /// etcd endpoints, comma-separated, e.g. http://10.1.0.5:2379.
        #[arg(long, value_delimiter = ',', required = true)]
        etcd: Vec<String>,
        /// The cluster CIDR: subnets are leased from it, and SNAT leaves it untranslated.
        #[arg(long, value_name = "CIDR")]
        cluster_cidr: String,
        /// The interface toward the other hosts.
        #[arg(long)]
        uplink: String,
        /// Register this subnet (bip form, e.g. 10.0.128.1/24) instead of leasing one.
        #[arg(long)]
        subnet: Option<String>,
        /// Prefix length of leased subnets.
        #[arg(long, default_value_t = 24)]
        subnet_prefix: u8,
        /// This host's name in the registry [default: the uplink's address].
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "docker0")]
        bridge: String,
        /// Seconds after which a dead host's entry disappears.
        #[arg(long, default_value_t = 5)]
        lease_ttl: i64,
        /// Key prefix in etcd.
        #[arg(long, default_value = "/dr/")]
        etcd_prefix: String,
        /// Also attach the XDP fast path.
        #[arg(long)]
        xdp: bool,
        /// Level of the datapath's own events (read them with `dr-ctl monitor`).
        #[arg(long, value_enum, default_value_t = DatapathLog::Off)]
        datapath_log: DatapathLog,
        /// Destinations left untranslated besides the cluster (repeatable).
        #[arg(long, value_name = "CIDR")]
        no_masquerade: Vec<String>,
        #[command(flatten)]
        attach: AttachArg,
    },
    /// Print the datapath's events (see `up --datapath-log`) until interrupted.
    Monitor,
    /// Serve the counters in the Prometheus text format (or print them once).
    Metrics(crate::metrics::MetricsArgs),
    /// Refresh what dr learns from the kernel (the local containers the XDP
    /// path delivers to, the uplink's MTU); safe to run any time, e.g. from a timer.
    Sync,
    /// Inspect and manage SNAT translations.
    #[command(subcommand)]
    Nat(NatCommand),
}

#[derive(Debug, Subcommand)]
pub enum NatCommand {
    /// List live translations: protocol, original and translated tuples, state, age.
    #[command(alias = "show")]
    List,
    /// Remove every translation (their flows break; new ones start afresh).
    Flush,
    /// Remove expired translations now (the datapath ignores them anyway).
    Gc,
}

#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Route a peer host's container subnet to it: `peer add 10.0.129.0/24 via 192.168.91.129`,
    /// or many at once with `--file` (all validated before any is written).
    Add {
        /// The peer's container subnet (host bits clear).
        #[arg(required_unless_present = "file")]
        subnet: Option<String>,
        #[arg(value_parser = ["via"], hide_possible_values = true, value_name = "via", requires = "via")]
        via_keyword: Option<String>,
        /// The peer host's address on the uplink's network.
        #[arg(value_name = "ADDRESS", required_unless_present = "file")]
        via: Option<String>,
        /// Read peers from a file (`-`: standard input), one `SUBNET via ADDRESS` per line.
        #[arg(long, short = 'f', value_name = "PATH", conflicts_with_all = ["subnet", "via"])]
        file: Option<PathBuf>,
    },
    /// Remove a peer subnet.
    #[command(alias = "delete")]
    Del { subnet: String },
    /// List peers with their traffic.
    #[command(alias = "show")]
    List,
}

/// Runs a parsed command and returns what to print.
pub async fn run(cli: Cli) -> Result<String> {
    let json = cli.json;
    let render = |text: String, value: String| if json { value + "\n" } else { text };
    Ok(match cli.command {
        Command::Up {
            xdp,
            datapath_log,
            bridge,
            subnet,
            uplink,
            docker_config,
            cluster_cidr,
            no_masquerade,
            nat_ports,
            nat_table_size,
            nat_timeout,
            attach,
        } => {
            let args = commands::UpArgs {
                xdp,
                datapath_log: datapath_log as u8,
                bridge,
                subnet: LocalSubnet::parse(&subnet)?,
                uplink,
                docker_config,
                nat: NatPlan::parse(
                    cluster_cidr.as_deref(),
                    &no_masquerade,
                    nat_ports.as_deref(),
                    nat_table_size,
                    &nat_timeout,
                )?,
                attach: attach.mode(),
            };
            let r = commands::up(&args).await?;
            render(output::up(&r), output::json(&r))
        }
        Command::Down => {
            let r = commands::down().await?;
            render(output::down(&r), output::json(&r))
        }
        Command::Peer(PeerCommand::Add {
            subnet, via, file, ..
        }) => match (subnet, via, file) {
            (Some(subnet), Some(via), None) => {
                let peer = commands::parse_peer(&subnet, &via)?;
                let r = commands::peer_add(&[peer]).await?.remove(0);
                render(output::peer(&r), output::json(&r))
            }
            (_, _, Some(path)) => {
                let peers = subnet::parse_peer_list(&read_input(&path)?)
                    .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
                let r = output::PeerBatch::from(commands::peer_add(&peers).await?.as_slice());
                render(output::peer_batch(&r), output::json(&r))
            }
            _ => {
                return Err(Error::Invalid(
                    "peer add needs SUBNET via ADDRESS, or --file".into(),
                ))
            }
        },
        Command::Peer(PeerCommand::Del { subnet }) => {
            let r = commands::peer_del(&subnet)?;
            render(output::peer(&r), output::json(&r))
        }
        Command::Peer(PeerCommand::List) => {
            let r = commands::peer_list()?;
            render(output::peers(&r), output::json(&r))
        }
        Command::Status => {
            let r = commands::status().await?;
            render(output::status(&r), output::json(&r))
        }
        Command::Apply {
            file,
            host,
            dry_run,
            attach,
        } => {
            let r = commands::apply(&commands::ApplyArgs {
                file,
                host,
                dry_run,
                attach: attach.mode(),
            })
            .await?;
            render(output::apply(&r), output::json(&r))
        }
        Command::Agent {
            etcd,
            cluster_cidr,
            uplink,
            subnet,
            subnet_prefix,
            name,
            bridge,
            lease_ttl,
            etcd_prefix,
            xdp,
            datapath_log,
            no_masquerade,
            attach,
        } => {
            let nat = NatPlan::parse(Some(&cluster_cidr), &no_masquerade, None, None, &[])?;
            let subnet = subnet.as_deref().map(LocalSubnet::parse).transpose()?;
            let cluster = nat.cluster_cidr.expect("given");
            if let Some(s) = subnet.filter(|s| !cluster.contains(&s.net)) {
                return Err(Error::Invalid(format!(
                    "--subnet {} is outside --cluster-cidr {cluster}",
                    s.net
                )));
            }
            if subnet_prefix < cluster.prefix_len() || subnet_prefix > 30 {
                return Err(Error::Invalid(format!(
                    "--subnet-prefix {subnet_prefix}: between the cluster's /{} and /30",
                    cluster.prefix_len()
                )));
            }
            if lease_ttl < 1 {
                return Err(Error::Invalid(
                    "--lease-ttl must be at least 1 second".into(),
                ));
            }
            let prefix = if etcd_prefix.ends_with('/') {
                etcd_prefix
            } else {
                format!("{etcd_prefix}/")
            };
            let args = crate::agent::AgentArgs {
                etcd,
                prefix,
                name,
                bridge,
                uplink,
                xdp,
                datapath_log: datapath_log as u8,
                nat,
                subnet,
                subnet_prefix,
                lease_ttl,
                attach: attach.mode(),
            };
            crate::agent::run(&args).await?;
            String::new()
        }
        Command::Monitor => {
            commands::monitor().await?;
            String::new()
        }
        Command::Metrics(args) => match args.listen {
            None => crate::metrics::render(args.peer_series)?,
            Some(addr) => {
                crate::metrics::serve(addr, args.peer_series).await?;
                String::new()
            }
        },
        Command::Sync => {
            let r = commands::sync().await?;
            render(
                format!(
                    "xdp {}; {} local endpoints; uplink mtu {}\n",
                    r.xdp, r.endpoints, r.uplink_mtu
                ),
                output::json(&r),
            )
        }
        Command::Nat(NatCommand::List) => {
            let r = commands::nat_list()?;
            render(output::nat_entries(&r), output::json(&r))
        }
        Command::Nat(NatCommand::Flush) => {
            let r = commands::nat_flush()?;
            render(
                format!("removed {} translations\n", r.removed),
                output::json(&r),
            )
        }
        Command::Nat(NatCommand::Gc) => {
            let r = commands::nat_gc()?;
            render(
                format!("removed {} expired translations\n", r.removed),
                output::json(&r),
            )
        }
    })
}
