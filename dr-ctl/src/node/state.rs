//! dr-ctl's bookkeeping about the node ([`NodeState`], pinned as
//! `NODE_STATE`): what `up` created, how XDP is attached, the programs' log
//! level and which object is attached. No program reads it.
//!
//! Before `NODE_STATE` existed, these were fields of `DATAPATH_CONFIG`,
//! now retired. A node set up by such a dr has no recorded state (the map
//! is created empty when this version's object is loaded over its pins): its
//! bookkeeping is carried over from the retired fields until `up` records
//! it. `up` writes the node state before the configuration that zeroes the
//! retired fields, so a dr-ctl killed between the two loses nothing.
use std::path::Path;

use aya::maps::{Array, Map, MapData};
use dr_common::{map_names, DatapathConfig, NodeState};

use crate::error::Result;

/// The node state of a datapath configured as `config`: the recorded one,
/// or an older dr's bookkeeping carried over from `config`.
pub fn current(recorded: Option<NodeState>, config: &DatapathConfig) -> NodeState {
    recorded
        .filter(|state| state.recorded != 0)
        .unwrap_or_else(|| carried_over(config))
}

/// The node state of the datapath pinned in `dir` and configured as `config`.
pub fn pinned(dir: &Path, config: &DatapathConfig) -> Result<NodeState> {
    Ok(current(read(dir)?, config))
}

/// An older dr's bookkeeping, from the fields `DatapathConfig` has retired.
fn carried_over(config: &DatapathConfig) -> NodeState {
    NodeState {
        recorded: 1,
        owned: config.retired_owned,
        object_hash: config.retired_object_hash,
        xdp_mode: config.retired_xdp_mode,
        datapath_log: config.retired_datapath_log,
        _pad: [0; 6],
    }
}

/// A recorded node state with these values.
pub fn recorded(owned: u32, object_hash: u64, xdp_mode: u8, datapath_log: u8) -> NodeState {
    NodeState {
        recorded: 1,
        owned,
        object_hash,
        xdp_mode,
        datapath_log,
        _pad: [0; 6],
    }
}

fn open(dir: &Path) -> Result<Array<MapData, NodeState>> {
    let data = MapData::from_pin(dir.join(map_names::NODE_STATE))?;
    Ok(Map::from_map_data(data)?.try_into()?)
}

/// The node state pinned in `dir`, if this version's maps are pinned there.
pub fn read(dir: &Path) -> Result<Option<NodeState>> {
    if !dir.join(map_names::NODE_STATE).exists() {
        return Ok(None);
    }
    Ok(Some(open(dir)?.get(&0, 0)?))
}

/// Records `state` in `dir`'s `NODE_STATE`.
pub fn write(dir: &Path, state: &NodeState) -> Result<()> {
    Ok(open(dir)?.set(0, state, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An older dr's configuration with its bookkeeping in the fields
    /// retired since.
    fn older_config() -> DatapathConfig {
        DatapathConfig {
            enabled: 1,
            retired_prefix_len: 24,
            retired_owned: dr_common::OWNED_BRIDGE | dr_common::OWNED_ADDRESS,
            retired_xdp_mode: dr_common::XDP_GENERIC,
            retired_datapath_log: 3,
            retired_object_hash: 0x1234_5678_9abc_def0,
            ..DatapathConfig::default()
        }
    }

    #[test]
    fn an_older_configs_bookkeeping_is_carried_over() {
        let config = older_config();
        let expected = recorded(
            dr_common::OWNED_BRIDGE | dr_common::OWNED_ADDRESS,
            0x1234_5678_9abc_def0,
            dr_common::XDP_GENERIC,
            3,
        );
        // No NODE_STATE pinned yet, or the one just created, still empty.
        assert_eq!(current(None, &config), expected);
        assert_eq!(current(Some(NodeState::default()), &config), expected);
    }

    #[test]
    fn a_recorded_state_wins_over_the_retired_fields() {
        let state = recorded(0, 42, dr_common::XDP_OFF, 0);
        assert_eq!(current(Some(state), &older_config()), state);
    }
}
