//! Interface and address management through rtnetlink.
use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd, BorrowedFd},
};

use futures::{StreamExt, TryStreamExt};
use ipnet::Ipv4Net;
use rtnetlink::{
    packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST},
    packet_route::{
        address::{AddressAttribute, AddressMessage},
        link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState},
        nsid::{NsidAttribute, NsidMessage},
        AddressFamily, RouteNetlinkMessage,
    },
    Handle, LinkBridge, LinkUnspec,
};

use crate::error::{io_context, Error, Result};

/// An interface as dr sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub index: u32,
    pub name: String,
    pub is_bridge: bool,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// The other end, if this is one end of a veth pair.
    pub veth_peer: Option<VethPeer>,
}

/// A local container as the kernel knows it: its address, MAC and the
/// bridge port (its host-side veth) the bridge learned the MAC on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub addr: Ipv4Addr,
    pub mac: [u8; 6],
    pub port: u32,
}

pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a rtnetlink socket in the current network namespace; needs a tokio runtime.
    pub fn connect() -> Result<Self> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(io_context("opening a netlink socket"))?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    pub async fn interface(&self, name: &str) -> Result<Option<Interface>> {
        let mut links = self.handle.link().get().execute();
        while let Some(link) = links.try_next().await? {
            let iface = interface_of(&link);
            if iface.name == name {
                return Ok(Some(iface));
            }
        }
        Ok(None)
    }

    /// Like [`Self::interface`], but a missing interface is an error.
    pub async fn require_interface(&self, name: &str) -> Result<Interface> {
        self.interface(name)
            .await?
            .ok_or_else(|| Error::NoSuchInterface(name.to_string()))
    }

    pub async fn interface_by_index(&self, index: u32) -> Result<Option<Interface>> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(link) => Ok(link.as_ref().map(interface_of)),
            // The kernel answers a dump for a missing index with ENODEV.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The interfaces enslaved to `bridge` (a container's veth each, under Docker).
    pub async fn bridge_ports(&self, bridge: u32) -> Result<Vec<Interface>> {
        let mut links = self.handle.link().get().execute();
        let mut ports = Vec::new();
        while let Some(link) = links.try_next().await? {
            if link
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Controller(c) if *c == bridge))
            {
                ports.push(interface_of(&link));
            }
        }
        Ok(ports)
    }

    /// Whether interface `index` has a TC ingress filter with `priority`
    /// and `handle` (a cls_bpf filter of dr's, in netlink mode). No clsact
    /// qdisc, or no interface: no filter.
    pub async fn has_ingress_filter(&self, index: u32, priority: u16, handle: u32) -> Result<bool> {
        let mut filters = self
            .handle
            .traffic_filter(index as i32)
            .get()
            .ingress()
            .execute();
        loop {
            match filters.try_next().await {
                Ok(Some(msg)) => {
                    let h = msg.header.handle;
                    let filter_handle = (u32::from(h.major) << 16) | u32::from(h.minor);
                    if filter_handle == handle && (msg.header.info >> 16) as u16 == priority {
                        return Ok(true);
                    }
                }
                Ok(None) => return Ok(false),
                Err(rtnetlink::Error::NetlinkError(e))
                    if matches!(-e.raw_code(), libc::EINVAL | libc::ENOENT | libc::ENODEV) =>
                {
                    return Ok(false)
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The interface's IPv4 addresses with their prefix lengths.
    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<Ipv4Net>> {
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = addrs.try_next().await? {
            if msg.header.index != index {
                continue;
            }
            if let Some(addr) = ipv4_of(&msg) {
                if let Ok(net) = Ipv4Net::new(addr, msg.header.prefix_len) {
                    out.push(net);
                }
            }
        }
        Ok(out)
    }

    /// Every IPv4 address of this network namespace.
    pub async fn all_ipv4_addresses(&self) -> Result<Vec<Ipv4Addr>> {
        let mut addrs = self.handle.address().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = addrs.try_next().await? {
            out.extend(ipv4_of(&msg));
        }
        Ok(out)
    }

    /// Creates a bridge whose MAC address stays fixed: a bridge otherwise
    /// takes the lowest MAC of its ports, which changes as containers come
    /// and go (and the XDP path writes docker0's MAC into frames).
    pub async fn create_bridge(&self, name: &str) -> Result<Interface> {
        self.handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await?;
        let bridge = self.require_interface(name).await?;
        if let Some(mac) = bridge.mac {
            self.handle
                .link()
                .set(
                    LinkUnspec::new_with_index(bridge.index)
                        .address(mac.to_vec())
                        .build(),
                )
                .execute()
                .await?;
        }
        Ok(bridge)
    }

    pub async fn add_address(&self, index: u32, addr: Ipv4Net) -> Result<()> {
        self.handle
            .address()
            .add(index, IpAddr::V4(addr.addr()), addr.prefix_len())
            .execute()
            .await?;
        Ok(())
    }

    pub async fn delete_address(&self, index: u32, addr: Ipv4Net) -> Result<()> {
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = addrs.try_next().await? {
            if msg.header.index == index
                && msg.header.prefix_len == addr.prefix_len()
                && ipv4_of(&msg) == Some(addr.addr())
            {
                self.handle.address().del(msg).execute().await?;
            }
        }
        Ok(())
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await?;
        Ok(())
    }

    /// Containers behind `bridge`: its IPv4 neighbours joined with the
    /// bridge's forwarding database (MAC -> port).
    pub async fn bridge_neighbours(&self, bridge: u32) -> Result<Vec<Neighbour>> {
        let mut ports = std::collections::HashMap::new();
        let mut fdb = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        while let Some(msg) = fdb.try_next().await? {
            let mut mac = None;
            let mut master = None;
            for attr in &msg.attributes {
                match attr {
                    NeighbourAttribute::LinkLayerAddress(m) => mac = mac_of(m),
                    NeighbourAttribute::Controller(c) => master = Some(*c),
                    _ => {}
                }
            }
            if let (Some(mac), Some(master)) = (mac, master) {
                if master == bridge && msg.header.ifindex != bridge {
                    ports.insert(mac, msg.header.ifindex);
                }
            }
        }
        let mut out = Vec::new();
        let mut arp = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute();
        while let Some(msg) = arp.try_next().await? {
            let usable = matches!(
                msg.header.state,
                NeighbourState::Reachable
                    | NeighbourState::Stale
                    | NeighbourState::Delay
                    | NeighbourState::Probe
                    | NeighbourState::Permanent
            );
            if msg.header.ifindex != bridge || !usable {
                continue;
            }
            let mut addr = None;
            let mut mac = None;
            for attr in &msg.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => addr = Some(*a),
                    NeighbourAttribute::LinkLayerAddress(m) => mac = mac_of(m),
                    _ => {}
                }
            }
            if let (Some(addr), Some(mac)) = (addr, mac) {
                if let Some(port) = ports.get(&mac) {
                    out.push(Neighbour {
                        addr,
                        mac,
                        port: *port,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Has the kernel resolve `addr`'s MAC on `index` (ARP) unless it knows
    /// it already; returns without waiting for the answer.
    pub async fn resolve_neighbour(&self, index: u32, addr: Ipv4Addr) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(addr))
            .state(NeighbourState::None)
            .flags(NeighbourFlags::Use)
            .replace()
            .execute()
            .await?;
        Ok(())
    }

    pub async fn delete_interface(&self, index: u32) -> Result<()> {
        self.handle.link().del(index).execute().await?;
        Ok(())
    }

    /// The id this namespace gives the network namespace `netns` (an open
    /// `/proc/<pid>/ns/net`, or a bind mount of one); None if it has given
    /// it none.
    pub async fn nsid_of(&self, netns: BorrowedFd<'_>) -> Result<Option<i32>> {
        let mut msg = NsidMessage::default();
        msg.attributes = vec![NsidAttribute::Fd(netns.as_raw_fd() as u32)];
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
        req.header.flags = NLM_F_REQUEST;
        let mut responses = self.handle.clone().request(req)?;
        while let Some(resp) = responses.next().await {
            match resp.payload {
                NetlinkPayload::Error(e) => return Err(rtnetlink::Error::NetlinkError(e).into()),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(msg)) => {
                    return Ok(msg.attributes.iter().find_map(|a| match a {
                        NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                        _ => None,
                    }));
                }
                _ => {}
            }
        }
        Ok(None)
    }
}

/// The other end of a veth pair: its ifindex in its namespace, and that
/// namespace's id here (None: this namespace).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VethPeer {
    pub index: u32,
    pub nsid: Option<i32>,
}

/// An Ethernet address from a netlink attribute.
fn mac_of(bytes: &[u8]) -> Option<[u8; 6]> {
    bytes.try_into().ok()
}

fn interface_of(link: &LinkMessage) -> Interface {
    let mut iface = Interface {
        index: link.header.index,
        name: String::new(),
        is_bridge: false,
        mac: None,
        mtu: 0,
        veth_peer: None,
    };
    let (mut is_veth, mut peer) = (false, VethPeer::default());
    for attr in &link.attributes {
        match attr {
            LinkAttribute::IfName(name) => iface.name = name.clone(),
            LinkAttribute::Mtu(mtu) => iface.mtu = *mtu,
            LinkAttribute::Address(mac) => iface.mac = mac_of(mac),
            LinkAttribute::LinkInfo(infos) => {
                let kind = |k: InfoKind| infos.iter().any(|i| *i == LinkInfo::Kind(k.clone()));
                iface.is_bridge |= kind(InfoKind::Bridge);
                is_veth |= kind(InfoKind::Veth);
            }
            LinkAttribute::Link(index) => peer.index = *index,
            LinkAttribute::LinkNetNsId(nsid) => peer.nsid = Some(*nsid),
            _ => {}
        }
    }
    iface.veth_peer = (is_veth && peer.index != 0).then_some(peer);
    iface
}

fn ipv4_of(msg: &AddressMessage) -> Option<Ipv4Addr> {
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS differs only on point-to-point links.
    let mut found = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(IpAddr::V4(a)) => return Some(*a),
            AddressAttribute::Address(IpAddr::V4(a)) => found = Some(*a),
            _ => {}
        }
    }
    found
}
