//! Copying a map's entries into its new version, value sizes known at run time.
use std::{
    os::fd::{AsFd, AsRawFd},
    path::Path,
};

use aya::maps::MapData;

use super::{
    layout::pinned_layout,
    syscall::{lookup, next_key, update},
};
use crate::error::{io_context, Error, Result};

/// How a copied value meets the one already in the new map.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Merge {
    Replace,
    /// Both are `u64` counters: the sum is stored. Increments the new
    /// programs make between the read and the write are lost (a few packets'
    /// worth, once, at the upgrade).
    AddCounters,
}

pub(super) fn copy_entries(from: &Path, to: &Path, merge: Merge) -> Result<()> {
    let (old, new) = (pinned_layout(from)?, pinned_layout(to)?);
    let (old_map, new_map) = (MapData::from_pin(from)?, MapData::from_pin(to)?);
    let (old_fd, new_fd) = (
        old_map.fd().as_fd().as_raw_fd(),
        new_map.fd().as_fd().as_raw_fd(),
    );
    let cpus = if old.is_per_cpu() {
        aya::util::nr_cpus().map_err(|(what, source)| Error::Io {
            context: format!("reading {what}"),
            source,
        })?
    } else {
        1
    };
    // Per-CPU values come one per possible CPU, each rounded up to 8 bytes.
    let slot = |size: u32| {
        if old.is_per_cpu() {
            (size as usize).next_multiple_of(8)
        } else {
            size as usize
        }
    };
    let (old_slot, new_slot) = (slot(old.value_size), slot(new.value_size));
    let mut key: Option<Vec<u8>> = None;
    let mut next = vec![0u8; old.key_size as usize];
    let mut value = vec![0u8; old_slot * cpus];
    let context = || format!("copying {} into {}", from.display(), to.display());
    while next_key(old_fd, key.as_deref(), &mut next).map_err(io_context(context()))? {
        key = Some(next.clone());
        if old.is_array()
            && u32::from_ne_bytes(next[..4].try_into().expect("4-byte array key"))
                >= new.max_entries
        {
            continue;
        }
        match lookup(old_fd, &next, &mut value) {
            Ok(()) => {}
            // Removed by the datapath since the key was read.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(io_context(context())(e)),
        }
        let mut widened = vec![0u8; new_slot * cpus];
        if merge == Merge::AddCounters {
            lookup(new_fd, &next, &mut widened).map_err(io_context(context()))?;
            for cpu in 0..cpus {
                let (o, n) = (cpu * old_slot, cpu * new_slot);
                let words = old.value_size as usize / 8;
                for w in 0..words {
                    let at = |base: usize| base + w * 8..base + w * 8 + 8;
                    let sum = u64::from_ne_bytes(value[at(o)].try_into().expect("8 bytes"))
                        .wrapping_add(u64::from_ne_bytes(
                            widened[at(n)].try_into().expect("8 bytes"),
                        ));
                    widened[at(n)].copy_from_slice(&sum.to_ne_bytes());
                }
            }
            update(new_fd, &next, &widened).map_err(io_context(context()))?;
            continue;
        }
        for cpu in 0..cpus {
            let (o, n) = (cpu * old_slot, cpu * new_slot);
            widened[n..n + old.value_size as usize]
                .copy_from_slice(&value[o..o + old.value_size as usize]);
        }
        update(new_fd, &next, &widened).map_err(io_context(context()))?;
    }
    Ok(())
}
