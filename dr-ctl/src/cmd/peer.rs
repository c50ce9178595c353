//! `dr-ctl peer`: add, remove and list peer subnets.
use std::{fmt::Write as _, net::Ipv4Addr, path::PathBuf};

use ipnet::Ipv4Net;
use serde::Serialize;

use super::{render, Counts, Report};
use crate::{
    error::{io_context, Error, Result},
    maps::Maps,
    netlink::Netlink,
    node::Node,
    peer::{self, check_peers, Peer, PeerChange},
    subnet::from_map_addr,
};

#[derive(Debug, clap::Subcommand)]
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
    /// Which way the datapath sends a container's packet to ADDRESS: to the
    /// peer host whose subnet holds it, the local subnet, SNAT out of the
    /// uplink, or the host's own routing (like `ip route get`).
    Get {
        /// An IPv4 address.
        address: String,
    },
}

/// What a peer command did to one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerOutcome {
    Added,
    /// The subnet was there via another host: switched.
    Replaced,
    Unchanged,
    Deleted,
}

impl PeerOutcome {
    const fn name(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Replaced => "replaced",
            Self::Unchanged => "unchanged",
            Self::Deleted => "deleted",
        }
    }
}

impl From<PeerChange> for PeerOutcome {
    fn from(change: PeerChange) -> Self {
        match change {
            PeerChange::Unchanged => Self::Unchanged,
            PeerChange::Add => Self::Added,
            PeerChange::Replace { .. } => Self::Replaced,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PeerReport {
    pub subnet: Ipv4Net,
    pub via: Option<Ipv4Addr>,
    pub change: PeerOutcome,
}

impl Report for PeerReport {
    fn text(&self) -> String {
        let change = self.change.name();
        match self.via {
            Some(via) => format!("peer {} via {}: {change}\n", self.subnet, via),
            None => format!("peer {}: {change}\n", self.subnet),
        }
    }
}

/// What a `peer add --file` did, in numbers.
#[derive(Debug, Default, Serialize)]
pub struct PeerBatch {
    pub added: usize,
    pub replaced: usize,
    pub unchanged: usize,
}

impl From<&[PeerReport]> for PeerBatch {
    fn from(reports: &[PeerReport]) -> Self {
        let mut b = Self::default();
        for r in reports {
            match r.change {
                PeerOutcome::Added => b.added += 1,
                PeerOutcome::Replaced => b.replaced += 1,
                PeerOutcome::Unchanged | PeerOutcome::Deleted => b.unchanged += 1,
            }
        }
        b
    }
}

impl Report for PeerBatch {
    fn text(&self) -> String {
        format!(
            "peers: {} added, {} replaced, {} unchanged\n",
            self.added, self.replaced, self.unchanged
        )
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PeerStatus {
    pub subnet: Ipv4Net,
    pub via: Ipv4Addr,
    pub to_peer: Counts,
    pub from_peer: Counts,
}

/// The peer table, as `peer list` and `status` print it.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct PeerTable(pub Vec<PeerStatus>);

impl Report for PeerTable {
    fn text(&self) -> String {
        let mut out = format!(
            "{:<20} {:<16} {:>28} {:>28}\n",
            "SUBNET", "VIA", "TO PEER", "FROM PEER"
        );
        for p in &self.0 {
            let _ = writeln!(
                out,
                "{:<20} {:<16} {:>28} {:>28}",
                p.subnet.to_string(),
                p.via.to_string(),
                p.to_peer.to_string(),
                p.from_peer.to_string()
            );
        }
        out
    }
}

pub async fn run(command: PeerCommand, json: bool) -> Result<String> {
    Ok(match command {
        PeerCommand::Add {
            subnet, via, file, ..
        } => match (subnet, via, file) {
            (Some(subnet), Some(via), None) => {
                let peer = Peer::parse(&subnet, &via)?;
                render(&add(&[peer]).await?.remove(0), json)
            }
            (_, _, Some(path)) => {
                let peers = peer::parse_list(&read_input(&path)?)
                    .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
                render(&PeerBatch::from(add(&peers).await?.as_slice()), json)
            }
            _ => {
                return Err(Error::Invalid(
                    "peer add needs SUBNET via ADDRESS, or --file".into(),
                ))
            }
        },
        PeerCommand::Del { subnet } => render(&del(peer::parse_subnet(&subnet)?)?, json),
        PeerCommand::List => render(&PeerTable(statuses(&Node::open()?.maps)?), json),
        PeerCommand::Get { address } => {
            let address = address.parse().map_err(|_| {
                Error::Invalid(format!(
                    "invalid address {address:?}: expected an IPv4 address"
                ))
            })?;
            render(&way_to(&Node::open()?, address)?, json)
        }
    })
}

/// Where a container's packet to `address` goes, as `peer get` reports it.
#[derive(Debug, Serialize)]
pub struct Way {
    pub address: Ipv4Addr,
    #[serde(flatten)]
    pub path: Path,
}

#[derive(Debug, Serialize)]
#[serde(tag = "path", rename_all = "snake_case")]
pub enum Path {
    /// In the local container subnet: the bridge delivers it.
    Local { subnet: Ipv4Net },
    /// To the peer host owning the subnet (peer subnets never overlap).
    Peer { subnet: Ipv4Net, via: Ipv4Addr },
    /// Translated to the uplink's address and sent out of the uplink.
    Snat { source: Ipv4Addr },
    /// Left to the host's routing, untranslated (SNAT off, or excluded).
    Host,
}

impl Report for Way {
    fn text(&self) -> String {
        let a = self.address;
        match &self.path {
            Path::Local { subnet } => format!(
                "{a}: local subnet {subnet} (docker0)
"
            ),
            Path::Peer { subnet, via } => format!(
                "{a}: peer {subnet} via {via}
"
            ),
            Path::Snat { source } => format!(
                "{a}: no peer; SNAT to {source} out of the uplink
"
            ),
            Path::Host => format!(
                "{a}: no peer; the host's routing, untranslated
"
            ),
        }
    }
}

/// The datapath's decision for a container's packet to `address`, in its
/// order: local subnet, peer, SNAT unless excluded.
fn way_to(node: &Node, address: Ipv4Addr) -> Result<Way> {
    let local = node.local_subnet()?;
    let path = if local.net.contains(&address) {
        Path::Local { subnet: local.net }
    } else if let Some(peer) = node
        .maps
        .peers()?
        .into_iter()
        .find(|p| p.peer.subnet.contains(&address))
    {
        Path::Peer {
            subnet: peer.peer.subnet,
            via: peer.peer.via,
        }
    } else {
        let config = &node.config;
        let uplink = from_map_addr(config.uplink_addr);
        let excluded = address == uplink
            || address == local.gateway
            // Multicast, reserved and broadcast: as the datapath decides it.
            || address.octets()[0] >= 224
            || node.maps.exclusions()?.iter().any(|n| n.contains(&address));
        if config.nat_enabled != 0 && !excluded {
            Path::Snat { source: uplink }
        } else {
            Path::Host
        }
    };
    Ok(Way { address, path })
}

/// A file's text, or standard input's for `-`.
fn read_input(path: &std::path::Path) -> Result<String> {
    if path == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin()).map_err(io_context("reading standard input"))
    } else {
        std::fs::read_to_string(path).map_err(io_context(format!("reading {}", path.display())))
    }
}

/// Adds (or switches) peers: all are validated, against the host, the
/// existing peers and each other, before any is written.
async fn add(peers: &[Peer]) -> Result<Vec<PeerReport>> {
    let mut node = Node::open()?;
    let nl = Netlink::connect()?;
    let uplink_nets = nl.ipv4_addresses(node.config.uplink_ifindex).await?;
    let existing: Vec<Peer> = node.maps.peers()?.iter().map(|p| p.peer).collect();
    let changes = check_peers(peers, &node.local_subnet()?, &uplink_nets, &existing)?;
    let to_write: Vec<_> = peers
        .iter()
        .zip(&changes)
        .filter(|(_, c)| **c != PeerChange::Unchanged)
        .map(|(p, _)| *p)
        .collect();
    node.maps.upsert_peers(&to_write)?;
    node.resolve_peer_hosts(&nl, to_write.iter().map(|p| p.via))
        .await;
    Ok(peers
        .iter()
        .zip(changes)
        .map(|(peer, change)| PeerReport {
            subnet: peer.subnet,
            via: Some(peer.via),
            change: change.into(),
        })
        .collect())
}

fn del(subnet: Ipv4Net) -> Result<PeerReport> {
    let mut node = Node::open()?;
    let Some(stored) = node
        .maps
        .peers()?
        .into_iter()
        .find(|p| p.peer.subnet == subnet)
    else {
        return Err(Error::Invalid(format!("no peer {subnet}")));
    };
    node.maps.remove_peers(&[subnet])?;
    Ok(PeerReport {
        subnet,
        via: Some(stored.peer.via),
        change: PeerOutcome::Deleted,
    })
}

/// Every peer with its traffic.
pub fn statuses(maps: &Maps) -> Result<Vec<PeerStatus>> {
    maps.peers()?
        .into_iter()
        .map(|p| {
            let traffic = maps.peer_traffic(p.slot)?;
            Ok(PeerStatus {
                subnet: p.peer.subnet,
                via: p.peer.via,
                to_peer: traffic.to_peer.into(),
                from_peer: traffic.from_peer.into(),
            })
        })
        .collect()
}
