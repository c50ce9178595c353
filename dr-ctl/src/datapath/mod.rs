//! Loading the embedded eBPF object, attaching its programs so they outlive
//! dr-ctl, and detaching. TC programs attach in one of two modes
//! ([`AttachMode`]): pinned TCX links (a TCX link dies with its process
//! unless pinned), or cls_bpf filters on a clsact qdisc, which the kernel
//! keeps until they are deleted; their programs are pinned so later runs
//! can name them.
//!
//! `hook.rs` says which program goes where; `attach.rs` attaches,
//! replaces and detaches them and reads back what is attached;
//! `pins.rs` replaces and removes pins; `ports.rs` attaches the port
//! program to each learned container's docker0 port; `sweeper.rs` and
//! `clock_sample.rs` run the two programs that are never attached; `dry_run.rs`
//! loads the copy that `trace` runs packets through.
mod attach;
mod clock_sample;
mod dry_run;
mod hook;
mod pins;
mod ports;
mod sweeper;

use std::path::Path;

use aya::{Ebpf, EbpfLoader};
use dr_common::{clock, map_names};

pub use attach::{
    attach, attached_mode, detach, hook_ids, is_attached, load_retrying, program, Attached,
    Attachment, HookIds,
};
pub use clock_sample::measure_clock;
pub use dry_run::{DryRun, Run};
pub use hook::{Hook, Kind, Side, TC_PRIORITY};
pub use pins::{remove_map_pins, SWEEPER_PIN};
pub use ports::{
    hook_ports, hooked_ports, pin_port_program, port_program, port_program_id, unhook_ports,
    PORT_PROGRAM_PIN,
};
pub use sweeper::{pin_sweeper, Sweeper};

use crate::{error::Result, migrate, object::EBPF_OBJECT};

/// Loads the object; its maps are created and pinned in `map_dir` (a bpffs
/// directory), or adopted from there if already pinned, so state survives
/// dr-ctl exiting and programs being replaced. New SNAT tables get
/// `nat_table_size` entries each, new peer tables `max_peers`; `log_level`
/// is the level of the programs' aya-log events (0: off); `coarse_clock`
/// the clock switch ([`crate::kernel::coarse_clock`] for the running kernel).
pub fn load(
    map_dir: &Path,
    nat_table_size: u32,
    max_peers: u32,
    log_level: u8,
    coarse_clock: u8,
) -> Result<Ebpf> {
    // Maps an older dr pinned with another layout are created anew and
    // filled from the old ones (see migrate/).
    migrate::set_aside_outdated(map_dir)?;
    let ebpf = EbpfLoader::new()
        .default_map_pin_directory(map_dir)
        // aya-log's level is fixed at load: events below it cost one branch.
        .override_global(aya_log::LEVEL, &log_level, true)
        .override_global(clock::COARSE_GLOBAL, &coarse_clock, true)
        .map_max_entries(map_names::NAT_FLOWS, nat_table_size)
        .map_max_entries(map_names::NAT_REVERSE, nat_table_size)
        .map_max_entries(map_names::INBOUND_FLOWS, nat_table_size)
        .map_max_entries(map_names::PEER_SUBNETS, peer_subnets_size(max_peers))
        .map_max_entries(map_names::PEER_TRAFFIC, max_peers)
        .map_max_entries(map_names::PEER_HOSTS, peer_hosts_size(max_peers))
        .load(EBPF_OBJECT)?;
    migrate::copy_set_aside(map_dir)?;
    Ok(ebpf)
}

/// The peer trie's entries for `max_peers` peers: one spare, since before
/// Linux 6.14 a full LPM trie refuses even to replace an entry it holds
/// (moving a peer to another host, a repeated `peer add`).
pub const fn peer_subnets_size(max_peers: u32) -> u32 {
    max_peers + 1
}

/// The peer host set's entries for `max_peers` peers: dr-ctl adds the new
/// `via` addresses before it removes the old ones, so a plan that moves
/// every peer holds both sets for a moment.
pub const fn peer_hosts_size(max_peers: u32) -> u32 {
    2 * max_peers
}

#[cfg(test)]
mod tests {
    use aya_obj::maps::PinningType;

    use super::*;

    fn sorted(mut names: Vec<&str>) -> Vec<&str> {
        names.sort_unstable();
        names
    }

    #[test]
    fn the_object_pins_exactly_the_declared_maps() {
        let object = aya_obj::Object::parse(EBPF_OBJECT).unwrap();
        let pinned = object
            .maps
            .iter()
            .filter(|(_, map)| map.pinning() == PinningType::ByName)
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(sorted(pinned), sorted(map_names::ALL.to_vec()));
    }

    #[test]
    fn architecture_md_describes_every_map() {
        let doc = include_str!("../../../ARCHITECTURE.md");
        let section = doc
            .split("\n## Maps\n")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("ARCHITECTURE.md has a Maps section");
        let listed = section
            .lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|cell| cell.split('`').next())
            .collect();
        let mut documented = map_names::ALL.to_vec();
        documented.push(dr_common::dry_run::TRACE_MAP);
        assert_eq!(sorted(listed), sorted(documented));
    }
}
