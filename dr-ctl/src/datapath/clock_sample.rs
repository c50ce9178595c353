//! Measuring the programs' clock (see `dr_common::clock`): `up` runs
//! `dr_clock_sample` (BPF_PROG_TEST_RUN) until jiffies turn, twice, 100 ms or more
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

/// Between the two turns, at first: long enough for 1% of it to cover a
/// tick handler that ran late (see `JiffiesClock::from_edges`). Where
/// one ran later still (a busy or emulated machine), the second turn is
/// taken again each WINDOW, up to MAX_WINDOW after the first: the longer
/// the time between them, the later a turn may be.
const WINDOW: Duration = Duration::from_millis(100);
const MAX_WINDOW: Duration = Duration::from_secs(2);
/// A turn whose samples lie further apart (the vCPU was preempted between
/// them) is passed over for the next one.
const MAX_EDGE_SPACING_NS: u64 = 200_000;
/// A jiffy lasts at most 100 ms (HZ 10).
const EDGE_WAIT: Duration = Duration::from_millis(250);
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
    let first = edge(prog)?;
    let started = Instant::now();
    while started.elapsed() < MAX_WINDOW {
        thread::sleep(WINDOW);
        let second = edge(prog)?;
        if let Some(clock) = JiffiesClock::from_edges(&first, &second) {
            return Ok(clock);
        }
    }
    Err(Error::Internal(format!(
        "jiffies did not advance at a steady rate over {MAX_WINDOW:?}"
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
