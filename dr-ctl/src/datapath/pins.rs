//! The pin directory's files that are not maps' own business: pinning a
//! program in place of an older one, and removing pins.
use std::path::{Path, PathBuf};

use dr_common::map_names;

use crate::{
    bpffs::PinDir,
    error::{io_context, Error, Result},
};

/// The NAT sweeper's pin (see sweeper.rs).
pub const SWEEPER_PIN: &str = "prog_nat_sweep";

/// Pins a program as `name`, replacing the pin there without a moment when
/// `name` is missing: pinned under a temporary name, then renamed over the
/// old pin. (bpffs refuses dots in names.)
pub fn pin_replacing(
    dir: &Path,
    name: &str,
    pin: impl FnOnce(&Path) -> std::result::Result<(), aya::pin::PinError>,
) -> Result<()> {
    let path = dir.join(name);
    let fresh = dir.join(format!("new_{name}"));
    remove_pin(fresh.clone())?;
    pin(&fresh).map_err(|source| Error::Pin {
        path: fresh.clone(),
        source,
    })?;
    std::fs::rename(&fresh, &path).map_err(io_context(format!("renaming {}", fresh.display())))
}

/// Removes the map pins (the maps go when their last user does) and the
/// NAT sweeper's, which only works on them.
pub fn remove_map_pins(pins: &PinDir) -> Result<()> {
    for name in map_names::ALL {
        remove_pin(pins.join(name))?;
    }
    remove_pin(pins.join(SWEEPER_PIN))?;
    Ok(())
}

pub fn remove_pin(path: PathBuf) -> Result<bool> {
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_context(format!("removing {}", path.display()))(e)),
    }
}
