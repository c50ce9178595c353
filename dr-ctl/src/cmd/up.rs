//! `dr-ctl up`: set up the bridge and load, attach and pin the datapath.
//! Everything is validated before anything changes; what `setup` then
//! does is undone in reverse if a later step fails.
mod args;
mod setup;

pub use args::{
    nat_from_flags, Args, Attach, AttachArg, DatapathLog, MaxPeersArg, NatFlags, UpArgs,
};

use std::fmt::Write as _;

use dr_common::{peer_span, XDP_NATIVE, XDP_OFF};
use serde::Serialize;

use super::{pairs_as_map, Report};
use crate::{
    datapath::{self, Attached, Hook},
    docker_config::{self, DockerConfigChange},
    error::{io_context, Error, Result},
    kernel::{self, AttachMode},
    maps::{self, Maps},
    migrate,
    netlink::{Interface, Netlink},
    node::{self, local_subnet, same_subnet, NodeDir},
    subnet::{overlaps, LocalSubnet},
};

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
    #[serde(serialize_with = "pairs_as_map")]
    pub attached: Vec<(&'static str, Attached)>,
    pub docker_config: Option<DockerConfigChange>,
}

impl Report for UpReport {
    fn text(&self) -> String {
        let mut out = String::new();
        if !self.changed {
            let _ = writeln!(out, "dr is already up ({}); nothing changed", self.pin_dir);
            return out;
        }
        if self.created_bridge {
            out.push_str("created bridge\n");
        }
        if self.added_address {
            out.push_str("added bridge address\n");
        }
        if let Some(note) = &self.attach_note {
            let _ = writeln!(out, "note: {note}");
        }
        for (program, how) in &self.attached {
            let _ = writeln!(out, "{program}: {how:?} ({})", self.attach_mode.name());
        }
        if let Some(change) = self.docker_config.as_ref().filter(|c| c.written) {
            let _ = writeln!(
                out,
                "wrote bip{} to daemon.json{}",
                change
                    .mtu
                    .map_or(String::new(), |mtu| format!(" and mtu {mtu}")),
                change
                    .backup
                    .as_ref()
                    .map_or(String::new(), |b| format!(" (previous file saved as {b})"))
            );
        }
        let _ = writeln!(out, "dr is up; state pinned in {}", self.pin_dir);
        out
    }
}

pub async fn run(args: Args) -> Result<UpReport> {
    up(&args.check()?).await
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

/// The host's ephemeral port range (net.ipv4.ip_local_port_range).
fn ephemeral_ports() -> Result<(u16, u16)> {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = std::fs::read_to_string(path).map_err(io_context(format!("reading {path}")))?;
    let mut it = text.split_whitespace().filter_map(|p| p.parse().ok());
    match (it.next(), it.next()) {
        (Some(lo), Some(hi)) => Ok((lo, hi)),
        _ => Err(Error::Internal(format!("cannot parse {path}: {text:?}"))),
    }
}

/// Brings dr up as `args` describe, or leaves it as it is when it already is.
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
    // Everything from here on reads or changes the node: another `up` or
    // `down` must neither run in between nor have changed it since.
    let dir = NodeDir::lock()?;
    let pins = &dir.pins;
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
        docker_config::merged(path, current.as_deref(), &args.docker_settings(&uplink))?;
    }
    let existing = if maps::pinned(pins.path()) {
        // From any version of dr: an older one's maps are migrated below.
        let config = migrate::pinned_config(pins.path())?;
        let state = node::state::pinned(pins.path(), &config)?;
        // An older version's maps (Conflict) are migrated below, whatever
        // these read.
        let (exclusions, peer_span) = match Maps::open(pins.path()) {
            Ok(maps) => (maps.exclusions()?, maps.peer_span()?),
            Err(Error::Conflict(_)) => (Vec::new(), peer_span::EVERY_ADDRESS),
            Err(e) => return Err(e),
        };
        Some((config, state, exclusions, peer_span)).filter(|(c, ..)| c.enabled != 0)
    } else {
        None
    };
    let attach = kernel::choose_attach(args.attach, datapath::attached_mode(pins), kernel)?;
    if let Some((config, state, exclusions, peer_span)) = &existing {
        if !same_subnet(config, &args.subnet) {
            return Err(Error::Conflict(format!(
                "dr is already up here with subnet {}; run `dr-ctl down` first",
                local_subnet(config)?.bip()
            )));
        }
        let size = maps::nat_table_size(pins.path())?;
        if size != args.nat.table_size {
            return Err(Error::Conflict(format!(
                "the NAT table has {size} entries; changing --nat-table-size needs `dr-ctl down` first"
            )));
        }
        if let (Some(capacity), Some(wanted)) = (maps::peer_capacity(pins.path())?, args.max_peers)
        {
            if capacity != wanted {
                return Err(Error::Conflict(format!(
                    "the peer tables hold {capacity} peers; changing --max-peers needs `dr-ctl down` first"
                )));
            }
        }
        let bridge_index = bridge.as_ref().map_or(0, |b| b.index);
        let bridge_mac = bridge.as_ref().and_then(|b| b.mac).unwrap_or_default();
        // Wanting XDP where it is off (or the reverse) is a change.
        let xdp_mode = match (args.xdp, state.xdp_mode) {
            (false, _) => XDP_OFF,
            (true, XDP_OFF) => XDP_NATIVE,
            (true, mode) => mode,
        };
        let desired = setup::desired_config(
            args,
            bridge_index,
            &uplink,
            uplink_addr,
            bridge_mac,
            *peer_span,
            // Measured once per boot (see setup).
            config.clock,
        );
        let desired_state = setup::desired_state(args, state.owned, xdp_mode);
        let all_linked = Hook::ALL
            .iter()
            .all(|&h| datapath::is_attached(pins, h, attach.mode) == args.wants(h));
        if *config == desired
            && *state == desired_state
            && *exclusions == args.nat.exclusions()
            && all_linked
        {
            let docker_config = args.merge_docker_config(&uplink)?;
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
    let done = setup::Setup {
        nl: &nl,
        pins,
        args,
        uplink: &uplink,
        uplink_addr,
        existing: existing.map(|(c, state, ..)| (c, state)),
    }
    .run(bridge, attach.mode)
    .await?;
    Ok(UpReport {
        changed: true,
        pin_dir: pins.display().to_string(),
        created_bridge: done.created_bridge,
        added_address: done.added_address,
        attach_mode: attach.mode,
        attach_note: attach.note,
        attached: done.attached,
        docker_config: done.docker_config,
    })
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
        ports.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
        subnet.bip()
    )))
}
