//! Loading the embedded eBPF object, attaching its programs with pinned TCX
//! links (a TCX link dies with its process unless pinned), and detaching.
use std::path::{Path, PathBuf};

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use dr_common::{map_names, program_names, XDP_GENERIC, XDP_NATIVE};

use crate::{
    bpffs::PinDir,
    error::{io_context, Error, Result},
};

/// The eBPF object built from `dr-ebpf` by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dr"));

/// FNV-1a hash of the embedded object: tells `up` whether the attached
/// programs came from another build.
pub fn object_hash() -> u64 {
    EBPF_OBJECT.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Which program goes where, and the name of its link pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    BridgeIngress,
    UplinkIngress,
    BridgeEgress,
    UplinkEgress,
}

impl Hook {
    pub const ALL: [Hook; 4] = [
        Hook::BridgeIngress,
        Hook::UplinkIngress,
        Hook::BridgeEgress,
        Hook::UplinkEgress,
    ];

    pub const fn program(self) -> &'static str {
        match self {
            Hook::BridgeIngress => program_names::BRIDGE_INGRESS,
            Hook::UplinkIngress => program_names::UPLINK_INGRESS,
            Hook::BridgeEgress => program_names::BRIDGE_EGRESS,
            Hook::UplinkEgress => program_names::UPLINK_EGRESS,
        }
    }

    pub const fn link_pin(self) -> &'static str {
        match self {
            Hook::BridgeIngress => "link_bridge_ingress",
            Hook::UplinkIngress => "link_uplink_ingress",
            Hook::BridgeEgress => "link_bridge_egress",
            Hook::UplinkEgress => "link_uplink_egress",
        }
    }

    pub const fn attach_type(self) -> TcAttachType {
        match self {
            Hook::BridgeIngress | Hook::UplinkIngress => TcAttachType::Ingress,
            Hook::BridgeEgress | Hook::UplinkEgress => TcAttachType::Egress,
        }
    }

    /// Whether the hook is on the uplink (otherwise on the bridge).
    pub const fn on_uplink(self) -> bool {
        matches!(self, Hook::UplinkIngress | Hook::UplinkEgress)
    }
}

pub const MAP_PINS: [&str; 10] = [
    map_names::PEER_SUBNETS,
    map_names::PEER_TRAFFIC,
    map_names::DATAPATH_CONFIG,
    map_names::COUNTERS,
    map_names::NAT_EXCLUDE,
    map_names::NAT_FLOWS,
    map_names::NAT_REVERSE,
    map_names::ENDPOINTS,
    map_names::PEER_HOSTS,
    map_names::INBOUND_FLOWS,
];

/// Pin of the XDP program's link on the uplink.
pub const XDP_LINK_PIN: &str = "link_uplink_xdp";

/// Attaches the XDP fast path to `iface` and pins the link: native mode
/// where the driver supports it, generic otherwise. Returns the mode
/// (`dr_common::XDP_NATIVE` or `XDP_GENERIC`). A pinned link gets the new
/// program in place and keeps `current_mode`.
pub fn attach_xdp(ebpf: &mut Ebpf, pins: &PinDir, iface: &str, current_mode: u8) -> Result<u8> {
    let name = program_names::UPLINK_XDP;
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| Error::Invalid(format!("program {name} missing from object")))?
        .try_into()?;
    prog.load()?;
    let path = pins.join(XDP_LINK_PIN);
    if path.exists() {
        let link = XdpLink::try_from(FdLink::from(PinnedLink::from_pin(&path)?))?;
        let id = prog.attach_to_link(link)?;
        drop(prog.take_link(id)?);
        return Ok(current_mode);
    }
    let (id, mode) = match prog.attach(iface, XdpMode::Driver) {
        Ok(id) => (id, XDP_NATIVE),
        Err(_) => (prog.attach(iface, XdpMode::Skb)?, XDP_GENERIC),
    };
    let link: FdLink = prog.take_link(id)?.try_into()?;
    link.pin(&path).map_err(|source| Error::Pin {
        path: path.clone(),
        source,
    })?;
    Ok(mode)
}

/// Removes the XDP link pin, which detaches the program.
pub fn detach_xdp(pins: &PinDir) -> Result<bool> {
    remove_pin(pins.join(XDP_LINK_PIN))
}

/// Loads the object; its maps are created and pinned in `map_dir` (a bpffs
/// directory), or adopted from there if already pinned, so state survives
/// dr-ctl exiting and programs being replaced. New SNAT tables get
/// `nat_table_size` entries each; `log_level` is the level of the programs'
/// aya-log events (0: off).
pub fn load(map_dir: &Path, nat_table_size: u32, log_level: u8) -> Result<Ebpf> {
    Ok(EbpfLoader::new()
        .default_map_pin_directory(map_dir)
        // aya-log's level is fixed at load: events below it cost one branch.
        .override_global(aya_log::LEVEL, &log_level, true)
        .map_max_entries(map_names::NAT_FLOWS, nat_table_size)
        .map_max_entries(map_names::NAT_REVERSE, nat_table_size)
        .map_max_entries(map_names::INBOUND_FLOWS, nat_table_size)
        .load(EBPF_OBJECT)?)
}

/// The program of `hook`, loaded into the kernel.
pub fn program(ebpf: &mut Ebpf, hook: Hook) -> Result<&mut SchedClassifier> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(hook.program())
        .ok_or_else(|| Error::Invalid(format!("program {} missing from object", hook.program())))?
        .try_into()?;
    if prog.fd().is_err() {
        prog.load()?;
    }
    Ok(prog)
}

/// What [`attach`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attached {
    /// A new link was created and pinned.
    New,
    /// A pinned link existed: its program was swapped atomically.
    Replaced,
}

/// Attaches `hook`'s program to `iface` and pins the link; when a link
/// is already pinned, swaps its program in place so traffic never sees a gap.
pub fn attach(ebpf: &mut Ebpf, pins: &PinDir, hook: Hook, iface: &str) -> Result<Attached> {
    let path = pins.join(hook.link_pin());
    let prog = program(ebpf, hook)?;
    if path.exists() {
        let pinned = PinnedLink::from_pin(&path)?;
        let link = SchedClassifierLink::try_from(FdLink::from(pinned))?;
        let id = prog.attach_to_link(link)?;
        // The pin keeps the link; our handle may go.
        drop(prog.take_link(id)?);
        return Ok(Attached::Replaced);
    }
    let id = prog.attach_with_options(
        iface,
        hook.attach_type(),
        TcAttachOptions::TcxOrder(LinkOrder::default()),
    )?;
    let link: FdLink = prog.take_link(id)?.try_into()?;
    link.pin(&path).map_err(|source| Error::Pin {
        path: path.clone(),
        source,
    })?;
    Ok(Attached::New)
}

/// Removes the link pin of `hook`, which detaches the program.
pub fn detach(pins: &PinDir, hook: Hook) -> Result<bool> {
    remove_pin(pins.join(hook.link_pin()))
}

/// Removes the map pins (the maps go when their last user does).
pub fn remove_map_pins(pins: &PinDir) -> Result<()> {
    for name in MAP_PINS {
        remove_pin(pins.join(name))?;
    }
    Ok(())
}

fn remove_pin(path: PathBuf) -> Result<bool> {
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_context(format!("removing {}", path.display()))(e)),
    }
}

/// Kernel ids of an attached hook, if its link is pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LinkIds {
    pub link_id: u32,
    pub program_id: u32,
}

pub fn link_ids(pins: &PinDir, hook: Hook) -> Result<Option<LinkIds>> {
    let path = pins.join(hook.link_pin());
    if !path.exists() {
        return Ok(None);
    }
    let link = FdLink::from(PinnedLink::from_pin(&path)?);
    let info = link.info()?;
    Ok(Some(LinkIds {
        link_id: info.id(),
        program_id: info.program_id(),
    }))
}
