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
//! aya 0.14 reads and writes maps only through key and value types known
//! at compile time; copying entries whose sizes are known at run time takes
//! the bpf(2) map commands, written out at the end of this file.
use std::{
    collections::HashMap,
    io,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use aya::maps::{MapData, MapInfo};
use dr_common::{map_names, DatapathConfig};

use crate::{
    datapath::object::EBPF_OBJECT,
    error::{io_context, Error, Result},
};

const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_LRU_PERCPU_HASH: u32 = 10;

/// What makes two versions of a map compatible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl Layout {
    fn is_array(&self) -> bool {
        matches!(
            self.map_type,
            BPF_MAP_TYPE_ARRAY | BPF_MAP_TYPE_PERCPU_ARRAY
        )
    }

    fn is_per_cpu(&self) -> bool {
        matches!(
            self.map_type,
            BPF_MAP_TYPE_PERCPU_HASH | BPF_MAP_TYPE_PERCPU_ARRAY | BPF_MAP_TYPE_LRU_PERCPU_HASH
        )
    }
}

/// Whether entries copy from one map type to the other as they are: the
/// same type, or a hash table that became LRU or stopped being LRU.
fn same_entries(from: u32, to: u32) -> bool {
    let hash = |t| matches!(t, BPF_MAP_TYPE_HASH | BPF_MAP_TYPE_LRU_HASH);
    from == to || (hash(from) && hash(to))
}

/// Whether a map pinned as `pinned` must be migrated to `wanted`; an error
/// for a change dr cannot migrate (another kind of map or key, a smaller
/// value). The size of a hash table is `up`'s option, not a layout change,
/// and so is the capacity of the peer tables ([`SIZED_BY_UP`]).
pub fn needs_migration(name: &str, pinned: Layout, wanted: Layout) -> Result<bool> {
    if !same_entries(pinned.map_type, wanted.map_type)
        || pinned.key_size != wanted.key_size
        || pinned.value_size > wanted.value_size
    {
        return Err(Error::Conflict(format!(
            "the pinned map {name} comes from an incompatible version of dr \
             ({pinned:?}, this one has {wanted:?}): run `dr-ctl down` with that version first"
        )));
    }
    Ok(pinned.map_type != wanted.map_type
        || pinned.value_size != wanted.value_size
        || (wanted.is_array() && pinned.max_entries != wanted.max_entries))
}

fn pinned_layout(path: &Path) -> Result<Layout> {
    let info = MapInfo::from_pin(path)?;
    Ok(Layout {
        map_type: info.map_type()? as u32,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    })
}

/// The layout of every map in this build's eBPF object.
fn object_layouts() -> Result<HashMap<String, Layout>> {
    let object = aya_obj::Object::parse(EBPF_OBJECT)
        .map_err(|e| Error::Internal(format!("parsing the embedded eBPF object: {e}")))?;
    Ok(object
        .maps
        .iter()
        .map(|(name, map)| {
            let layout = Layout {
                map_type: map.map_type(),
                key_size: map.key_size(),
                value_size: map.value_size(),
                max_entries: map.max_entries(),
            };
            (name.clone(), layout)
        })
        .collect())
}

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
        if needs_migration(name, pinned, want)? {
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
/// counters (per-CPU arrays), which the attached programs still count into:
/// [`finish`] adds them once those are replaced. Returns the maps copied.
pub fn copy_set_aside(dir: &Path) -> Result<Vec<&'static str>> {
    let mut copied = Vec::new();
    for name in map_names::ALL {
        let old = set_aside_path(dir, name);
        if old.exists() && !is_counters(&pinned_layout(&old)?) {
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

/// How a copied value meets the one already in the new map.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Merge {
    Replace,
    /// Both are `u64` counters: the sum is stored. Increments the new
    /// programs make between the read and the write are lost (a few packets'
    /// worth, once, at the upgrade).
    AddCounters,
}

fn copy_entries(from: &Path, to: &Path, merge: Merge) -> Result<()> {
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

// The bpf(2) map element commands and their attribute block.
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_ANY: u64 = 0;

#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    /// The value, or the next key for `BPF_MAP_GET_NEXT_KEY`.
    value: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, fd: i32, key: *const u8, value: *mut u8, flags: u64) -> io::Result<()> {
    let attr = ElemAttr {
        map_fd: fd as u32,
        _pad: 0,
        key: key as u64,
        value: value as u64,
        flags,
    };
    // SAFETY: the attribute block and the buffers it points to outlive the
    // call, and the callers size the buffers for the map's key and value.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &attr as *const ElemAttr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The key after `key` (the first key for None) into `next`; false at the end.
fn next_key(fd: i32, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let key = key.map_or(std::ptr::null(), <[u8]>::as_ptr);
    match bpf(BPF_MAP_GET_NEXT_KEY, fd, key, next.as_mut_ptr(), 0) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

fn lookup(fd: i32, key: &[u8], value: &mut [u8]) -> io::Result<()> {
    bpf(BPF_MAP_LOOKUP_ELEM, fd, key.as_ptr(), value.as_mut_ptr(), 0)
}

fn update(fd: i32, key: &[u8], value: &[u8]) -> io::Result<()> {
    bpf(
        BPF_MAP_UPDATE_ELEM,
        fd,
        key.as_ptr(),
        value.as_ptr().cast_mut(),
        BPF_ANY,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG_V1: Layout = Layout {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 96,
        max_entries: 1,
    };

    #[test]
    fn grown_values_and_arrays_migrate_the_rest_stays() {
        let grown = Layout {
            value_size: 104,
            ..CONFIG_V1
        };
        assert!(needs_migration("C", CONFIG_V1, grown).unwrap());
        assert!(!needs_migration("C", grown, grown).unwrap());
        let counters = |n| Layout {
            map_type: BPF_MAP_TYPE_PERCPU_ARRAY,
            key_size: 4,
            value_size: 16,
            max_entries: n,
        };
        assert!(needs_migration("COUNTERS", counters(19), counters(23)).unwrap());
        // A hash table's size is `up`'s --nat-table-size, not a new layout.
        let table = |n| Layout {
            map_type: 9,
            key_size: 16,
            value_size: 24,
            max_entries: n,
        };
        assert!(!needs_migration("NAT_FLOWS", table(1024), table(65536)).unwrap());
        // A table that stops being LRU keeps its entries.
        let not_lru = Layout {
            map_type: BPF_MAP_TYPE_HASH,
            ..table(1024)
        };
        assert!(needs_migration("NAT_REVERSE", table(1024), not_lru).unwrap());
    }

    #[test]
    fn incompatible_changes_are_refused() {
        for wanted in [
            Layout {
                value_size: 80,
                ..CONFIG_V1
            },
            Layout {
                key_size: 8,
                ..CONFIG_V1
            },
            Layout {
                map_type: BPF_MAP_TYPE_PERCPU_ARRAY,
                ..CONFIG_V1
            },
        ] {
            let e = needs_migration("DATAPATH_CONFIG", CONFIG_V1, wanted).unwrap_err();
            assert!(e.to_string().contains("dr-ctl down"), "{e}");
        }
    }
}
