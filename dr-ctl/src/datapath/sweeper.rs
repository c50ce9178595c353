//! The SNAT table's garbage collection. `up` loads `dr_nat_sweep` (see
//! dr-ebpf/src/nat_sweep.rs) and pins it next to the maps; `nat gc` and
//! `nat flush` list the tables to find candidates and run the program on
//! each (BPF_PROG_TEST_RUN), which re-checks the entry and removes it. The
//! datapath reclaims ports all the time: a check here and a delete by key a
//! system call later could delete the claim of the port's new holder.
use std::{
    mem::{offset_of, size_of},
    path::Path,
};

use aya::{
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use aya_obj::programs::XdpAttachType;
use dr_common::{
    nat::{FlowKey, ReverseKey, SweepOp, SweepRequest, Timeouts},
    program_names,
};

use super::pins::{pin_replacing, SWEEPER_PIN};
use crate::{
    error::{Error, Result},
    maps::{monotonic_ns, Maps},
};

/// XDP_PASS: the sweeper read the request.
const DONE: u32 = 2;

/// Loads the sweeper of `ebpf` (whose maps are the ones pinned in the pin
/// directory `dir`) and pins it there in place of an older version's.
pub fn pin_sweeper(ebpf: &mut Ebpf, dir: &Path) -> Result<()> {
    let prog: &mut Xdp = super::attach::object_program(ebpf, program_names::NAT_SWEEP)?;
    super::load_retrying(|| prog.load())?;
    pin_replacing(dir, SWEEPER_PIN, |path| prog.pin(path))
}

/// The pinned sweeper of a datapath that is up.
pub struct Sweeper(Xdp);

impl Sweeper {
    /// The sweeper pinned in the pin directory `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(SWEEPER_PIN);
        if !path.exists() {
            return Err(Error::Conflict(format!(
                "{} is missing (a datapath set up by an older dr): run `dr-ctl up` \
                 (or `apply`) with this version",
                path.display()
            )));
        }
        Ok(Self(Xdp::from_pin(path, XdpAttachType::Interface)?))
    }

    /// Runs the sweeper on one entry; whether it removed it.
    fn run(&self, op: SweepOp, flow: FlowKey, reverse: ReverseKey) -> Result<bool> {
        let request = SweepRequest {
            op: op as u8,
            flow,
            reverse,
            ..Default::default()
        }
        .to_bytes();
        let mut answer = [0u8; size_of::<SweepRequest>()];
        let result = self.0.test_run(TestRunOptions {
            data_in: Some(&request),
            data_out: Some(&mut answer),
            ..Default::default()
        })?;
        if result.return_value != DONE {
            return Err(Error::Internal(format!(
                "the NAT sweeper refused {op:?} (returned {})",
                result.return_value
            )));
        }
        Ok(answer[offset_of!(SweepRequest, removed)] == 1)
    }

    /// Removes expired translations, and reverse entries whose translation
    /// is gone; returns how many translations. The datapath counts them
    /// (`nat_expired_gc`).
    pub fn gc(&self, maps: &Maps, timeouts: &Timeouts) -> Result<u64> {
        let now = monotonic_ns();
        let mut removed = 0;
        for translation in maps.nat_translations()? {
            if translation.expired(now, timeouts) && self.remove_expired(&translation.key)? {
                removed += 1;
            }
        }
        self.remove_dead_reverse(maps)?;
        Ok(removed)
    }

    /// Removes the translation of `key` if it is (still) expired.
    pub fn remove_expired(&self, key: &FlowKey) -> Result<bool> {
        self.run(SweepOp::ExpiredFlow, *key, ReverseKey::default())
    }

    /// Removes every translation; returns how many.
    pub fn flush(&self, maps: &Maps) -> Result<u64> {
        let mut removed = 0;
        for (key, _) in maps.nat_flows()? {
            if self.run(SweepOp::AnyFlow, key, ReverseKey::default())? {
                removed += 1;
            }
        }
        self.remove_dead_reverse(maps)?;
        Ok(removed)
    }

    /// Reverse halves whose flow is gone (evicted, or removed above).
    fn remove_dead_reverse(&self, maps: &Maps) -> Result<()> {
        for (rkey, reverse) in maps.nat_reverse_entries()? {
            if !maps.holds_port(&rkey, &reverse.origin)? {
                self.run(SweepOp::DeadReverse, FlowKey::default(), rkey)?;
            }
        }
        Ok(())
    }
}
