//! Attaching the programs so they outlive dr-ctl, replacing them in place,
//! detaching them, and reading back what is attached.
use std::path::Path;

use aya::{
    programs::{
        links::{FdLink, Link, LinkError, PinnedLink},
        tc::{
            self, NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions, TcError,
            TcHandle,
        },
        xdp::{XdpLink, XdpLinkId},
        LinkOrder, Program, ProgramError, ProgramInfo, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf,
};
use dr_common::{XDP_GENERIC, XDP_NATIVE};
use serde::Serialize;

use super::{
    hook::{Hook, Kind, TC_PRIORITY},
    pins::{pin_replacing, remove_pin},
};
use crate::{
    bpffs::PinDir,
    error::{io_context, Error, Result},
    kernel::AttachMode,
};

/// Program `name` in the object, as a `P` (its program type).
pub(super) fn object_program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    Ok(ebpf
        .program_mut(name)
        .ok_or_else(|| Error::Internal(format!("program {name} missing from object")))?
        .try_into()?)
}

/// The program of TC hook `hook`, loaded into the kernel.
pub fn program(ebpf: &mut Ebpf, hook: Hook) -> Result<&mut SchedClassifier> {
    let prog: &mut SchedClassifier = object_program(ebpf, hook.program())?;
    if prog.fd().is_err() {
        load_retrying(|| prog.load())?;
    }
    Ok(prog)
}

/// Runs a program's `load`, again when the verifier gave up with EAGAIN:
/// it stops at a signal pending for the thread, and in a process with
/// several threads any of them may get one meant for another (the SIGCHLD
/// of a child spawned by a thread whose signals are blocked while it
/// spawns). libbpf retries such loads too.
pub fn load_retrying(
    mut load: impl FnMut() -> std::result::Result<(), ProgramError>,
) -> Result<()> {
    const TRIES: usize = 5;
    for _ in 1..TRIES {
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) => {}
            done => return Ok(done?),
        }
    }
    Ok(load()?)
}

/// What [`attach`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attached {
    /// The program was attached where none of dr's was.
    New,
    /// dr's attachment existed: its program was swapped atomically.
    Replaced,
    /// dr's attachment existed and was left as it was (`sync` on a port).
    Kept,
}

/// What [`attach`] did to a hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub how: Attached,
    /// XDP only: the mode of a new attachment, `dr_common::XDP_NATIVE`
    /// where the driver supports it, `XDP_GENERIC` otherwise. None when a
    /// program was replaced in place (it keeps the mode it had) and for TC.
    pub xdp_mode: Option<u8>,
}

/// Attaches `hook`'s program to `iface`, TC hooks in `mode`. Where dr's
/// attachment exists, swaps its program in place so traffic never sees a gap.
pub fn attach(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    hook: Hook,
    iface: &str,
    mode: AttachMode,
) -> Result<Attachment> {
    let pin = pins.join(&hook.pin(mode));
    let Kind::Tc(direction) = hook.kind() else {
        return attach_xdp(ebpf, &pin, hook, iface);
    };
    let prog = program(ebpf, hook)?;
    let how = match mode {
        AttachMode::Tcx => attach_tcx(prog, &pin, iface, direction, true)?,
        AttachMode::Netlink => attach_netlink(prog, pins, hook, direction, iface)?,
    };
    Ok(Attachment {
        how,
        xdp_mode: None,
    })
}

/// Attaches the XDP program through the link pinned at `pin`: native mode
/// where the driver supports it, generic otherwise.
fn attach_xdp(ebpf: &mut Ebpf, pin: &Path, hook: Hook, iface: &str) -> Result<Attachment> {
    let prog: &mut Xdp = object_program(ebpf, hook.program())?;
    load_retrying(|| prog.load())?;
    let mut xdp_mode = None;
    let how = attach_pinned(prog, pin, true, |prog| {
        match prog.attach(iface, XdpMode::Driver) {
            Ok(id) => {
                xdp_mode = Some(XDP_NATIVE);
                Ok(id)
            }
            Err(_) => {
                xdp_mode = Some(XDP_GENERIC);
                Ok(prog.attach(iface, XdpMode::Skb)?)
            }
        }
    })?;
    Ok(Attachment { how, xdp_mode })
}

/// A program attached through a link that dr pins (TCX and XDP).
trait LinkProgram {
    type Link: TryFrom<FdLink, Error = LinkError> + TryInto<FdLink, Error = LinkError>;
    type Id;
    fn attach_to_link(&mut self, link: Self::Link) -> Result<Self::Id, ProgramError>;
    fn take_link(&mut self, id: Self::Id) -> Result<Self::Link, ProgramError>;
}

impl LinkProgram for SchedClassifier {
    type Link = SchedClassifierLink;
    type Id = SchedClassifierLinkId;
    fn attach_to_link(&mut self, link: Self::Link) -> Result<Self::Id, ProgramError> {
        SchedClassifier::attach_to_link(self, link)
    }
    fn take_link(&mut self, id: Self::Id) -> Result<Self::Link, ProgramError> {
        SchedClassifier::take_link(self, id)
    }
}

impl LinkProgram for Xdp {
    type Link = XdpLink;
    type Id = XdpLinkId;
    fn attach_to_link(&mut self, link: Self::Link) -> Result<Self::Id, ProgramError> {
        Xdp::attach_to_link(self, link)
    }
    fn take_link(&mut self, id: Self::Id) -> Result<Self::Link, ProgramError> {
        Xdp::take_link(self, id)
    }
}

/// Attach-or-replace through a pinned link, the one path of TCX and XDP:
/// where dr's link is pinned at `path`, its program is swapped in place
/// (traffic sees no gap) if `replace`, else left; otherwise `attach` makes
/// a new link, pinned so that it outlives dr-ctl.
fn attach_pinned<P: LinkProgram>(
    prog: &mut P,
    path: &Path,
    replace: bool,
    attach: impl FnOnce(&mut P) -> Result<P::Id>,
) -> Result<Attached> {
    if path.exists() && !replace {
        return Ok(Attached::Kept);
    }
    if path.exists() {
        let link = P::Link::try_from(FdLink::from(PinnedLink::from_pin(path)?))?;
        let id = prog.attach_to_link(link)?;
        // The pin keeps the link; our handle may go.
        drop(prog.take_link(id)?);
        return Ok(Attached::Replaced);
    }
    let id = attach(prog)?;
    let link: FdLink = prog.take_link(id)?.try_into()?;
    link.pin(path).map_err(|source| Error::Pin {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Attached::New)
}

/// `prog` on `iface`'s TCX hook in `direction`, through the link pinned
/// at `pin` (see [`attach_pinned`]).
pub(super) fn attach_tcx(
    prog: &mut SchedClassifier,
    pin: &Path,
    iface: &str,
    direction: TcAttachType,
    replace: bool,
) -> Result<Attached> {
    attach_pinned(prog, pin, replace, |prog| {
        Ok(prog.attach_with_options(
            iface,
            direction,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )?)
    })
}

/// The netlink error number behind a TC operation's failure, if any
/// (attaching reports it as a `TcError`, detaching as a bare netlink error).
fn tc_errno(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::TcError(TcError::NetlinkError(e)) | ProgramError::NetlinkError(e) => {
            e.raw_os_error()
        }
        _ => None,
    }
}

/// dr's filter with `handle` on `iface`, as a link object (nothing is sent).
fn filter_link(
    iface: &str,
    direction: TcAttachType,
    handle: TcHandle,
) -> Result<SchedClassifierLink> {
    SchedClassifierLink::attached(iface, direction, TC_PRIORITY, handle, None)
        .map_err(io_context(format!("finding interface {iface}")))
}

/// Deletes exactly dr's filter with `handle` on `iface`, if it is there;
/// whether it was.
pub(super) fn detach_filter(
    iface: &str,
    direction: TcAttachType,
    handle: TcHandle,
) -> Result<bool> {
    match filter_link(iface, direction, handle)?.detach() {
        Ok(()) => Ok(true),
        // Deleted already (ENOENT), or its qdisc with it (EINVAL).
        Err(e) if matches!(tc_errno(&e), Some(libc::ENOENT | libc::EINVAL)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// dr's cls_bpf filter with `handle` on `iface` in `direction`, running
/// `prog` (the clsact qdisc added if missing). Created exclusively; where
/// dr's filter is there (also when a killed run left it without its
/// program pin), its program is replaced in place if `replace` (cls_bpf
/// swaps it at the same priority and handle), else left.
pub(super) fn attach_filter(
    prog: &mut SchedClassifier,
    iface: &str,
    direction: TcAttachType,
    handle: TcHandle,
    replace: bool,
) -> Result<Attached> {
    match tc::qdisc_add_clsact(iface) {
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        result => result.map_err(ProgramError::from)?,
    }
    let options = NlOptions {
        priority: TC_PRIORITY,
        handle,
        ..NlOptions::default()
    };
    let (id, how) =
        match prog.attach_with_options(iface, direction, TcAttachOptions::Netlink(options)) {
            Ok(id) => (id, Attached::New),
            Err(e) if tc_errno(&e) == Some(libc::EEXIST) => {
                if !replace {
                    return Ok(Attached::Kept);
                }
                (
                    prog.attach_to_link(filter_link(iface, direction, handle)?)?,
                    Attached::Replaced,
                )
            }
            Err(e) => return Err(e.into()),
        };
    // Dropping the link object would delete the filter: the kernel keeps
    // it, attached, after we exit.
    std::mem::forget(prog.take_link(id)?);
    Ok(how)
}

fn attach_netlink(
    prog: &mut SchedClassifier,
    pins: &PinDir,
    hook: Hook,
    direction: TcAttachType,
    iface: &str,
) -> Result<Attached> {
    let how = attach_filter(prog, iface, direction, hook.tc_handle(), true)?;
    // The pin always names an attached program.
    pin_replacing(pins.path(), &hook.pin(AttachMode::Netlink), |path| {
        prog.pin(path)
    })?;
    Ok(how)
}

/// The mode dr's TC programs are attached in here, if any are.
pub fn attached_mode(pins: &PinDir) -> Option<AttachMode> {
    [AttachMode::Tcx, AttachMode::Netlink]
        .into_iter()
        .find(|&mode| Hook::TC.iter().any(|h| pins.join(&h.pin(mode)).exists()))
}

/// Whether `hook` is attached in `mode`.
pub fn is_attached(pins: &PinDir, hook: Hook, mode: AttachMode) -> bool {
    pins.join(&hook.pin(mode)).exists()
}

/// Detaches `hook` in whichever mode it is attached: removes the TCX or
/// XDP link pin, or deletes exactly dr's filter (its priority and handle)
/// on `iface` and the program pin. `iface` is None when the interface is
/// gone, and its filters with it. Other filters and the clsact qdisc stay.
pub fn detach(pins: &PinDir, hook: Hook, iface: Option<&str>) -> Result<bool> {
    let mut detached = remove_pin(pins.join(&hook.pin(AttachMode::Tcx)))?;
    let Kind::Tc(direction) = hook.kind() else {
        return Ok(detached);
    };
    let prog_pin = pins.join(&hook.pin(AttachMode::Netlink));
    if prog_pin.exists() {
        if let Some(iface) = iface {
            detached |= detach_filter(iface, direction, hook.tc_handle())?;
        }
        detached |= remove_pin(prog_pin)?;
    }
    Ok(detached)
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
