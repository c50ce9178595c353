//! Measuring the programs' clock (see `dr_common::clock`): `up` runs
//! `dr_clock_sample` (BPF_PROG_TEST_RUN) until jiffies turn, twice, 100 ms
//! apart, and the configuration keeps the tick and offset that explain
//! both turns. Once per boot: the pinned configuration goes with it.
use std::{
    thread,
    time::{Duration, Instant},
};

use aya::{
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use dr_common::{
    clock::{ClockSample, JiffiesClock, JiffyEdge},
    program_names,
};

use crate::error::{Error, Result};

/// Between the two turns: enough for turns seen to within
/// [`MAX_EDGE_SPACING_NS`] to tell HZ 1000 from 1001.
const WINDOW: Duration = Duration::from_millis(100);
/// A turn whose samples lie further apart (the vCPU was preempted between
/// them) is passed over for the next one.
const MAX_EDGE_SPACING_NS: u64 = 20_000;
/// A jiffy lasts at most 100 ms (HZ 10).
const EDGE_WAIT: Duration = Duration::from_millis(250);
const TRIES: usize = 3;
/// XDP_PASS: the sample was written.
const SAMPLED: u32 = 2;
/// The frame the sampler writes into: an Ethernet frame's minimum.
const FRAME_LEN: usize = 64;

/// Loads `ebpf`'s clock sampler and measures the jiffies clock with it.
pub fn measure_clock(ebpf: &mut Ebpf) -> Result<JiffiesClock> {
    let prog: &mut Xdp = super::attach::object_program(ebpf, program_names::CLOCK_SAMPLE)?;
    if prog.fd().is_err() {
        super::load_retrying(|| prog.load())?;
    }
    for _ in 0..TRIES {
        let first = edge(prog)?;
        thread::sleep(WINDOW);
        let second = edge(prog)?;
        if let Some(clock) = JiffiesClock::from_edges(&first, &second) {
            return Ok(clock);
        }
    }
    Err(Error::Internal(format!(
        "jiffies did not advance at a steady rate in {TRIES} tries"
    )))
}

/// The next turn of jiffies that two samples close together catch.
fn edge(prog: &Xdp) -> Result<JiffyEdge> {
    let deadline = Instant::now() + EDGE_WAIT;
    let mut before = sample(prog)?;
    while Instant::now() < deadline {
        let after = sample(prog)?;
        let edge = JiffyEdge { before, after };
        if edge
            .uncertainty_ns()
            .is_some_and(|spacing| spacing <= MAX_EDGE_SPACING_NS)
        {
            return Ok(edge);
        }
        before = after;
    }
    Err(Error::Internal(format!(
        "jiffies did not advance within {EDGE_WAIT:?}"
    )))
}

fn sample(prog: &Xdp) -> Result<ClockSample> {
    let frame = [0u8; FRAME_LEN];
    let mut written = [0u8; FRAME_LEN];
    let result = prog.test_run(TestRunOptions {
        data_in: Some(&frame),
        data_out: Some(&mut written),
        ..Default::default()
    })?;
    if result.return_value != SAMPLED {
        return Err(Error::Internal(format!(
            "the clock sampler failed (returned {})",
            result.return_value
        )));
    }
    let word = |at: usize| u64::from_ne_bytes(written[at..at + 8].try_into().expect("8 bytes"));
    Ok(ClockSample {
        jiffies: word(0),
        monotonic_ns: word(8),
    })
}
