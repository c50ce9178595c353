//! `dr-ctl up`'s arguments: as given on the command line, and checked.
use std::path::PathBuf;

use dr_common::{DEFAULT_MAX_PEERS, MAX_PEERS_LIMIT};

use crate::{
    datapath::{Hook, Kind},
    docker_config::{self, DockerConfigChange, DockerSettings},
    error::{Error, Result},
    kernel::AttachMode,
    nat_plan::{check_table_size, parse_port_range, parse_timeout, NatPlan},
    netlink::Interface,
    subnet::{parse_cidr, LocalSubnet},
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
    /// The mode asked for; None: the kernel's best.
    pub fn mode(self) -> Option<AttachMode> {
        match self.attach {
            Attach::Auto => None,
            Attach::Tcx => Some(AttachMode::Tcx),
            Attach::Netlink => Some(AttachMode::Netlink),
        }
    }
}

/// `--max-peers` of the commands that bring dr up.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct MaxPeersArg {
    /// Peers the datapath can hold [default: 4096, at most 131072]; the peer
    /// tables' memory grows with it (and with the CPUs). Maps that exist keep
    /// their capacity: a change needs `down` first.
    #[arg(long, value_name = "N")]
    max_peers: Option<u32>,
}

impl MaxPeersArg {
    /// The capacity asked for, checked; None: what is pinned, or the default.
    pub fn check(self) -> Result<Option<u32>> {
        match self.max_peers {
            Some(n) if !(1..=MAX_PEERS_LIMIT).contains(&n) => Err(Error::Invalid(format!(
                "--max-peers {n} is out of range 1-{MAX_PEERS_LIMIT}"
            ))),
            n => Ok(n),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
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
    max_peers: MaxPeersArg,
    #[command(flatten)]
    attach: AttachArg,
    /// Idle timeout, repeatable: tcp-syn, tcp-established, tcp-closing (one FIN seen),
    /// tcp-closed (the container closed first, or RST), tcp-time-wait (the remote closed
    /// first), udp or icmp [defaults: 60, 7440, 120, 2, 60, 60, 30].
    #[arg(long, value_name = "KIND=SECONDS")]
    nat_timeout: Vec<String>,
}

impl Args {
    /// The checked form of the command line.
    pub(super) fn check(self) -> Result<UpArgs> {
        Ok(UpArgs {
            max_peers: self.max_peers.check()?,
            xdp: self.xdp,
            datapath_log: self.datapath_log as u8,
            subnet: LocalSubnet::parse_as("--subnet", &self.subnet)?,
            nat: nat_from_flags(NatFlags {
                cluster_cidr: self.cluster_cidr.as_deref(),
                no_masquerade: &self.no_masquerade,
                ports: self.nat_ports.as_deref(),
                table_size: self.nat_table_size,
                timeouts: &self.nat_timeout,
            })?,
            bridge: self.bridge,
            uplink: self.uplink,
            docker_config: self.docker_config,
            attach: self.attach.mode(),
        })
    }
}

/// The SNAT flags as given (`up` has them all, `agent` the first two).
#[derive(Default)]
pub struct NatFlags<'a> {
    pub cluster_cidr: Option<&'a str>,
    pub no_masquerade: &'a [String],
    pub ports: Option<&'a str>,
    pub table_size: Option<u32>,
    pub timeouts: &'a [String],
}

/// The SNAT flags checked; errors name the flag.
pub fn nat_from_flags(flags: NatFlags) -> Result<NatPlan> {
    let cluster_cidr = flags
        .cluster_cidr
        .map(|c| parse_cidr("--cluster-cidr", c))
        .transpose()?;
    let no_masquerade = flags
        .no_masquerade
        .iter()
        .map(|c| parse_cidr("--no-masquerade", c))
        .collect::<Result<Vec<_>>>()?;
    let mut plan = match cluster_cidr {
        Some(cluster) => NatPlan::masquerade_outside(cluster, no_masquerade),
        None if no_masquerade.is_empty() => NatPlan::default(),
        None => {
            return Err(Error::Invalid(
                "--no-masquerade needs --cluster-cidr".into(),
            ))
        }
    };
    if let Some(p) = flags.ports {
        plan.ports = parse_port_range("--nat-ports", p)?;
    }
    if let Some(size) = flags.table_size {
        plan.table_size = check_table_size("--nat-table-size", size)?;
    }
    for t in flags.timeouts {
        parse_timeout("--nat-timeout", t, &mut plan.timeouts)?;
    }
    Ok(plan)
}

/// What `up` is to set up (from the command line, a plan or the agent).
#[derive(Clone, Debug)]
pub struct UpArgs {
    /// Also attach the XDP fast path to the uplink.
    pub xdp: bool,
    /// Level of the datapath's aya-log events (0 off .. 5 trace).
    pub datapath_log: u8,
    pub bridge: String,
    pub subnet: LocalSubnet,
    pub uplink: String,
    pub docker_config: Option<PathBuf>,
    pub nat: NatPlan,
    /// How to attach the TC programs; None: TCX where the kernel has it.
    pub attach: Option<AttachMode>,
    /// The peer tables' capacity; None: what is pinned, or the default.
    pub max_peers: Option<u32>,
}

impl UpArgs {
    /// Whether `hook` is to be attached: every TC hook, XDP with `--xdp`.
    pub(super) fn wants(&self, hook: Hook) -> bool {
        hook.kind() != Kind::Xdp || self.xdp
    }

    /// The capacity of peer tables `up` creates.
    pub(super) fn max_peers(&self) -> u32 {
        self.max_peers.unwrap_or(DEFAULT_MAX_PEERS)
    }

    /// What `up` sets in daemon.json, given the uplink.
    pub(super) fn docker_settings(&self, uplink: &Interface) -> DockerSettings {
        DockerSettings::new(self.subnet.bip(), uplink.mtu)
    }

    /// Sets `"bip"` (and `"mtu"` for a small uplink MTU) in the daemon.json
    /// `up` was given, if any.
    pub(super) fn merge_docker_config(
        &self,
        uplink: &Interface,
    ) -> Result<Option<DockerConfigChange>> {
        self.docker_config
            .as_ref()
            .map(|path| docker_config::merge(path, &self.docker_settings(uplink)))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(flags: NatFlags) -> String {
        nat_from_flags(flags).unwrap_err().to_string()
    }

    #[test]
    fn nat_flag_errors_name_the_flag() {
        let cases: [(NatFlags, &str); 6] = [
            (
                NatFlags {
                    cluster_cidr: Some("10.0.0.0"),
                    ..NatFlags::default()
                },
                "invalid --cluster-cidr",
            ),
            (
                NatFlags {
                    cluster_cidr: Some("10.0.0.1/16"),
                    ..NatFlags::default()
                },
                "host bits",
            ),
            (
                NatFlags {
                    no_masquerade: &["10.9.0.0/16".into()],
                    ..NatFlags::default()
                },
                "--no-masquerade needs --cluster-cidr",
            ),
            (
                NatFlags {
                    ports: Some("5-10"),
                    ..NatFlags::default()
                },
                "invalid --nat-ports",
            ),
            (
                NatFlags {
                    table_size: Some(5),
                    ..NatFlags::default()
                },
                "invalid --nat-table-size",
            ),
            (
                NatFlags {
                    timeouts: &["sctp=3".into()],
                    ..NatFlags::default()
                },
                "invalid --nat-timeout",
            ),
        ];
        for (flags, expected) in cases {
            let e = err(flags);
            assert!(e.contains(expected), "{e:?} lacks {expected:?}");
        }
    }

    #[test]
    fn nat_flags_make_the_plan() {
        let extra = ["172.16.0.0/12".to_string()];
        let timeouts = ["udp=5".to_string()];
        let plan = nat_from_flags(NatFlags {
            cluster_cidr: Some("10.0.0.0/16"),
            no_masquerade: &extra,
            ports: Some("20000-20099"),
            table_size: Some(4096),
            timeouts: &timeouts,
        })
        .unwrap();
        assert_eq!(plan.cluster_cidr, Some("10.0.0.0/16".parse().unwrap()));
        assert_eq!(plan.no_masquerade, ["172.16.0.0/12".parse().unwrap()]);
        assert_eq!(
            (plan.ports, plan.table_size, plan.timeouts.udp),
            ((20000, 20099), 4096, 5)
        );
        assert_eq!(
            nat_from_flags(NatFlags::default()).unwrap(),
            NatPlan::default()
        );
    }
}
