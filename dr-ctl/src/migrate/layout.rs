//! Which pinned maps differ from this build's and whether dr can migrate them.
use std::{collections::HashMap, path::Path};

use aya::maps::MapInfo;

use crate::{
    error::{Error, Result},
    object::EBPF_OBJECT,
};

const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub(super) const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
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
    pub(super) fn is_array(&self) -> bool {
        matches!(
            self.map_type,
            BPF_MAP_TYPE_ARRAY | BPF_MAP_TYPE_PERCPU_ARRAY
        )
    }

    pub(super) fn is_per_cpu(&self) -> bool {
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

pub(super) fn pinned_layout(path: &Path) -> Result<Layout> {
    let info = MapInfo::from_pin(path)?;
    Ok(Layout {
        map_type: info.map_type()? as u32,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    })
}

/// The layout of every map in this build's eBPF object.
pub(super) fn object_layouts() -> Result<HashMap<String, Layout>> {
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
