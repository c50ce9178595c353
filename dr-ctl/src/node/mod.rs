//! dr's state on this node (this network namespace): the pin directory,
//! the lock, the maps, the configuration and dr-ctl's node state, opened
//! here for every command.
mod lock;
pub mod state;

use std::{collections::HashSet, net::Ipv4Addr};

use dr_common::{DatapathConfig, Endpoint, NodeState, XDP_GENERIC, XDP_NATIVE};
use ipnet::Ipv4Net;
use tracing::warn;

use crate::{
    bpffs::PinDir,
    container_gro,
    datapath::{self, Side},
    error::{Error, Result},
    iptables,
    maps::Maps,
    netlink::{Interface, Neighbour, Netlink},
    peer::{Peer, PeerDiff},
    published::{self, LeftToKernel, PublishedPorts, Scope},
    subnet::{from_map_addr, to_map_addr, LocalSubnet},
};

/// This namespace's pin directory, with the node lock held by commands that
/// change or must see a consistent state.
pub struct NodeDir {
    pub pins: PinDir,
    lock: Option<lock::NodeLock>,
}

impl NodeDir {
    /// Takes the node lock (waiting for another dr-ctl), then finds the pin
    /// directory: whatever is read from it from now on stays true until the
    /// lock is dropped.
    pub fn lock() -> Result<Self> {
        let lock = lock::NodeLock::take()?;
        Ok(Self {
            pins: PinDir::locate()?,
            lock: Some(lock),
        })
    }

    /// The pin directory without the lock, for readers that must never wait
    /// behind a long `up` (metrics scrapes).
    pub fn unlocked() -> Result<Self> {
        Ok(Self {
            pins: PinDir::locate()?,
            lock: None,
        })
    }

    /// Opens the maps, configuration and node state of a datapath that is
    /// up; `NotUp` otherwise.
    pub fn open(self) -> Result<Node> {
        if !self.pins.exists() {
            return Err(Error::NotUp);
        }
        let maps = Maps::open(self.pins.path())?;
        let config = maps.enabled_config()?;
        let state = state::pinned(self.pins.path(), &config)?;
        Ok(Node {
            dir: self,
            maps,
            config,
            state,
        })
    }
}

/// A datapath that is up.
pub struct Node {
    pub dir: NodeDir,
    pub maps: Maps,
    pub config: DatapathConfig,
    pub state: NodeState,
}

impl Node {
    /// Opens the datapath that is up, holding the node lock.
    pub fn open() -> Result<Self> {
        NodeDir::lock()?.open()
    }

    pub fn pins(&self) -> &PinDir {
        &self.dir.pins
    }

    /// Lets other dr-ctl commands run while this one only reads what it
    /// has opened (`monitor`).
    pub fn unlock(&mut self) {
        self.dir.lock = None;
    }

    pub fn local_subnet(&self) -> Result<LocalSubnet> {
        local_subnet(&self.config)
    }

    /// Makes the peer map exactly `wanted` (already validated): new and switched
    /// peers are written before stale ones are removed, so a peer that stays is
    /// never missing. Returns what changed.
    pub async fn reconcile_peers(&mut self, wanted: &[Peer]) -> Result<PeerDiff> {
        let current: Vec<Peer> = self.maps.peers()?.iter().map(|p| p.peer).collect();
        let diff = PeerDiff::between(&current, wanted);
        let upserts = diff.upserts();
        self.maps.upsert_peers(&upserts)?;
        let stale: Vec<_> = diff.remove.iter().map(|p| p.subnet).collect();
        self.maps.remove_peers(&stale)?;
        self.resolve_peer_hosts(&Netlink::connect()?, upserts.iter().map(|p| p.via))
            .await;
        Ok(diff)
    }

    /// Starts the kernel's resolution of peer hosts' MAC addresses on the
    /// uplink, so that the host's own first packet to a peer subnet finds the
    /// peer host in the neighbour table (see `uplink_egress.rs`). Best effort:
    /// a failure only costs that first packet.
    pub async fn resolve_peer_hosts(
        &self,
        nl: &Netlink,
        hosts: impl IntoIterator<Item = Ipv4Addr>,
    ) {
        let unique: std::collections::BTreeSet<Ipv4Addr> = hosts.into_iter().collect();
        for host in unique {
            if let Err(e) = nl.resolve_neighbour(self.config.uplink_ifindex, host).await {
                warn!("resolving peer host {host}: {e}");
            }
        }
    }
}

/// The local subnet a configuration holds.
pub fn local_subnet(config: &DatapathConfig) -> Result<LocalSubnet> {
    let mask = from_map_addr(config.local_mask);
    let net = Ipv4Net::with_netmask(from_map_addr(config.local_net), mask)
        .map_err(|_| Error::Internal(format!("corrupt netmask {mask}")))?;
    Ok(LocalSubnet {
        gateway: from_map_addr(config.gateway),
        net,
    })
}

/// Whether `config` is for `subnet` (same network, netmask and gateway).
pub fn same_subnet(config: &DatapathConfig, subnet: &LocalSubnet) -> bool {
    config.local_net == to_map_addr(subnet.net.network())
        && config.local_mask == to_map_addr(subnet.net.netmask())
        && config.gateway == to_map_addr(subnet.gateway)
}

/// The ifindex of `side`'s interface in `config`.
pub fn side_ifindex(config: &DatapathConfig, side: Side) -> u32 {
    match side {
        Side::Bridge => config.bridge_ifindex,
        Side::Uplink => config.uplink_ifindex,
    }
}

pub fn xdp_mode_name(mode: u8) -> &'static str {
    match mode {
        XDP_NATIVE => "native",
        XDP_GENERIC => "generic",
        _ => "off",
    }
}

/// What [`sync_endpoints`] learned.
#[derive(Clone, Copy, Debug)]
pub struct Learned {
    /// Containers in `ENDPOINTS`.
    pub endpoints: usize,
    /// Of them, those XDP delivers to (`Endpoint::xdp_ready`).
    pub xdp_ready: usize,
    /// Their docker0 ports with dr's port program.
    pub port_hooks: usize,
}

/// Fills `ENDPOINTS` with the containers behind the bridge that are in the
/// local subnet, from the kernel's neighbour table and bridge FDB, and puts
/// dr's port program on their docker0 ports (`replace`: swap its program
/// where attached, after `up` pinned a new one). A container whose slot
/// another holds (`endpoints::placement`) is left out of `ENDPOINTS`: its
/// packets go through docker0, as for a container not learned yet, and a
/// warning says how many. With XDP in `xdp_mode`,
/// marks the endpoints XDP may redirect into: all in generic mode, in
/// native mode those whose veth's other end has GRO on (turned on here:
/// `container_gro`).
pub async fn sync_endpoints(
    nl: &Netlink,
    maps: &mut Maps,
    pins: &PinDir,
    bridge: u32,
    local: &Ipv4Net,
    replace: bool,
    xdp_mode: u8,
) -> Result<Learned> {
    let neighbours: Vec<Neighbour> = nl
        .bridge_neighbours(bridge)
        .await?
        .into_iter()
        .filter(|n| local.contains(&n.addr))
        .collect();
    let mut endpoints: Vec<Endpoint> = neighbours
        .iter()
        .map(|n| Endpoint {
            addr: to_map_addr(n.addr),
            ifindex: n.port,
            mac: n.mac,
            xdp_ready: u8::from(xdp_mode == XDP_GENERIC),
            _pad: 0,
        })
        .collect();
    if xdp_mode == XDP_NATIVE {
        let ports = endpoints.iter().map(|e| e.ifindex).collect();
        let ready = container_gro::ready_for_xdp(nl, &ports).await?;
        for endpoint in &mut endpoints {
            endpoint.xdp_ready = u8::from(ready.contains(&endpoint.ifindex));
        }
    }
    let stored = maps.set_endpoints(&endpoints)?;
    let shared = crate::endpoints::crowded_out(&endpoints, &stored);
    if shared > 0 {
        warn!(
            "{shared} local containers are delivered through the bridge: each shares its slot \
             in the endpoint table (the low 12 bits of its address) with another"
        );
    }
    Ok(Learned {
        endpoints: stored.len(),
        xdp_ready: stored.iter().filter(|e| e.xdp_ready != 0).count(),
        port_hooks: hook_learned_ports(nl, pins, bridge, &neighbours, replace).await?,
    })
}

/// Puts dr's port program on the docker0 port of every learned container
/// (all of them: the program needs no `ENDPOINTS` entry), in the TC hooks'
/// attach mode; returns how many ports have it. Only ports behind which a
/// container of the local subnet answered: anything else enslaved to the
/// bridge is left alone.
async fn hook_learned_ports(
    nl: &Netlink,
    pins: &PinDir,
    bridge: u32,
    neighbours: &[Neighbour],
    replace: bool,
) -> Result<usize> {
    let Some(mode) = datapath::attached_mode(pins) else {
        return Ok(0);
    };
    if !pins.join(datapath::PORT_PROGRAM_PIN).exists() {
        // A datapath an older dr set up: its next `up` pins the program.
        return Ok(0);
    }
    let current = nl.bridge_ports(bridge).await?;
    let learned: HashSet<u32> = neighbours.iter().map(|n| n.port).collect();
    let ports: Vec<Interface> = current
        .iter()
        .filter(|p| learned.contains(&p.index))
        .cloned()
        .collect();
    datapath::hook_ports(pins, mode, &ports, &current, replace)
}

/// Learns Docker's published ports from its DNAT rules (`iptables-save`)
/// and puts those dr may translate itself (traffic to the uplink's address
/// on `uplink`) in `PUBLISHED_PORTS`; the rest stay the kernel's, each with
/// the reason. Without readable rules nothing is translated by dr.
pub fn sync_published(
    maps: &mut Maps,
    config: &DatapathConfig,
    uplink: &str,
) -> Result<PublishedPorts> {
    let scope = Scope {
        config: *config,
        uplink,
    };
    let found = match (iptables::save("nat"), iptables::save("filter")) {
        (Ok(nat), Ok(filter)) => published::parse(&nat, &filter, &scope),
        (Err(reason), _) | (_, Err(reason)) => PublishedPorts {
            offloaded: Vec::new(),
            left_to_kernel: vec![LeftToKernel {
                rule: String::new(),
                reason,
            }],
        },
    };
    maps.set_published_ports(&found.offloaded)?;
    Ok(found)
}
