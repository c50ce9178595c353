//! `dr_port_ingress` on the docker0 ports of the containers dr has learned
//! (see dr-ebpf/src/port.rs). `up` loads the program and pins it; `up` and
//! `sync` attach the pinned program to each port, in the TC hooks' attach
//! mode. A port's attachment goes with its device: the netlink filter with
//! it, a TCX link is left defunct and its pin is removed by the next `sync`.
//! Containers not learned yet are handled by docker0's own program.
use std::{collections::HashSet, ffi::CString, path::Path};

use aya::{
    programs::{tc::TcHandle, ProgramInfo, SchedClassifier, TcAttachType},
    Ebpf,
};
use dr_common::program_names;

use super::{
    attach::{attach_filter, attach_tcx, detach_filter, load_retrying, object_program},
    hook::TC_PRIORITY,
    pins::{pin_replacing, remove_pin},
};
use crate::{
    bpffs::PinDir,
    error::Result,
    kernel::AttachMode,
    netlink::{Interface, Netlink},
};

/// The port program's pin: `sync` attaches it without the object.
pub const PORT_PROGRAM_PIN: &str = "prog_port_ingress";

/// A port's TCX link pin: this and the port's ifindex.
const PORT_LINK_PIN: &str = "link_port_";

/// The netlink filter handle on every port, next to the hooks' (1-5).
const PORT_TC_HANDLE: TcHandle = TcHandle::new(TC_PRIORITY, 6);

/// Loads the port program of `ebpf` (whose maps are the ones pinned in
/// `dir`) and pins it there in place of an older version's.
pub fn pin_port_program(ebpf: &mut Ebpf, dir: &Path) -> Result<()> {
    let prog = port_program(ebpf)?;
    pin_replacing(dir, PORT_PROGRAM_PIN, |path| prog.pin(path))
}

/// The port program in the object, loaded into the kernel.
pub fn port_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    let prog: &mut SchedClassifier = object_program(ebpf, program_names::PORT_INGRESS)?;
    if prog.fd().is_err() {
        load_retrying(|| prog.load())?;
    }
    Ok(prog)
}

/// The pinned port program's id; None before `up` pinned one.
pub fn port_program_id(pins: &PinDir) -> Result<Option<u32>> {
    let pin = pins.join(PORT_PROGRAM_PIN);
    if !pin.exists() {
        return Ok(None);
    }
    Ok(Some(ProgramInfo::from_pin(&pin)?.id()))
}

/// Which of `ports` run the pinned port program (`program_id`) at their
/// ingress, in `mode`.
pub async fn hooked_ports(
    nl: &Netlink,
    mode: AttachMode,
    program_id: u32,
    ports: &[Interface],
) -> Result<usize> {
    let mut hooked = 0;
    for port in ports {
        let has = match mode {
            AttachMode::Tcx => SchedClassifier::query_tcx(&port.name, TcAttachType::Ingress)
                .map(|(_, progs)| progs.iter().any(|p| p.id() == program_id))
                .unwrap_or(false),
            AttachMode::Netlink => {
                nl.has_ingress_filter(port.index, TC_PRIORITY, u32::from(PORT_TC_HANDLE))
                    .await?
            }
        };
        hooked += usize::from(has);
    }
    Ok(hooked)
}

fn link_pin(ifindex: u32) -> String {
    format!("{PORT_LINK_PIN}{ifindex}")
}

/// Whether an interface of this name exists (here, now).
fn exists(name: &str) -> bool {
    CString::new(name).is_ok_and(|c| {
        // SAFETY: a NUL-terminated string that lives across the call.
        unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
    })
}

/// Attaches the pinned port program to each of `ports` in `mode`: where it
/// is attached already, its program is swapped in place if `replace` (`up`,
/// after pinning a new version) and left alone otherwise. A port that
/// vanishes meanwhile (its container stopped) is skipped. Then removes the
/// TCX link pins of ports that are no longer docker0's (`current`).
/// Returns how many of `ports` have the program.
pub fn hook_ports(
    pins: &PinDir,
    mode: AttachMode,
    ports: &[Interface],
    current: &[Interface],
    replace: bool,
) -> Result<usize> {
    let mut prog = SchedClassifier::from_pin(pins.join(PORT_PROGRAM_PIN))?;
    let mut hooked = 0;
    for port in ports {
        let (name, ingress) = (port.name.as_str(), TcAttachType::Ingress);
        let result = match mode {
            AttachMode::Tcx => {
                let pin = pins.join(&link_pin(port.index));
                attach_tcx(&mut prog, &pin, name, ingress, replace)
            }
            AttachMode::Netlink => attach_filter(&mut prog, name, ingress, PORT_TC_HANDLE, replace),
        };
        match result {
            Ok(_) => hooked += 1,
            Err(_) if !exists(&port.name) => {}
            Err(e) => return Err(e),
        }
    }
    let live: HashSet<u32> = current.iter().map(|p| p.index).collect();
    for ifindex in pinned_links(pins)? {
        if !live.contains(&ifindex) {
            remove_pin(pins.join(&link_pin(ifindex)))?;
        }
    }
    Ok(hooked)
}

/// The ifindexes of the ports with a pinned TCX link.
fn pinned_links(pins: &PinDir) -> Result<Vec<u32>> {
    let Ok(entries) = std::fs::read_dir(pins.path()) else {
        return Ok(Vec::new());
    };
    Ok(entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| name.strip_prefix(PORT_LINK_PIN)?.parse().ok())
        .collect())
}

/// Takes the port program off every port (`down`): removes the TCX link
/// pins, and deletes exactly dr's filter on each of `ports` (docker0's);
/// then the program's pin.
pub fn unhook_ports(pins: &PinDir, ports: &[Interface]) -> Result<()> {
    for ifindex in pinned_links(pins)? {
        remove_pin(pins.join(&link_pin(ifindex)))?;
    }
    if pins.join(PORT_PROGRAM_PIN).exists() {
        for port in ports {
            match detach_filter(&port.name, TcAttachType::Ingress, PORT_TC_HANDLE) {
                Err(_) if !exists(&port.name) => {}
                result => {
                    result?;
                }
            }
        }
    }
    remove_pin(pins.join(PORT_PROGRAM_PIN))?;
    Ok(())
}
