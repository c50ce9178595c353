//! Upgrading in place: pinned maps whose layout this build changed.
//!
//! A newer dr may append fields to a type stored in a pinned map (see
//! `dr_common::DatapathConfig`) or entries to an array (counters). Loading
//! such an object over the old pins would fail, and `down` + `up` would stop
//! forwarding and forget every translation. Instead, [`set_aside_outdated`]
//! moves each outdated pin to `<name>_PREVIOUS` before the object is loaded, the
//! loader creates the map anew, [`copy_set_aside`] copies every entry over
//! (values zero-extended, arrays up to the shorter length; counters are
//! added once the new programs are attached), and `up` then removes the old
//! pins ([`finish`]).
//! Until then the attached programs keep using the old maps, so forwarding
//! never stops; a killed `up` leaves the old pins for the next one to copy
//! again.
//!
//!
//! `layout.rs` decides which maps need it, `copy.rs` copies their entries
//! (sizes known at run time) through the bpf(2) commands in `syscall.rs`.
mod copy;
mod layout;
mod syscall;

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use aya::maps::MapData;
use dr_common::{map_names, DatapathConfig};

use copy::{copy_entries, Merge};
pub use layout::{needs_migration, Layout};
use layout::{object_layouts, pinned_layout, BPF_MAP_TYPE_PERCPU_ARRAY};
use syscall::lookup;

use crate::error::{io_context, Error, Result};

fn set_aside_path(dir: &Path, name: &str) -> PathBuf {
    // bpffs refuses names with a dot.
    dir.join(format!("{name}_PREVIOUS"))
}

/// Whether a migration was started and not finished (set-aside pins remain).
pub fn pending(dir: &Path) -> bool {
    map_names::ALL
        .iter()
        .any(|name| set_aside_path(dir, name).exists())
}

/// Arrays whose number of entries `up` chooses (`--max-peers`): a pinned
/// one keeps its size.
pub const SIZED_BY_UP: [&str; 1] = [map_names::PEER_TRAFFIC];

/// Maps `up` fills anew from the host's state (the endpoints, from the
/// neighbour table): any change of their layout is migrated, by creating
/// them empty; meanwhile their containers are delivered through docker0.
pub const RELEARNED: [&str; 1] = [map_names::ENDPOINTS];

/// The pinned maps in `dir` whose layout differs from this build's.
pub fn outdated(dir: &Path) -> Result<Vec<&'static str>> {
    let wanted = object_layouts()?;
    let mut out = Vec::new();
    for name in map_names::ALL {
        let path = dir.join(name);
        let Some(&want) = wanted.get(name) else {
            continue;
        };
        if !path.exists() {
            continue;
        }
        let pinned = pinned_layout(&path)?;
        let want = if SIZED_BY_UP.contains(&name) {
            Layout {
                max_entries: pinned.max_entries,
                ..want
            }
        } else {
            want
        };
        let migrate = if RELEARNED.contains(&name) {
            pinned != want
        } else {
            needs_migration(name, pinned, want)?
        };
        if migrate {
            out.push(name);
        }
    }
    Ok(out)
}

/// Moves the pins of outdated maps aside, so that loading the object creates
/// them anew. Returns their names.
pub fn set_aside_outdated(dir: &Path) -> Result<Vec<&'static str>> {
    let names = outdated(dir)?;
    for name in &names {
        // bpffs refuses rename(2): pin the map again under its new name.
        let (from, to) = (dir.join(name), set_aside_path(dir, name));
        MapData::from_pin(&from)?
            .pin(&to)
            .map_err(|source| Error::Pin {
                path: to.clone(),
                source,
            })?;
        std::fs::remove_file(&from).map_err(io_context(format!(
            "removing {} to migrate it",
            from.display()
        )))?;
    }
    Ok(names)
}

/// Copies every entry of each set-aside map into its new version, but for
/// counters (per-CPU arrays), which the attached programs still count into
/// ([`finish`] adds them once those are replaced), and maps `up` fills
/// anew ([`RELEARNED`]). Returns the maps copied.
pub fn copy_set_aside(dir: &Path) -> Result<Vec<&'static str>> {
    let mut copied = Vec::new();
    for name in map_names::ALL {
        let old = set_aside_path(dir, name);
        if old.exists() && !RELEARNED.contains(&name) && !is_counters(&pinned_layout(&old)?) {
            copy_entries(&old, &dir.join(name), Merge::Replace)?;
            copied.push(name);
        }
    }
    Ok(copied)
}

/// The new programs are attached and the old maps no longer written: adds
/// the old counters to the new ones and removes the set-aside pins.
pub fn finish(dir: &Path) -> Result<()> {
    for name in map_names::ALL {
        let old = set_aside_path(dir, name);
        if old.exists() && is_counters(&pinned_layout(&old)?) {
            copy_entries(&old, &dir.join(name), Merge::AddCounters)?;
        }
    }
    discard(dir)
}

/// dr's per-CPU arrays hold only `u64` counters.
fn is_counters(layout: &Layout) -> bool {
    layout.map_type == BPF_MAP_TYPE_PERCPU_ARRAY
}

/// Removes the set-aside pins (the maps go with their last user).
pub fn discard(dir: &Path) -> Result<()> {
    for name in map_names::ALL {
        let old = set_aside_path(dir, name);
        match std::fs::remove_file(&old) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_context(format!("removing {}", old.display()))(e))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The host's configuration as any version of dr pinned it (a prefix of
/// this build's, the rest zero), from the set-aside pin if there is one.
pub fn pinned_config(dir: &Path) -> Result<DatapathConfig> {
    let old = set_aside_path(dir, map_names::DATAPATH_CONFIG);
    let path = if old.exists() {
        old
    } else {
        dir.join(map_names::DATAPATH_CONFIG)
    };
    let layout = pinned_layout(&path)?;
    let map = MapData::from_pin(&path)?;
    let mut value = vec![0u8; layout.value_size as usize];
    lookup(
        map.fd().as_fd().as_raw_fd(),
        &0u32.to_ne_bytes(),
        &mut value,
    )
    .map_err(io_context(format!("reading {}", path.display())))?;
    let mut config = DatapathConfig::default();
    let n = value.len().min(std::mem::size_of::<DatapathConfig>());
    // SAFETY: DatapathConfig is plain integers (aya::Pod): any bytes are a
    // valid value, and at most its size is written.
    unsafe {
        std::ptr::copy_nonoverlapping(
            value.as_ptr(),
            (&mut config as *mut DatapathConfig).cast::<u8>(),
            n,
        )
    };
    Ok(config)
}
