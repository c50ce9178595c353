//! The changing half of `up`: bridge, address, maps, programs and links,
//! each step recorded so that a failure undoes the steps before it.
use std::net::Ipv4Addr;

use dr_common::{
    clock::JiffiesClock, DatapathConfig, NodeState, OWNED_ADDRESS, OWNED_BRIDGE, XDP_OFF,
};
use ipnet::Ipv4Net;
use tracing::{debug, warn};

use super::args::UpArgs;
use crate::{
    bpffs::PinDir,
    datapath::{self, Attached, Hook, Kind, Side},
    docker_config::DockerConfigChange,
    error::Result,
    kernel::{self, AttachMode},
    maps::{self, Maps},
    migrate,
    netlink::{Interface, Netlink},
    node::{self, side_ifindex, sync_endpoints, sync_published},
    object,
    subnet::to_map_addr,
};

/// Work done by `up`, undone in reverse order if a later step fails.
enum Undo {
    DeleteInterface(u32),
    DeleteAddress(u32, Ipv4Net),
    RemoveDir,
    RemoveMapPins,
    Detach(Hook, String),
    /// The port program off docker0's ports (this bridge's), and its pins.
    UnhookPorts(u32),
}

async fn undo_all(nl: &Netlink, pins: &PinDir, undo: Vec<Undo>) {
    for step in undo.into_iter().rev() {
        let result = match step {
            Undo::DeleteInterface(index) => nl.delete_interface(index).await,
            Undo::DeleteAddress(index, addr) => nl.delete_address(index, addr).await,
            Undo::RemoveDir => pins.remove(),
            Undo::RemoveMapPins => datapath::remove_map_pins(pins),
            Undo::Detach(hook, iface) => datapath::detach(pins, hook, Some(&iface)).map(|_| ()),
            Undo::UnhookPorts(bridge) => match nl.bridge_ports(bridge).await {
                Ok(ports) => datapath::unhook_ports(pins, &ports),
                Err(e) => Err(e),
            },
        };
        if let Err(e) = result {
            warn!("rolling back: {e}");
        }
    }
}

/// The configuration `up` wants, given the interfaces it found and the
/// clock it measured.
pub(super) fn desired_config(
    args: &UpArgs,
    bridge_ifindex: u32,
    uplink: &Interface,
    uplink_addr: Ipv4Addr,
    bridge_mac: [u8; 6],
    peer_span: u32,
    clock: JiffiesClock,
) -> DatapathConfig {
    let (nat_port_min, nat_port_max) = args.nat.ports;
    DatapathConfig {
        enabled: 1,
        local_net: to_map_addr(args.subnet.net.network()),
        local_mask: to_map_addr(args.subnet.net.netmask()),
        retired_prefix_len: 0,
        gateway: to_map_addr(args.subnet.gateway),
        bridge_ifindex,
        uplink_ifindex: uplink.index,
        uplink_addr: to_map_addr(uplink_addr),
        uplink_mtu: uplink.mtu,
        retired_owned: 0,
        nat_enabled: args.nat.cluster_cidr.is_some().into(),
        nat_port_min: nat_port_min.into(),
        nat_port_max: nat_port_max.into(),
        nat_timeouts: args.nat.timeouts,
        bridge_mac,
        retired_xdp_mode: 0,
        retired_datapath_log: 0,
        peer_span,
        retired_object_hash: 0,
        clock,
    }
}

/// The node state `up` records, given what it owns and how XDP is attached.
pub(super) fn desired_state(args: &UpArgs, owned: u32, xdp_mode: u8) -> NodeState {
    node::state::recorded(owned, object::hash(), xdp_mode, args.datapath_log)
}

/// What `up` found, all checked, with the node lock held.
pub(super) struct Setup<'a> {
    pub nl: &'a Netlink,
    pub pins: &'a PinDir,
    pub args: &'a UpArgs,
    pub uplink: &'a Interface,
    pub uplink_addr: Ipv4Addr,
    /// The configuration and node state of the datapath that is up, if it is.
    pub existing: Option<(DatapathConfig, NodeState)>,
}

/// What the setup changed.
pub(super) struct Done {
    pub created_bridge: bool,
    pub added_address: bool,
    pub attached: Vec<(&'static str, Attached)>,
    pub docker_config: Option<DockerConfigChange>,
}

impl Setup<'_> {
    /// Sets everything up, or undoes what it did and fails.
    pub async fn run(self, bridge: Option<Interface>, attach: AttachMode) -> Result<Done> {
        let mut undo = Vec::new();
        let result = self.apply(bridge, attach, &mut undo).await;
        if result.is_err() {
            undo_all(self.nl, self.pins, undo).await;
        }
        result
    }

    async fn apply(
        &self,
        bridge: Option<Interface>,
        attach: AttachMode,
        undo: &mut Vec<Undo>,
    ) -> Result<Done> {
        let Self {
            nl,
            pins,
            args,
            uplink,
            uplink_addr,
            existing,
        } = *self;
        let mut owned = existing.map_or(0, |(_, state)| state.owned);
        let created_bridge = bridge.is_none();
        let bridge = match bridge {
            Some(b) => b,
            None => {
                let b = nl.create_bridge(&args.bridge).await?;
                undo.push(Undo::DeleteInterface(b.index));
                owned |= OWNED_BRIDGE;
                b
            }
        };
        let bip = Ipv4Net::new(args.subnet.gateway, args.subnet.net.prefix_len())
            .expect("prefix checked by LocalSubnet");
        let added_address = !nl.ipv4_addresses(bridge.index).await?.contains(&bip);
        if added_address {
            nl.add_address(bridge.index, bip).await?;
            if !created_bridge {
                undo.push(Undo::DeleteAddress(bridge.index, bip));
            }
            owned |= OWNED_ADDRESS;
        }
        nl.set_up(bridge.index).await?;

        if !pins.exists() {
            pins.create()?;
            undo.push(Undo::RemoveDir);
        }
        if !maps::pinned(pins.path()) {
            undo.push(Undo::RemoveMapPins);
        }
        // Pinned peer tables keep their capacity (`up` refused another one).
        let max_peers = maps::peer_capacity(pins.path())?.unwrap_or(args.max_peers());
        let mut ebpf = datapath::load(
            pins.path(),
            args.nat.table_size,
            max_peers,
            args.datapath_log,
            kernel::coarse_clock(),
        )?;
        let mut maps = Maps::open(pins.path())?;
        // A map new in this version starts empty (upgrading from an older dr).
        maps.sync_peer_hosts()?;
        // Exclusions first: the datapath must never translate what they cover.
        maps.set_exclusions(&args.nat.exclusions())?;
        let bridge_mac = bridge.mac.unwrap_or_default();
        let old_xdp = existing.map_or(XDP_OFF, |(_, state)| state.xdp_mode);
        // The node state before the configuration, which zeroes an older
        // dr's bookkeeping: a dr-ctl killed between the two loses nothing.
        node::state::write(pins.path(), &desired_state(args, owned, old_xdp))?;
        let peer_span = maps.peer_span()?;
        let clock = match existing
            .map(|(c, _)| c.clock)
            .filter(JiffiesClock::measured)
        {
            // Measured since boot: the pins do not outlive it.
            Some(clock) => clock,
            None => datapath::measure_clock(&mut ebpf).unwrap_or_else(|e| {
                warn!("flows are timed by the kernel's clock, at a higher cost: {e}");
                JiffiesClock::default()
            }),
        };
        let config = desired_config(
            args,
            bridge.index,
            uplink,
            uplink_addr,
            bridge_mac,
            peer_span,
            clock,
        );
        maps.set_config(&config)?;
        datapath::pin_sweeper(&mut ebpf, pins.path())?;
        let mut attached = Vec::new();
        let mut xdp_mode = XDP_OFF;
        for hook in Hook::ALL {
            let iface = match hook.side() {
                Side::Bridge => &bridge,
                Side::Uplink => uplink,
            };
            if existing.is_some_and(|(c, _)| side_ifindex(&c, hook.side()) != iface.index) {
                // The interface was recreated: its old attachment went with it.
                datapath::detach(pins, hook, None)?;
            }
            if !args.wants(hook) {
                datapath::detach(pins, hook, Some(&iface.name))?;
                continue;
            }
            let done = datapath::attach(&mut ebpf, pins, hook, &iface.name, attach)?;
            if done.how == Attached::New {
                undo.push(Undo::Detach(hook, iface.name.clone()));
            }
            debug!("{} on {}: {:?}", hook.program(), iface.name, done.how);
            if hook.kind() == Kind::Xdp {
                // A replaced program keeps its mode. The report lists the
                // TC programs; XDP is reported by its mode (`status`).
                xdp_mode = done.xdp_mode.unwrap_or(old_xdp);
            } else {
                attached.push((hook.program(), done.how));
            }
        }
        // Containers the host already knows get direct delivery (TC's and
        // XDP's) and their ports the new port program at once; `sync`
        // learns later ones.
        if !pins.join(datapath::PORT_PROGRAM_PIN).exists() {
            undo.push(Undo::UnhookPorts(bridge.index));
        }
        datapath::pin_port_program(&mut ebpf, pins.path())?;
        let local = &args.subnet.net;
        sync_endpoints(nl, &mut maps, pins, bridge.index, local, true, xdp_mode).await?;
        let published = sync_published(&mut maps, &config, &uplink.name)?;
        debug!("published ports: {published:?}");
        node::state::write(pins.path(), &desired_state(args, owned, xdp_mode))?;
        // The new programs are attached: an older dr's maps are no longer used.
        migrate::finish(pins.path())?;
        Ok(Done {
            created_bridge,
            added_address,
            attached,
            docker_config: args.merge_docker_config(uplink)?,
        })
    }
}
