//! The dry-run copy of the datapath behind `dr-ctl trace` (see
//! dr-ebpf/src/dry_run.rs): the embedded object loaded again with `DRY_RUN`
//! set, adopting the pinned maps, and its programs run with
//! BPF_PROG_TEST_RUN. It reads the live tables and writes none of them;
//! what a packet would have counted and where it would have gone comes back
//! from its private `TRACE` map.
use std::path::Path;

use aya::{
    maps::Array,
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use dr_common::{clock, dry_run, map_names, program_names, Trace};

use super::{
    attach::{object_program, program},
    Hook,
};
use crate::object::EBPF_OBJECT;
use crate::{
    error::{Error, Result},
    kernel,
    maps::nat_table_size,
};

/// The copy; its programs are loaded when first run.
pub struct DryRun(Ebpf);

/// What one program did with a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// The program's return value (a TC action or an XDP action).
    pub verdict: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    pub trace: Trace,
}

/// Room for a frame the program makes longer.
const HEADROOM: usize = 256;

impl DryRun {
    /// Loads the copy on the maps pinned in `map_dir`, which must be those
    /// of this build's object (`up` with this dr-ctl made them): the loader
    /// would create and pin any map missing there.
    pub fn load(map_dir: &Path) -> Result<Self> {
        let table_size = nat_table_size(map_dir)?;
        let ebpf = EbpfLoader::new()
            .default_map_pin_directory(map_dir)
            .override_global(dry_run::GLOBAL, &1u8, true)
            // Its events would go to a log buffer nobody reads.
            .override_global(aya_log::LEVEL, &0u8, true)
            .override_global(clock::COARSE_GLOBAL, &kernel::coarse_clock(), true)
            .map_max_entries(map_names::NAT_FLOWS, table_size)
            .map_max_entries(map_names::NAT_REVERSE, table_size)
            .map_max_entries(map_names::INBOUND_FLOWS, table_size)
            .load(EBPF_OBJECT)?;
        Ok(Self(ebpf))
    }

    /// Runs `hook`'s program on `frame`.
    pub fn run_tc(&mut self, hook: Hook, frame: &[u8]) -> Result<Run> {
        self.reset_trace()?;
        let prog = program(&mut self.0, hook)?;
        let (verdict, frame) = test_run(prog, frame)?;
        self.finish(verdict, frame)
    }

    /// Runs the uplink's XDP program on `frame`.
    pub fn run_xdp(&mut self, frame: &[u8]) -> Result<Run> {
        self.reset_trace()?;
        let prog: &mut Xdp = object_program(&mut self.0, program_names::UPLINK_XDP)?;
        if prog.fd().is_err() {
            prog.load()?;
        }
        let (verdict, frame) = test_run(prog, frame)?;
        self.finish(verdict, frame)
    }

    fn trace_map(&mut self) -> Result<Array<&mut aya::maps::MapData, Trace>> {
        let map = self.0.map_mut(dry_run::TRACE_MAP).ok_or_else(|| {
            Error::Internal(format!("map {} missing from object", dry_run::TRACE_MAP))
        })?;
        Ok(Array::try_from(map)?)
    }

    fn reset_trace(&mut self) -> Result<()> {
        Ok(self.trace_map()?.set(0, Trace::default(), 0)?)
    }

    fn finish(&mut self, verdict: u32, frame: Vec<u8>) -> Result<Run> {
        let trace = self.trace_map()?.get(&0, 0)?;
        Ok(Run {
            verdict,
            frame,
            trace,
        })
    }
}

fn test_run<P>(prog: &P, frame: &[u8]) -> Result<(u32, Vec<u8>)>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    let mut out = vec![0u8; frame.len() + HEADROOM];
    let result = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..Default::default()
    })?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}
