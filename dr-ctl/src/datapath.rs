//! Loading the embedded eBPF object, attaching its programs so they outlive
//! dr-ctl, and detaching. TC programs attach in one of two modes
//! ([`AttachMode`]): pinned TCX links (a TCX link dies with its process
//! unless pinned), or cls_bpf filters on a clsact qdisc, which the kernel
//! keeps until they are deleted; their programs are pinned so later runs
//! can name them.
use std::path::{Path, PathBuf};

use aya::{
    programs::{
        links::{FdLink, Link, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
        xdp::XdpLink,
        LinkOrder, ProgramError, ProgramInfo, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use dr_common::{map_names, program_names, XDP_GENERIC, XDP_NATIVE};
use serde::Serialize;

use crate::{
    bpffs::PinDir,
    error::{io_context, Error, Result},
    kernel::AttachMode,
    migrate,
};

/// The embedded eBPF object, built from `dr-ebpf` by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dr"));

/// FNV-1a hash of the embedded object: tells `up` whether the attached
/// programs came from another build.
pub fn object_hash() -> u64 {
    EBPF_OBJECT.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The interface a hook's program is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The container bridge (docker0).
    Bridge,
    /// The interface toward the other hosts.
    Uplink,
}

/// Which program goes where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    BridgeIngress,
    UplinkIngress,
    BridgeEgress,
    UplinkEgress,
}

/// cls_bpf priority of every dr filter in netlink mode. Filters without an
/// explicit priority get 49152 and below from the kernel, and tools that
/// pick one (Cilium, Calico, tc users) pick small numbers; 0x6472 ("dr")
/// is far from both. A hook is identified by its interface and direction
/// plus this priority and its [`Hook::tc_handle`].
pub const TC_PRIORITY: u16 = 0x6472;

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

    /// The part of its pins' names that names the hook.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::BridgeIngress => "bridge_ingress",
            Hook::UplinkIngress => "uplink_ingress",
            Hook::BridgeEgress => "bridge_egress",
            Hook::UplinkEgress => "uplink_egress",
        }
    }

    pub const fn side(self) -> Side {
        match self {
            Hook::BridgeIngress | Hook::BridgeEgress => Side::Bridge,
            Hook::UplinkIngress | Hook::UplinkEgress => Side::Uplink,
        }
    }

    pub const fn attach_type(self) -> TcAttachType {
        match self {
            Hook::BridgeIngress | Hook::UplinkIngress => TcAttachType::Ingress,
            Hook::BridgeEgress | Hook::UplinkEgress => TcAttachType::Egress,
        }
    }

    pub const fn direction(self) -> &'static str {
        match self.attach_type() {
            TcAttachType::Egress => "egress",
            _ => "ingress",
        }
    }

    /// The cls_bpf filter handle of this hook in netlink mode ("dr" and a
    /// number per hook, shown by `tc filter show` as `0x6472000N`).
    pub const fn tc_handle(self) -> TcHandle {
        let number = match self {
            Hook::BridgeIngress => 1,
            Hook::UplinkIngress => 2,
            Hook::BridgeEgress => 3,
            Hook::UplinkEgress => 4,
        };
        TcHandle::new(TC_PRIORITY, number)
    }

    /// What this hook's attachment leaves pinned in `mode`: the TCX link,
    /// or (netlink) the program the filter runs.
    pub fn pin(self, mode: AttachMode) -> String {
        match mode {
            AttachMode::Tcx => format!("link_{}", self.name()),
            AttachMode::Netlink => format!("prog_{}", self.name()),
        }
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
    // Maps an older dr pinned with another layout are created anew and
    // filled from the old ones (see migrate.rs).
    migrate::set_aside_outdated(map_dir)?;
    let ebpf = EbpfLoader::new()
        .default_map_pin_directory(map_dir)
        // aya-log's level is fixed at load: events below it cost one branch.
        .override_global(aya_log::LEVEL, &log_level, true)
        .map_max_entries(map_names::NAT_FLOWS, nat_table_size)
        .map_max_entries(map_names::NAT_REVERSE, nat_table_size)
        .map_max_entries(map_names::INBOUND_FLOWS, nat_table_size)
        .load(EBPF_OBJECT)?;
    migrate::copy_set_aside(map_dir)?;
    Ok(ebpf)
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attached {
    /// The program was attached where none of dr's was.
    New,
    /// dr's attachment existed: its program was swapped atomically.
    Replaced,
}

/// Attaches `hook`'s program to `iface` in `mode`. Where dr's attachment
/// exists, swaps its program in place so traffic never sees a gap.
pub fn attach(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    hook: Hook,
    iface: &str,
    mode: AttachMode,
) -> Result<Attached> {
    let prog = program(ebpf, hook)?;
    match mode {
        AttachMode::Tcx => attach_tcx(prog, pins, hook, iface),
        AttachMode::Netlink => attach_netlink(prog, pins, hook, iface),
    }
}

fn attach_tcx(
    prog: &mut SchedClassifier,
    pins: &PinDir,
    hook: Hook,
    iface: &str,
) -> Result<Attached> {
    let path = pins.join(&hook.pin(AttachMode::Tcx));
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

/// The netlink error number behind a TC operation's failure, if any.
fn tc_errno(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::TcError(TcError::NetlinkError(e)) => e.raw_os_error(),
        _ => None,
    }
}

/// dr's filter for `hook` on `iface`, as a link object (nothing is sent).
fn netlink_link(hook: Hook, iface: &str) -> Result<SchedClassifierLink> {
    SchedClassifierLink::attached(
        iface,
        hook.attach_type(),
        TC_PRIORITY,
        hook.tc_handle(),
        None,
    )
    .map_err(io_context(format!("finding interface {iface}")))
}

fn attach_netlink(
    prog: &mut SchedClassifier,
    pins: &PinDir,
    hook: Hook,
    iface: &str,
) -> Result<Attached> {
    match tc::qdisc_add_clsact(iface) {
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        result => result.map_err(ProgramError::from)?,
    }
    let options = NlOptions {
        priority: TC_PRIORITY,
        handle: hook.tc_handle(),
        ..NlOptions::default()
    };
    // Create exclusively; if dr's filter is there (also when a killed run
    // left it without its program pin), replace its program in place:
    // cls_bpf swaps it at the same priority and handle.
    let (id, how) = match prog.attach_with_options(
        iface,
        hook.attach_type(),
        TcAttachOptions::Netlink(options),
    ) {
        Ok(id) => (id, Attached::New),
        Err(e) if tc_errno(&e) == Some(libc::EEXIST) => (
            prog.attach_to_link(netlink_link(hook, iface)?)?,
            Attached::Replaced,
        ),
        Err(e) => return Err(e.into()),
    };
    // Dropping the link object would delete the filter: the kernel keeps
    // it, attached, after we exit.
    std::mem::forget(prog.take_link(id)?);
    // Pin the program under a temporary name and rename it over the old
    // pin, so the pin always names an attached program. (bpffs refuses
    // dots in names.)
    let path = pins.join(&hook.pin(AttachMode::Netlink));
    let fresh = pins.join(&format!("new_{}", hook.pin(AttachMode::Netlink)));
    remove_pin(fresh.clone())?;
    prog.pin(&fresh).map_err(|source| Error::Pin {
        path: fresh.clone(),
        source,
    })?;
    std::fs::rename(&fresh, &path).map_err(io_context(format!("renaming {}", fresh.display())))?;
    Ok(how)
}

/// The mode dr's TC programs are attached in here, if any are.
pub fn attached_mode(pins: &PinDir) -> Option<AttachMode> {
    [AttachMode::Tcx, AttachMode::Netlink]
        .into_iter()
        .find(|&mode| Hook::ALL.iter().any(|h| pins.join(&h.pin(mode)).exists()))
}

/// Whether `hook` is attached in `mode`.
pub fn is_attached(pins: &PinDir, hook: Hook, mode: AttachMode) -> bool {
    pins.join(&hook.pin(mode)).exists()
}

/// Detaches `hook` in whichever mode it is attached: removes the TCX link
/// pin, or deletes exactly dr's filter (its priority and handle) on
/// `iface` and the program pin. `iface` is None when the interface is
/// gone, and its filters with it. Other filters and the clsact qdisc stay.
pub fn detach(pins: &PinDir, hook: Hook, iface: Option<&str>) -> Result<bool> {
    let mut detached = remove_pin(pins.join(&hook.pin(AttachMode::Tcx)))?;
    let prog_pin = pins.join(&hook.pin(AttachMode::Netlink));
    if prog_pin.exists() {
        if let Some(iface) = iface {
            match netlink_link(hook, iface)?.detach() {
                Ok(()) => detached = true,
                // Deleted already (ENOENT), or its qdisc with it (EINVAL).
                Err(e) if matches!(tc_errno(&e), Some(libc::ENOENT | libc::EINVAL)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        detached |= remove_pin(prog_pin)?;
    }
    Ok(detached)
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

/// Kernel ids of an attached hook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HookIds {
    pub attach: AttachMode,
    /// The TCX link (tcx mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_id: Option<u32>,
    pub program_id: u32,
    /// The cls_bpf filter's priority and handle (netlink mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tc_priority: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tc_handle: Option<String>,
}

/// The ids of `hook`'s attachment, from its pin; None if not attached.
pub fn hook_ids(pins: &PinDir, hook: Hook) -> Result<Option<HookIds>> {
    let link = pins.join(&hook.pin(AttachMode::Tcx));
    if link.exists() {
        let info = FdLink::from(PinnedLink::from_pin(&link)?).info()?;
        return Ok(Some(HookIds {
            attach: AttachMode::Tcx,
            link_id: Some(info.id()),
            program_id: info.program_id(),
            tc_priority: None,
            tc_handle: None,
        }));
    }
    let prog = pins.join(&hook.pin(AttachMode::Netlink));
    if prog.exists() {
        return Ok(Some(HookIds {
            attach: AttachMode::Netlink,
            link_id: None,
            program_id: ProgramInfo::from_pin(&prog)?.id(),
            tc_priority: Some(TC_PRIORITY),
            tc_handle: Some(format!("{:#x}", u32::from(hook.tc_handle()))),
        }));
    }
    Ok(None)
}
