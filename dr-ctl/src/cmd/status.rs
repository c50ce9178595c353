//! `dr-ctl status`: programs, interfaces, local subnet, peers and counters.
use std::{fmt::Write as _, net::Ipv4Addr};

use dr_common::{clock::JiffiesClock, nat::Timeouts, Counter, Traffic};
use ipnet::Ipv4Net;
use serde::Serialize;

use super::{
    nat::live_translations,
    pairs_as_map,
    peer::{self, PeerStatus, PeerTable},
    Counts, Report,
};
use crate::{
    bpffs::PinDir,
    datapath::{self, Hook, HookIds},
    error::Result,
    kernel::AttachMode,
    maps,
    netlink::Netlink,
    node::{side_ifindex, xdp_mode_name, Node},
    published::PublishedPort,
    subnet::from_map_addr,
};

/// The interface name reported for an ifindex that no longer exists.
const GONE: &str = "(gone)";

#[derive(Clone, Debug, Serialize)]
pub struct HookStatus {
    pub interface: String,
    /// "bridge" or "uplink".
    #[serde(skip)]
    pub side: &'static str,
    pub ifindex: u32,
    pub program: &'static str,
    pub direction: &'static str,
    pub attached: bool,
    #[serde(flatten)]
    pub ids: Option<HookIds>,
}

/// dr's program on the containers' docker0 ports.
#[derive(Clone, Debug, Serialize)]
pub struct PortHooks {
    /// None before `up` pinned one (a datapath an older dr set up).
    pub program_id: Option<u32>,
    /// docker0's ports that run it (those of learned containers).
    pub hooked: usize,
    /// docker0's ports.
    pub ports: usize,
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

/// What the programs time flows by (see `dr_common::clock`).
#[derive(Clone, Debug, Serialize)]
pub struct FlowClock {
    /// "jiffies" once `up` has measured them, else "kernel"
    /// (`bpf_ktime_get_coarse_ns`, or `bpf_ktime_get_ns` before 5.11).
    pub source: &'static str,
    /// The kernel's HZ (from its tick).
    pub hz: Option<u32>,
}

impl FlowClock {
    fn of(clock: &JiffiesClock) -> Self {
        if clock.measured() {
            Self {
                source: "jiffies",
                hz: Some(clock.hz()),
            }
        } else {
            Self {
                source: "kernel",
                hz: None,
            }
        }
    }
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
    /// The program `sync` puts on learned containers' docker0 ports.
    pub port_hooks: PortHooks,
    pub peers: Vec<PeerStatus>,
    /// How many peers the peer tables hold (`up --max-peers`).
    pub peer_capacity: u32,
    pub nat: NatStatus,
    pub clock: FlowClock,
    /// The XDP fast path: "native", "generic" or "off".
    pub xdp: &'static str,
    /// Local containers the XDP path knows (see `dr-ctl sync`).
    pub endpoints: usize,
    /// Of them, those XDP delivers to (`Endpoint::xdp_ready`); the others'
    /// frames XDP leaves to TC.
    pub xdp_endpoints: usize,
    /// Docker's published ports dr translates itself (see `dr-ctl sync`).
    pub published_ports: Vec<PublishedPort>,
    #[serde(serialize_with = "pairs_as_map")]
    pub counters: Vec<(&'static str, Counts)>,
    /// What keeps dr from working whole: hooks not attached, interfaces
    /// gone. Empty when healthy; `status` then exits 0, else 4.
    pub problems: Vec<String>,
}

async fn port_hooks(
    nl: &Netlink,
    pins: &PinDir,
    mode: Option<AttachMode>,
    bridge: u32,
) -> Result<PortHooks> {
    let ports = nl.bridge_ports(bridge).await?;
    let program_id = datapath::port_program_id(pins)?;
    let hooked = match (program_id, mode) {
        (Some(id), Some(mode)) => datapath::hooked_ports(nl, mode, id, &ports).await?,
        _ => 0,
    };
    Ok(PortHooks {
        program_id,
        hooked,
        ports: ports.len(),
    })
}

pub async fn run() -> Result<Status> {
    let node = Node::open()?;
    let (pins, maps, config) = (node.pins(), &node.maps, &node.config);
    let nl = Netlink::connect()?;
    let local = node.local_subnet()?;
    let attach_mode = datapath::attached_mode(pins);
    let mut hooks = Vec::new();
    for hook in Hook::TC {
        let ifindex = side_ifindex(config, hook.side());
        let iface = nl.interface_by_index(ifindex).await?;
        let ids = datapath::hook_ids(pins, hook)?;
        hooks.push(HookStatus {
            interface: iface.map_or_else(|| GONE.to_string(), |i| i.name),
            side: hook.side().name(),
            ifindex,
            program: hook.program(),
            direction: hook.direction(),
            attached: ids.is_some(),
            ids,
        });
    }
    let mut problems: Vec<String> = Vec::new();
    for h in &hooks {
        let problem = match (&h.ids, h.interface.as_str()) {
            (_, GONE) => format!("the {} interface (ifindex {}) is gone", h.side, h.ifindex),
            (None, iface) => format!("{} is not attached to {iface} {}", h.program, h.direction),
            _ => continue,
        };
        if !problems.contains(&problem) {
            problems.push(problem);
        }
    }
    let endpoints = maps.endpoints()?;
    Ok(Status {
        problems,
        pin_dir: pins.display().to_string(),
        local_subnet: local.net,
        gateway: local.gateway,
        uplink_address: from_map_addr(config.uplink_addr),
        uplink_mtu: config.uplink_mtu,
        attach_mode,
        hooks,
        port_hooks: port_hooks(&nl, pins, attach_mode, config.bridge_ifindex).await?,
        peers: peer::statuses(maps)?,
        peer_capacity: maps.peer_capacity(),
        xdp: xdp_mode_name(node.state.xdp_mode),
        endpoints: endpoints.len(),
        xdp_endpoints: endpoints.iter().filter(|e| e.xdp_ready != 0).count(),
        published_ports: maps.published_ports()?,
        nat: NatStatus {
            enabled: config.nat_enabled != 0,
            excluded: maps.exclusions()?,
            ports: format!("{}-{}", config.nat_port_min, config.nat_port_max),
            table_size: maps::nat_table_size(pins.path())?,
            entries: live_translations(maps, config)?.len(),
            timeouts: config.nat_timeouts,
        },
        clock: FlowClock::of(&config.clock),
        counters: maps
            .counters()?
            .into_iter()
            .map(|(c, t): (Counter, Traffic)| (c.name(), t.into()))
            .collect(),
    })
}

impl Report for Status {
    fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "local subnet: {} (gateway {})",
            self.local_subnet, self.gateway
        );
        let _ = writeln!(
            out,
            "uplink address: {} (mtu {})",
            self.uplink_address, self.uplink_mtu
        );
        let _ = writeln!(out, "pins: {}", self.pin_dir);
        let _ = writeln!(
            out,
            "programs: attached with {}",
            self.attach_mode.map_or("nothing", |m| m.name())
        );
        for h in &self.hooks {
            let state = match &h.ids {
                Some(HookIds {
                    link_id: Some(link),
                    program_id,
                    ..
                }) => format!("attached (tcx link {link}, prog {program_id})"),
                Some(HookIds {
                    tc_handle: Some(handle),
                    tc_priority,
                    program_id,
                    ..
                }) => format!(
                    "attached (netlink filter pref {} handle {handle}, prog {program_id})",
                    tc_priority.unwrap_or_default()
                ),
                _ => "NOT ATTACHED".to_string(),
            };
            let _ = writeln!(
                out,
                "  {:<18} {} {} (ifindex {}): {state}",
                h.program, h.interface, h.direction, h.ifindex
            );
        }
        let p = &self.port_hooks;
        if let Some(id) = p.program_id {
            let _ = writeln!(
                out,
                "  {:<18} {} of {} docker0 ports ingress, those of learned containers: prog {id} (see `dr-ctl sync`)",
                dr_common::program_names::PORT_INGRESS,
                p.hooked,
                p.ports
            );
        }
        let _ = writeln!(out, "peers: {} of {}", self.peers.len(), self.peer_capacity);
        if !self.peers.is_empty() {
            for line in PeerTable(self.peers.clone()).text().lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        let _ = writeln!(out, "xdp: {}", self.xdp);
        if self.xdp != "off" {
            let _ = writeln!(
                out,
                "  delivers to {} of the local endpoints",
                self.xdp_endpoints
            );
        }
        let _ = writeln!(
            out,
            "local endpoints: {} (containers delivered to directly, see `dr-ctl sync`)",
            self.endpoints
        );
        let published: Vec<String> = self.published_ports.iter().map(|p| p.to_string()).collect();
        let _ = writeln!(
            out,
            "published ports translated by dr: {} (the rest are the kernel's, see `dr-ctl sync`)",
            if published.is_empty() {
                "none".to_string()
            } else {
                published.join(", ")
            }
        );
        let n = &self.nat;
        if n.enabled {
            let excluded: Vec<String> = n.excluded.iter().map(|e| e.to_string()).collect();
            let _ = writeln!(
                out,
                "snat: on, ports {}, {} of {} translations, not translated: {}",
                n.ports,
                n.entries,
                n.table_size,
                excluded.join(", ")
            );
        } else {
            out.push_str("snat: off (up --cluster-cidr turns it on)\n");
        }
        match self.clock.hz {
            Some(hz) => {
                let _ = writeln!(out, "flow clock: {} (HZ {hz})", self.clock.source);
            }
            None => {
                out.push_str("flow clock: the kernel's (jiffies not measured: run `dr-ctl up`)\n")
            }
        }
        if self.problems.is_empty() {
            out.push_str("health: ok\n");
        } else {
            let _ = writeln!(out, "health: DEGRADED: {}", self.problems.join("; "));
        }
        out.push_str("counters:\n");
        for (name, c) in &self.counters {
            let _ = writeln!(out, "  {name:<26} {c}");
        }
        out
    }
}
