//! The operations behind each dr-ctl command. Each validates its input fully
//! before changing anything, and undoes its own partial work on failure.
use std::{net::Ipv4Addr, path::PathBuf};

use dr_common::{
    nat::{State, Timeouts, IPPROTO_TCP, IPPROTO_UDP},
    Counter, DatapathConfig, Endpoint, Traffic, OWNED_ADDRESS, OWNED_BRIDGE, XDP_GENERIC,
    XDP_NATIVE, XDP_OFF,
};
use ipnet::Ipv4Net;
use serde::Serialize;
use tracing::{debug, warn};

use crate::{
    bpffs::PinDir,
    datapath::{self, Attached, Hook, HookIds, Side},
    docker_config::{self, DockerConfigChange, DockerSettings},
    error::{io_context, Error, Result},
    kernel::{self, AttachMode},
    maps::{self, Maps},
    migrate,
    nat_plan::NatPlan,
    netlink::{Interface, Netlink},
    plan::{PeerDiff, Plan},
    subnet::{
        check_peers, from_map_addr, overlaps, parse_peer_subnet, to_map_addr, LocalSubnet,
        PeerChange,
    },
};

/// Inputs of `dr-ctl up`.
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
}

#[derive(Debug, Serialize)]
pub struct UpReport {
    pub changed: bool,
    pub pin_dir: String,
    pub created_bridge: bool,
    pub added_address: bool,
    pub attach_mode: AttachMode,
    /// Why the attach mode is not TCX, when the kernel chose.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attach_note: Option<String>,
    #[serde(serialize_with = "crate::output::pairs_as_map")]
    pub attached: Vec<(&'static str, Attached)>,
    pub docker_config: Option<DockerConfigChange>,
}

/// Packet and byte counts, as reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub packets: u64,
    pub bytes: u64,
}

impl From<Traffic> for Counts {
    fn from(t: Traffic) -> Self {
        Self {
            packets: t.packets,
            bytes: t.bytes,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PeerStatus {
    pub subnet: Ipv4Net,
    pub via: Ipv4Addr,
    pub to_peer: Counts,
    pub from_peer: Counts,
}

#[derive(Clone, Debug, Serialize)]
pub struct HookStatus {
    pub interface: String,
    pub ifindex: u32,
    pub program: &'static str,
    pub direction: &'static str,
    pub attached: bool,
    #[serde(flatten)]
    pub ids: Option<HookIds>,
}

/// SNAT settings and table use, as reported.
#[derive(Clone, Debug, Serialize)]
pub struct NatStatus {
    pub enabled: bool,
    /// Destinations left untranslated (cluster CIDR and --no-masquerade).
    pub excluded: Vec<Ipv4Net>,
    pub ports: String,
    pub table_size: u32,
    pub entries: usize,
    pub timeouts: Timeouts,
}

/// One side of a translation.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Tuple {
    pub src_addr: Ipv4Addr,
    /// For ICMP echo: the identifier.
    pub src_port: u16,
    pub dst_addr: Ipv4Addr,
    pub dst_port: u16,
}

#[derive(Clone, Debug, Serialize)]
pub struct NatEntry {
    pub proto: &'static str,
    pub original: Tuple,
    pub translated: Tuple,
    pub state: &'static str,
    pub age_secs: u64,
    pub idle_secs: u64,
    pub expires_in_secs: u64,
}

#[derive(Debug, Serialize)]
pub struct NatRemoved {
    pub removed: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub pin_dir: String,
    pub local_subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub uplink_address: Ipv4Addr,
    /// What the datapath checks container packets against (see `sync`).
    pub uplink_mtu: u32,
    /// How the TC programs are attached ("tcx" or "netlink"), if they are.
    pub attach_mode: Option<AttachMode>,
    pub hooks: Vec<HookStatus>,
    pub peers: Vec<PeerStatus>,
    pub nat: NatStatus,
    /// The XDP fast path: "native", "generic" or "off".
    pub xdp: &'static str,
    /// Local containers the XDP path knows (see `dr-ctl sync`).
    pub endpoints: usize,
    #[serde(serialize_with = "crate::output::pairs_as_map")]
    pub counters: Vec<(&'static str, Counts)>,
}

#[derive(Debug, Serialize)]
pub struct PeerReport {
    pub subnet: Ipv4Net,
    pub via: Option<Ipv4Addr>,
    pub change: &'static str,
}

#[derive(Debug, Serialize)]
pub struct DownReport {
    pub was_up: bool,
    pub pin_dir: String,
    pub removed_bridge: bool,
    pub removed_address: bool,
}

/// Interface names as the kernel accepts them.
fn check_ifname(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\t', '\n', ':']) {
        return Err(Error::Invalid(format!(
            "invalid {what} interface name {name:?}"
        )));
    }
    Ok(())
}

/// Work done by `up`, undone in reverse order if a later step fails.
enum Undo {
    DeleteInterface(u32),
    DeleteAddress(u32, Ipv4Net),
    RemoveDir,
    RemoveMapPins,
    Detach(Hook, String),
    DetachXdp,
}

async fn undo_all(nl: &Netlink, pins: &PinDir, undo: Vec<Undo>) {
    for step in undo.into_iter().rev() {
        let result = match step {
            Undo::DeleteInterface(index) => nl.delete_interface(index).await,
            Undo::DeleteAddress(index, addr) => nl.delete_address(index, addr).await,
            Undo::RemoveDir => pins.remove(),
            Undo::RemoveMapPins => datapath::remove_map_pins(pins),
            Undo::Detach(hook, iface) => datapath::detach(pins, hook, Some(&iface)).map(|_| ()),
            Undo::DetachXdp => datapath::detach_xdp(pins).map(|_| ()),
        };
        if let Err(e) = result {
            warn!("rolling back: {e}");
        }
    }
}

/// The configuration `up` wants, given the interfaces it found.
fn desired_config(
    args: &UpArgs,
    bridge_ifindex: u32,
    uplink: &Interface,
    uplink_addr: Ipv4Addr,
    owned: u32,
    bridge_mac: [u8; 6],
    xdp_mode: u8,
) -> DatapathConfig {
    let (nat_port_min, nat_port_max) = args.nat.ports;
    DatapathConfig {
        enabled: 1,
        local_net: to_map_addr(args.subnet.net.network()),
        local_mask: to_map_addr(args.subnet.net.netmask()),
        local_prefix_len: args.subnet.net.prefix_len().into(),
        gateway: to_map_addr(args.subnet.gateway),
        bridge_ifindex,
        uplink_ifindex: uplink.index,
        uplink_addr: to_map_addr(uplink_addr),
        uplink_mtu: uplink.mtu,
        owned,
        nat_enabled: args.nat.cluster_cidr.is_some().into(),
        nat_port_min: nat_port_min.into(),
        nat_port_max: nat_port_max.into(),
        nat_timeouts: args.nat.timeouts,
        bridge_mac,
        xdp_mode,
        datapath_log: args.datapath_log,
        _pad: 0,
        object_hash: datapath::object_hash(),
    }
}

fn same_subnet(config: &DatapathConfig, subnet: &LocalSubnet) -> bool {
    config.local_net == to_map_addr(subnet.net.network())
        && config.local_prefix_len == u32::from(subnet.net.prefix_len())
        && config.gateway == to_map_addr(subnet.gateway)
}

/// The host's ephemeral port range (net.ipv4.ip_local_port_range).
fn ephemeral_ports() -> Result<(u16, u16)> {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = std::fs::read_to_string(path).map_err(io_context(format!("reading {path}")))?;
    let mut it = text.split_whitespace().filter_map(|p| p.parse().ok());
    match (it.next(), it.next()) {
        (Some(lo), Some(hi)) => Ok((lo, hi)),
        _ => Err(Error::Invalid(format!("cannot parse {path}: {text:?}"))),
    }
}

/// Refuses a bridge that already serves containers on another subnet (a
/// running Docker with its own `bip`): their source addresses would be
/// outside dr's subnet and every packet they send dropped as spoofed.
async fn refuse_occupied_bridge(
    nl: &Netlink,
    bridge: &Interface,
    subnet: &LocalSubnet,
) -> Result<()> {
    let addresses = nl.ipv4_addresses(bridge.index).await?;
    if addresses.iter().any(|a| a.addr() == subnet.gateway) {
        // Adopted already (dr's earlier `up`, or Docker started with dr's bip).
        return Ok(());
    }
    let Some(other) = addresses
        .iter()
        .find(|a| !overlaps(&a.trunc(), &subnet.net))
    else {
        return Ok(());
    };
    let ports = nl.bridge_ports(bridge.index).await?;
    if ports.is_empty() {
        return Ok(());
    }
    Err(Error::Conflict(format!(
        "{} carries {other} with {} attached interface(s) ({}): their traffic would be dropped as spoofed; \
         stop those containers, run `dr-ctl up` again (with --docker-config to set Docker's \"bip\" to {}), \
         then restart dockerd",
        bridge.name,
        ports.len(),
        ports.join(", "),
        subnet.bip()
    )))
}

/// What `up` sets in daemon.json, given the uplink.
fn docker_settings(args: &UpArgs, uplink: &Interface) -> DockerSettings {
    DockerSettings::new(args.subnet.bip(), uplink.mtu)
}

/// Sets `"bip"` (and `"mtu"` for a small uplink MTU) in the daemon.json
/// `up` was given, if any.
fn merge_docker_config(args: &UpArgs, uplink: &Interface) -> Result<Option<DockerConfigChange>> {
    args.docker_config
        .as_ref()
        .map(|path| docker_config::merge(path, &docker_settings(args, uplink)))
        .transpose()
}

/// The ifindex of `side`'s interface in `config`.
fn side_ifindex(config: &DatapathConfig, side: Side) -> u32 {
    match side {
        Side::Bridge => config.bridge_ifindex,
        Side::Uplink => config.uplink_ifindex,
    }
}

pub async fn up(args: &UpArgs) -> Result<UpReport> {
    let kernel = kernel::check_supported(&kernel::running_release()?)?;
    check_ifname("bridge", &args.bridge)?;
    check_ifname("uplink", &args.uplink)?;
    if args.bridge == args.uplink {
        return Err(Error::Invalid(format!(
            "--bridge and --uplink are both {:?}",
            args.bridge
        )));
    }
    args.nat.check(&args.subnet, ephemeral_ports()?)?;
    let nl = Netlink::connect()?;
    let uplink = nl.require_interface(&args.uplink).await?;
    let uplink_nets = nl.ipv4_addresses(uplink.index).await?;
    let Some(uplink_addr) = uplink_nets.first().map(|n| n.addr()) else {
        return Err(Error::Invalid(format!(
            "uplink {} has no IPv4 address",
            args.uplink
        )));
    };
    if let Some(n) = uplink_nets
        .iter()
        .find(|n| overlaps(&n.trunc(), &args.subnet.net))
    {
        return Err(Error::Invalid(format!(
            "local subnet {} overlaps the uplink's network {}",
            args.subnet.net,
            n.trunc()
        )));
    }
    let bridge = nl.interface(&args.bridge).await?;
    if let Some(b) = &bridge {
        if !b.is_bridge {
            return Err(Error::Invalid(format!(
                "{} exists and is not a bridge",
                b.name
            )));
        }
    }
    if let Some(path) = &args.docker_config {
        // Refuse a daemon.json we could not merge before touching anything.
        let current = std::fs::read_to_string(path).ok();
        docker_config::merged(path, current.as_deref(), &docker_settings(args, &uplink))?;
    }
    let pins = PinDir::locate()?;
    let existing = if maps::pinned(pins.path()) {
        // From any version of dr: an older one's maps are migrated below.
        let config = migrate::pinned_config(pins.path())?;
        let exclusions = match Maps::open(pins.path()) {
            Ok(maps) => maps.exclusions()?,
            Err(Error::Conflict(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        Some((config, exclusions)).filter(|(c, _)| c.enabled != 0)
    } else {
        None
    };
    let attach = kernel::choose_attach(args.attach, datapath::attached_mode(&pins), kernel)?;
    if let Some((config, exclusions)) = &existing {
        if !same_subnet(config, &args.subnet) {
            return Err(Error::Conflict(format!(
                "dr is already up here with subnet {}/{}; run `dr-ctl down` first",
                from_map_addr(config.gateway),
                config.local_prefix_len
            )));
        }
        let size = maps::nat_table_size(pins.path())?;
        if size != args.nat.table_size {
            return Err(Error::Conflict(format!(
                "the NAT table has {size} entries; changing --nat-table-size needs `dr-ctl down` first"
            )));
        }
        let bridge_index = bridge.as_ref().map_or(0, |b| b.index);
        let bridge_mac = bridge.as_ref().and_then(|b| b.mac).unwrap_or_default();
        // Wanting XDP where it is off (or the reverse) is a change.
        let xdp_mode = match (args.xdp, config.xdp_mode) {
            (false, _) => XDP_OFF,
            (true, XDP_OFF) => XDP_NATIVE,
            (true, mode) => mode,
        };
        let desired = desired_config(
            args,
            bridge_index,
            &uplink,
            uplink_addr,
            config.owned,
            bridge_mac,
            xdp_mode,
        );
        let all_linked = Hook::ALL
            .iter()
            .all(|&h| datapath::is_attached(&pins, h, attach.mode))
            && pins.join(datapath::XDP_LINK_PIN).exists() == args.xdp;
        if *config == desired && *exclusions == args.nat.exclusions() && all_linked {
            let docker_config = merge_docker_config(args, &uplink)?;
            let changed = docker_config.as_ref().is_some_and(|c| c.written);
            return Ok(UpReport {
                changed,
                pin_dir: pins.display().to_string(),
                created_bridge: false,
                added_address: false,
                attach_mode: attach.mode,
                attach_note: attach.note,
                attached: Vec::new(),
                docker_config,
            });
        }
    }

    if let Some(b) = &bridge {
        refuse_occupied_bridge(&nl, b, &args.subnet).await?;
    }
    let mut undo = Vec::new();
    let existing = existing.map(|(c, _)| c);
    let result = apply_up(
        &nl,
        &pins,
        args,
        bridge,
        &uplink,
        uplink_addr,
        existing,
        attach,
        &mut undo,
    )
    .await;
    if result.is_err() {
        undo_all(&nl, &pins, undo).await;
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn apply_up(
    nl: &Netlink,
    pins: &PinDir,
    args: &UpArgs,
    bridge: Option<Interface>,
    uplink: &Interface,
    uplink_addr: Ipv4Addr,
    existing: Option<DatapathConfig>,
    attach: kernel::AttachChoice,
    undo: &mut Vec<Undo>,
) -> Result<UpReport> {
    let mut owned = existing.map_or(0, |c| c.owned);
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
    let _lock = pins.lock()?;
    if !maps::pinned(pins.path()) {
        undo.push(Undo::RemoveMapPins);
    }
    let mut ebpf = datapath::load(pins.path(), args.nat.table_size, args.datapath_log)?;
    let mut maps = Maps::open(pins.path())?;
    // A map new in this version starts empty (upgrading from an older dr).
    maps.sync_peer_hosts()?;
    // Exclusions first: the datapath must never translate what they cover.
    maps.set_exclusions(&args.nat.exclusions())?;
    let bridge_mac = bridge.mac.unwrap_or_default();
    let old_xdp = existing.map_or(XDP_OFF, |c| c.xdp_mode);
    let config = |xdp_mode| {
        desired_config(
            args,
            bridge.index,
            uplink,
            uplink_addr,
            owned,
            bridge_mac,
            xdp_mode,
        )
    };
    maps.set_config(&config(old_xdp))?;
    let mut attached = Vec::new();
    for hook in Hook::ALL {
        let iface = match hook.side() {
            Side::Bridge => &bridge,
            Side::Uplink => uplink,
        };
        if existing.is_some_and(|c| side_ifindex(&c, hook.side()) != iface.index) {
            // The interface was recreated: its old attachment went with it.
            datapath::detach(pins, hook, None)?;
        }
        let how = datapath::attach(&mut ebpf, pins, hook, &iface.name, attach.mode)?;
        if how == Attached::New {
            undo.push(Undo::Detach(hook, iface.name.clone()));
        }
        debug!("{} on {}: {how:?}", hook.program(), iface.name);
        attached.push((hook.program(), how));
    }
    if existing.is_some_and(|c| c.uplink_ifindex != uplink.index) {
        datapath::detach_xdp(pins)?;
    }
    let xdp_mode = if args.xdp {
        let new = !pins.join(datapath::XDP_LINK_PIN).exists();
        let mode = datapath::attach_xdp(&mut ebpf, pins, &uplink.name, old_xdp)?;
        if new {
            undo.push(Undo::DetachXdp);
        }
        sync_endpoints(nl, &mut maps, bridge.index, &args.subnet.net).await?;
        mode
    } else {
        datapath::detach_xdp(pins)?;
        XDP_OFF
    };
    maps.set_config(&config(xdp_mode))?;
    // The new programs are attached: an older dr's maps are no longer used.
    migrate::finish(pins.path())?;
    let docker_config = merge_docker_config(args, uplink)?;
    Ok(UpReport {
        changed: true,
        pin_dir: pins.display().to_string(),
        created_bridge,
        added_address,
        attach_mode: attach.mode,
        attach_note: attach.note,
        attached,
        docker_config,
    })
}

pub async fn down() -> Result<DownReport> {
    let pins = PinDir::locate()?;
    let mut report = DownReport {
        was_up: pins.exists(),
        pin_dir: pins.display().to_string(),
        removed_bridge: false,
        removed_address: false,
    };
    if !report.was_up {
        return Ok(report);
    }
    let lock = pins.lock()?;
    let config = if maps::pinned(pins.path()) {
        migrate::pinned_config(pins.path())?
    } else {
        DatapathConfig::default()
    };
    datapath::detach_xdp(&pins)?;
    let nl = Netlink::connect()?;
    for hook in Hook::ALL {
        let iface = nl
            .interface_by_index(side_ifindex(&config, hook.side()))
            .await?;
        datapath::detach(&pins, hook, iface.as_ref().map(|i| i.name.as_str()))?;
    }
    let bridge = nl.interface_by_index(config.bridge_ifindex).await?;
    if let Some(bridge) = bridge.filter(|_| config.enabled != 0) {
        if config.owned & OWNED_BRIDGE != 0 {
            nl.delete_interface(bridge.index).await?;
            report.removed_bridge = true;
        } else if config.owned & OWNED_ADDRESS != 0 {
            let prefix = config.local_prefix_len as u8;
            let bip = Ipv4Net::new(from_map_addr(config.gateway), prefix)
                .map_err(|_| Error::Invalid(format!("corrupt prefix length {prefix}")))?;
            nl.delete_address(bridge.index, bip).await?;
            report.removed_address = true;
        }
    }
    datapath::remove_map_pins(&pins)?;
    migrate::discard(pins.path())?;
    drop(lock);
    pins.remove()?;
    Ok(report)
}

/// Opens a datapath that is up, holding the namespace lock.
fn open_up() -> Result<(PinDir, crate::bpffs::PinLock, Maps, DatapathConfig)> {
    let pins = PinDir::locate()?;
    if !pins.exists() {
        return Err(Error::NotUp);
    }
    let lock = pins.lock()?;
    let maps = Maps::open(pins.path())?;
    let config = maps.enabled_config()?;
    Ok((pins, lock, maps, config))
}

fn local_subnet(config: &DatapathConfig) -> Result<LocalSubnet> {
    let prefix = config.local_prefix_len as u8;
    let net = Ipv4Net::new(from_map_addr(config.local_net), prefix)
        .map_err(|_| Error::Invalid(format!("corrupt prefix length {prefix}")))?;
    Ok(LocalSubnet {
        gateway: from_map_addr(config.gateway),
        net,
    })
}

fn parse_via(via: &str) -> Result<Ipv4Addr> {
    via.parse().map_err(|_| {
        Error::Invalid(format!(
            "invalid via address {via:?}: expected an IPv4 address"
        ))
    })
}

/// Parses `peer add`'s positional form.
pub fn parse_peer(subnet: &str, via: &str) -> Result<(Ipv4Net, Ipv4Addr)> {
    Ok((parse_peer_subnet(subnet)?, parse_via(via)?))
}

/// Adds (or switches) peers: all are validated, against the host, the
/// existing peers and each other, before any is written.
pub async fn peer_add(peers: &[(Ipv4Net, Ipv4Addr)]) -> Result<Vec<PeerReport>> {
    let (_pins, _lock, mut maps, config) = open_up()?;
    let nl = Netlink::connect()?;
    let uplink_nets = nl.ipv4_addresses(config.uplink_ifindex).await?;
    let existing: Vec<_> = maps.peers()?.iter().map(|p| (p.subnet, p.via)).collect();
    let changes = check_peers(peers, &local_subnet(&config)?, &uplink_nets, &existing)?;
    let to_write: Vec<_> = peers
        .iter()
        .zip(&changes)
        .filter(|(_, c)| **c != PeerChange::Unchanged)
        .map(|(p, _)| *p)
        .collect();
    maps.upsert_peers(&to_write)?;
    resolve_peer_hosts(&nl, &config, to_write.iter().map(|p| p.1)).await;
    Ok(peers
        .iter()
        .zip(changes)
        .map(|(&(subnet, via), change)| PeerReport {
            subnet,
            via: Some(via),
            change: match change {
                PeerChange::Unchanged => "unchanged",
                PeerChange::Add => "added",
                PeerChange::Replace { .. } => "replaced",
            },
        })
        .collect())
}

pub fn peer_del(subnet: &str) -> Result<PeerReport> {
    let subnet = parse_peer_subnet(subnet)?;
    let (_pins, _lock, mut maps, _) = open_up()?;
    let Some(peer) = maps.peers()?.into_iter().find(|p| p.subnet == subnet) else {
        return Err(Error::Invalid(format!("no peer {subnet}")));
    };
    maps.remove_peers(&[subnet])?;
    Ok(PeerReport {
        subnet,
        via: Some(peer.via),
        change: "deleted",
    })
}

fn peer_statuses(maps: &Maps) -> Result<Vec<PeerStatus>> {
    maps.peers()?
        .into_iter()
        .map(|p| {
            let traffic = maps.peer_traffic(p.slot)?;
            Ok(PeerStatus {
                subnet: p.subnet,
                via: p.via,
                to_peer: traffic.to_peer.into(),
                from_peer: traffic.from_peer.into(),
            })
        })
        .collect()
}

pub fn peer_list() -> Result<Vec<PeerStatus>> {
    let (_pins, _lock, maps, _) = open_up()?;
    peer_statuses(&maps)
}

pub async fn status() -> Result<Status> {
    let (pins, _lock, maps, config) = open_up()?;
    let nl = Netlink::connect()?;
    let local = local_subnet(&config)?;
    let mut hooks = Vec::new();
    for hook in Hook::ALL {
        let ifindex = side_ifindex(&config, hook.side());
        let iface = nl.interface_by_index(ifindex).await?;
        let ids = datapath::hook_ids(&pins, hook)?;
        hooks.push(HookStatus {
            interface: iface.map_or_else(|| "(gone)".to_string(), |i| i.name),
            ifindex,
            program: hook.program(),
            direction: hook.direction(),
            attached: ids.is_some(),
            ids,
        });
    }
    Ok(Status {
        pin_dir: pins.display().to_string(),
        local_subnet: local.net,
        gateway: local.gateway,
        uplink_address: from_map_addr(config.uplink_addr),
        uplink_mtu: config.uplink_mtu,
        attach_mode: datapath::attached_mode(&pins),
        hooks,
        peers: peer_statuses(&maps)?,
        xdp: xdp_mode_name(config.xdp_mode),
        endpoints: maps.endpoints()?.len(),
        nat: NatStatus {
            enabled: config.nat_enabled != 0,
            excluded: maps.exclusions()?,
            ports: format!("{}-{}", config.nat_port_min, config.nat_port_max),
            table_size: maps::nat_table_size(pins.path())?,
            entries: live_translations(&maps, &config)?.len(),
            timeouts: config.nat_timeouts,
        },
        counters: maps
            .counters()?
            .into_iter()
            .map(|(c, t): (Counter, Traffic)| (c.name(), t.into()))
            .collect(),
    })
}

pub fn xdp_mode_name(mode: u8) -> &'static str {
    match mode {
        XDP_NATIVE => "native",
        XDP_GENERIC => "generic",
        _ => "off",
    }
}

/// Fills `ENDPOINTS` with the containers behind the bridge that are in the
/// local subnet, from the kernel's neighbour table and bridge FDB.
async fn sync_endpoints(
    nl: &Netlink,
    maps: &mut Maps,
    bridge: u32,
    local: &Ipv4Net,
) -> Result<usize> {
    let endpoints: Vec<(Ipv4Addr, Endpoint)> = nl
        .bridge_neighbours(bridge)
        .await?
        .into_iter()
        .filter(|n| local.contains(&n.addr))
        .map(|n| {
            (
                n.addr,
                Endpoint {
                    ifindex: n.port,
                    mac: n.mac,
                    _pad: [0; 2],
                },
            )
        })
        .collect();
    maps.set_endpoints(&endpoints)?;
    Ok(endpoints.len())
}

#[derive(Debug, Serialize)]
pub struct SyncReport {
    pub xdp: &'static str,
    pub endpoints: usize,
    /// The uplink MTU the datapath checks container packets against.
    pub uplink_mtu: u32,
}

/// Refreshes what the datapath learns from the kernel: the local container
/// endpoints of the XDP fast path, and the uplink's MTU (which may change
/// after `up`). Safe to run at any time (e.g. from a timer).
pub async fn sync() -> Result<SyncReport> {
    let (_pins, _lock, mut maps, config) = open_up()?;
    let nl = Netlink::connect()?;
    let local = local_subnet(&config)?;
    let endpoints = sync_endpoints(&nl, &mut maps, config.bridge_ifindex, &local.net).await?;
    resolve_peer_hosts(&nl, &config, maps.peers()?.iter().map(|p| p.via)).await;
    let uplink_mtu = nl
        .interface_by_index(config.uplink_ifindex)
        .await?
        .map_or(config.uplink_mtu, |uplink| uplink.mtu);
    if uplink_mtu != config.uplink_mtu {
        maps.set_config(&DatapathConfig {
            uplink_mtu,
            ..config
        })?;
    }
    Ok(SyncReport {
        xdp: xdp_mode_name(config.xdp_mode),
        endpoints,
        uplink_mtu,
    })
}

/// Translations that have not expired, oldest first.
fn live_translations(maps: &Maps, config: &DatapathConfig) -> Result<Vec<NatEntry>> {
    let now = maps::monotonic_ns();
    let secs = |ns: u64| ns / 1_000_000_000;
    let mut out = Vec::new();
    for (key, flow) in maps.nat_flows()? {
        if flow.expired(now, &config.nat_timeouts) {
            continue;
        }
        let state = flow.current_state();
        let timeout = state.map_or(0, |s| s.timeout_secs(&config.nat_timeouts)) as u64;
        let idle = now.saturating_sub(flow.last_seen_ns);
        let dst = (from_map_addr(key.dst_addr), u16::from_be(key.dst_port));
        out.push(NatEntry {
            proto: match key.proto {
                IPPROTO_TCP => "tcp",
                IPPROTO_UDP => "udp",
                _ => "icmp",
            },
            original: Tuple {
                src_addr: from_map_addr(key.src_addr),
                src_port: u16::from_be(key.src_port),
                dst_addr: dst.0,
                dst_port: dst.1,
            },
            translated: Tuple {
                src_addr: from_map_addr(config.uplink_addr),
                src_port: u16::from_be(flow.nat_port),
                dst_addr: dst.0,
                dst_port: dst.1,
            },
            state: state.map_or("unknown", State::name),
            age_secs: secs(now.saturating_sub(flow.created_ns)),
            idle_secs: secs(idle),
            expires_in_secs: (timeout * 1_000_000_000)
                .saturating_sub(idle)
                .div_ceil(1_000_000_000),
        });
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.age_secs));
    Ok(out)
}

pub fn nat_list() -> Result<Vec<NatEntry>> {
    let (_pins, _lock, maps, config) = open_up()?;
    live_translations(&maps, &config)
}

pub fn nat_flush() -> Result<NatRemoved> {
    let (_pins, _lock, mut maps, _) = open_up()?;
    Ok(NatRemoved {
        removed: maps.nat_flush()?,
    })
}

pub fn nat_gc() -> Result<NatRemoved> {
    let (_pins, _lock, mut maps, config) = open_up()?;
    Ok(NatRemoved {
        removed: maps.nat_gc(&config.nat_timeouts)?,
    })
}

/// Inputs of `dr-ctl apply`.
#[derive(Clone, Debug)]
pub struct ApplyArgs {
    pub file: PathBuf,
    pub host: Option<String>,
    pub dry_run: bool,
    /// How `up` attaches the TC programs (see [`UpArgs::attach`]).
    pub attach: Option<AttachMode>,
}

#[derive(Debug, Serialize)]
pub struct ApplyReport {
    pub host: String,
    pub address: Ipv4Addr,
    pub subnet: String,
    pub dry_run: bool,
    /// What `up` did (or, dry, whether dr is up with this host's subnet).
    pub up: &'static str,
    pub peers: PeerDiff,
}

/// Applies the cluster plan to this host: validates the whole file, finds
/// this host's entry, brings dr up with it, then writes new and switched
/// peers before removing stale ones, so no peer that stays is ever missing.
pub async fn apply(args: &ApplyArgs) -> Result<ApplyReport> {
    let file = args.file.display().to_string();
    let text =
        std::fs::read_to_string(&args.file).map_err(io_context(format!("reading {file}")))?;
    let plan = Plan::parse(&file, &text)?;
    let nl = Netlink::connect()?;
    let me = plan.this_host(&file, args.host.as_deref(), &nl.all_ipv4_addresses().await?)?;
    let wanted = plan.peers_of(me);
    let uplink = nl.require_interface(&me.uplink).await?;
    let uplink_nets = nl.ipv4_addresses(uplink.index).await?;
    check_peers(&wanted, &me.subnet, &uplink_nets, &[])
        .map_err(|e| Error::Invalid(format!("{file}: host {:?}: {e}", me.name)))?;
    let up_args = UpArgs {
        xdp: plan.xdp,
        datapath_log: 0,
        bridge: plan.bridge.clone(),
        subnet: me.subnet,
        uplink: me.uplink.clone(),
        docker_config: None,
        nat: NatPlan {
            cluster_cidr: Some(plan.cluster_cidr),
            no_masquerade: plan.no_masquerade.clone(),
            ..NatPlan::default()
        },
        attach: args.attach,
    };
    let mut report = ApplyReport {
        host: me.name.clone(),
        address: me.address,
        subnet: me.subnet.bip(),
        dry_run: args.dry_run,
        up: "unchanged",
        peers: PeerDiff::default(),
    };
    if args.dry_run {
        let pins = PinDir::locate()?;
        let maps = if maps::pinned(pins.path()) {
            Some(Maps::open(pins.path())?)
        } else {
            None
        };
        let (config, live) = match &maps {
            Some(m) => (
                Some(m.config()?),
                m.peers()?.iter().map(|p| (p.subnet, p.via)).collect(),
            ),
            None => (None, Vec::new()),
        };
        report.up = match config.filter(|c| c.enabled != 0) {
            Some(c) if same_subnet(&c, &me.subnet) => "up with this subnet",
            Some(_) => "up with ANOTHER subnet: apply would fail; run `dr-ctl down` first",
            None => "would be brought up",
        };
        report.peers = PeerDiff::between(&live, &wanted);
        return Ok(report);
    }
    report.up = if up(&up_args).await?.changed {
        "changed"
    } else {
        "unchanged"
    };
    report.peers = reconcile_peers(&wanted).await?;
    Ok(report)
}

/// Makes the peer map exactly `wanted` (already validated): new and switched
/// peers are written before stale ones are removed, so a peer that stays is
/// never missing. Returns what changed.
pub async fn reconcile_peers(wanted: &[(Ipv4Net, Ipv4Addr)]) -> Result<PeerDiff> {
    let (_pins, _lock, mut maps, config) = open_up()?;
    let current: Vec<_> = maps.peers()?.iter().map(|p| (p.subnet, p.via)).collect();
    let diff = PeerDiff::between(&current, wanted);
    let upserts = diff.upserts();
    maps.upsert_peers(&upserts)?;
    let stale: Vec<_> = diff.remove.iter().map(|(net, _)| *net).collect();
    maps.remove_peers(&stale)?;
    resolve_peer_hosts(&Netlink::connect()?, &config, upserts.iter().map(|p| p.1)).await;
    Ok(diff)
}

/// Starts the kernel's resolution of peer hosts' MAC addresses on the
/// uplink, so that the host's own first packet to a peer subnet finds the
/// peer host in the neighbour table (see `uplink_egress.rs`). Best effort:
/// a failure only costs that first packet.
async fn resolve_peer_hosts(
    nl: &Netlink,
    config: &DatapathConfig,
    hosts: impl IntoIterator<Item = Ipv4Addr>,
) {
    let unique: std::collections::BTreeSet<Ipv4Addr> = hosts.into_iter().collect();
    for host in unique {
        if let Err(e) = nl.resolve_neighbour(config.uplink_ifindex, host).await {
            warn!("resolving peer host {host}: {e}");
        }
    }
}

/// Prints the datapath's aya-log events until interrupted. The programs
/// share one log buffer; it is found through the attached program's id.
pub async fn monitor() -> Result<()> {
    let (pins, lock, _, _) = open_up()?;
    let ids = datapath::hook_ids(&pins, Hook::BridgeIngress)?.ok_or(Error::NotUp)?;
    drop(lock);
    let logger = aya_log::EbpfLogger::init_from_id(ids.program_id)
        .map_err(|e| Error::Invalid(format!("reading the datapath's events: {e}")))?;
    // SAFETY: the registered fd is the logger's ring buffer, and the AsyncFd
    // owns the logger, so the fd stays open for as long as it is registered.
    let mut logger = unsafe { tokio::io::unix::AsyncFd::register(logger) }
        .map_err(|e| Error::Invalid(format!("waiting for datapath events: {e}")))?;
    loop {
        let mut ready = logger
            .readable_mut()
            .await
            .map_err(io_context("waiting for datapath events"))?;
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
}
