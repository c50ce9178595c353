//! Measuring the programs' clock (see `dr_common::clock`): the tick is the
//! kernel's `TICK_NSEC`, which `clock_getres` reports for the coarse clocks;
//! `up` runs `dr_clock_sample` (BPF_PROG_TEST_RUN) across a few turns of
//! jiffies for the offset, and the configuration keeps both. Once per
//! boot: the pinned configuration goes with it.
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
use nix::time::{clock_getres, ClockId};

use crate::error::{Error, Result};

/// Turns sampled, GAP apart: each puts the offset no earlier than its
/// samples' spacing allows, a late tick handler only later; the least
/// delayed one is kept.
const TURNS: usize = 4;
const GAP: Duration = Duration::from_millis(30);
/// A turn whose samples lie further apart (the vCPU was preempted between
/// them) is passed over for the next one: the clock may read this much
/// behind CLOCK_MONOTONIC, nothing next to timeouts counted in seconds.
const MAX_EDGE_SPACING_NS: u64 = 1_000_000;
/// A jiffy lasts at most 100 ms (HZ 10); a busy or emulated machine may
/// take several to sample a turn closely.
const EDGE_WAIT: Duration = Duration::from_secs(1);
/// XDP_PASS: the sample was written.
const SAMPLED: u32 = 2;
/// The frame the sampler writes into: an Ethernet frame's minimum.
const FRAME_LEN: usize = 64;

/// Loads `ebpf`'s clock sampler and measures the jiffies clock with it.
pub fn measure_clock(ebpf: &mut Ebpf) -> Result<JiffiesClock> {
    let tick_ns = kernel_tick_ns()?;
    let prog: &mut Xdp = super::attach::object_program(ebpf, program_names::CLOCK_SAMPLE)?;
    if prog.fd().is_err() {
        super::load_retrying(|| prog.load())?;
    }
    let mut turns = Vec::with_capacity(TURNS);
    for _ in 0..TURNS {
        if !turns.is_empty() {
            thread::sleep(GAP);
        }
        turns.push(edge(prog)?);
    }
    JiffiesClock::from_edges(tick_ns, &turns).ok_or_else(|| {
        Error::Internal(format!(
            "the kernel's tick of {tick_ns} ns is not one of HZ 10 to 10000"
        ))
    })
}

/// The kernel's `TICK_NSEC`: the resolution it reports for the coarse
/// clocks (`LOW_RES_NSEC`).
fn kernel_tick_ns() -> Result<u64> {
    let res = clock_getres(ClockId::CLOCK_MONOTONIC_COARSE).map_err(|errno| Error::Io {
        context: "reading the resolution of CLOCK_MONOTONIC_COARSE".into(),
        source: errno.into(),
    })?;
    Ok(Duration::from(res).as_nanos() as u64)
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
