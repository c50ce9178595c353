//! The clock the programs time flows by. The tables hold CLOCK_MONOTONIC
//! nanoseconds, which dr-ctl compares with its own clock (`nat list`,
//! `nat gc`, the metrics).
//!
//! The cheapest source is `bpf_jiffies64`: the JIT of a 64-bit host turns it
//! into one load, where `bpf_ktime_get_coarse_ns` is a helper call (about 30
//! ns more per SNAT packet, measured both ways). The kernel advances jiffies
//! from CLOCK_MONOTONIC in steps of exactly one tick (`TICK_NSEC`, from the
//! build option HZ), so `jiffies × tick + offset` is CLOCK_MONOTONIC as of
//! the last tick, as the coarse clock is. dr-ctl measures the tick and the
//! offset once per boot, when `up` loads the programs, and keeps them in
//! the configuration ([`JiffiesClock`]); until then (and with an older dr's
//! configuration) the programs read the coarse clock, or `bpf_ktime_get_ns`
//! before Linux 5.11 ([`COARSE_GLOBAL`]).

/// `u8` global in the object's `.rodata`: 1 where the kernel has
/// `bpf_ktime_get_coarse_ns` (5.11), which costs less than
/// `bpf_ktime_get_ns` and is as good for timeouts counted in seconds.
pub const COARSE_GLOBAL: &str = "COARSE_CLOCK";

/// CLOCK_MONOTONIC from jiffies: `DatapathConfig::clock`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JiffiesClock {
    /// Nanoseconds per jiffy (the kernel's `TICK_NSEC`); 0 until dr-ctl has
    /// measured it: the programs read the kernel's clock instead.
    pub tick_ns: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC minus `jiffies × tick_ns`, wrapping.
    pub offset_ns: u64,
}

impl JiffiesClock {
    /// Whether the clock has been measured (the programs use it).
    pub fn measured(&self) -> bool {
        self.tick_ns != 0
    }

    /// CLOCK_MONOTONIC in ns at `jiffies`.
    #[inline(always)]
    pub fn monotonic_ns(&self, jiffies: u64) -> u64 {
        jiffies
            .wrapping_mul(self.tick_ns as u64)
            .wrapping_add(self.offset_ns)
    }

    /// The kernel's HZ; 0 when not measured.
    pub fn hz(&self) -> u32 {
        match self.tick_ns {
            0 => 0,
            tick => (NS_PER_SEC + tick as u64 / 2) as u32 / tick,
        }
    }

    /// The clock given two observed starts of a jiffy, `first` and a later
    /// `second`: the tick is the one whose HZ explains the time between
    /// them (`TICK_NSEC` of the nearest whole HZ, checked against their
    /// precision), the offset puts `first`'s jiffy at its last sample
    /// before it, so that the clock is never ahead of CLOCK_MONOTONIC. None
    /// if the edges are too imprecise for the time between them to tell
    /// one HZ from the next (or make no sense).
    pub fn from_edges(first: &JiffyEdge, second: &JiffyEdge) -> Option<Self> {
        let ticks = second.after.jiffies.checked_sub(first.after.jiffies)?;
        let elapsed = second
            .after
            .monotonic_ns
            .checked_sub(first.after.monotonic_ns)?;
        if ticks == 0 || elapsed == 0 {
            return None;
        }
        let hz = (ticks * NS_PER_SEC + elapsed / 2) / elapsed;
        if !(MIN_HZ..=MAX_HZ).contains(&hz) {
            return None;
        }
        let tick_ns = tick_nsec(hz);
        // Each edge is known to within its samples' spacing; the ticks
        // between them must fit the time within both, and neighbouring HZ
        // values (which differ by about elapsed / hz over the window)
        // must not.
        let slack = first.uncertainty_ns()? + second.uncertainty_ns()?;
        if elapsed.abs_diff(ticks * tick_ns) > slack || 2 * slack * hz >= elapsed {
            return None;
        }
        Some(Self {
            tick_ns: tick_ns as u32,
            _pad: 0,
            offset_ns: first
                .before
                .monotonic_ns
                .wrapping_sub(first.after.jiffies.wrapping_mul(tick_ns)),
        })
    }
}

const NS_PER_SEC: u64 = 1_000_000_000;
/// The HZ values dr believes: every architecture's choices lie within.
const MIN_HZ: u64 = 10;
const MAX_HZ: u64 = 10_000;

/// The kernel's `TICK_NSEC` for `hz`: a second divided by HZ, rounded.
fn tick_nsec(hz: u64) -> u64 {
    (NS_PER_SEC + hz / 2) / hz
}

/// Jiffies and CLOCK_MONOTONIC read together by `dr_clock_sample`, which
/// writes them at the start of the frame it is run on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockSample {
    pub jiffies: u64,
    pub monotonic_ns: u64,
}

/// Where jiffies turned: the last sample of one jiffy and the first of the
/// next, taken one right after the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JiffyEdge {
    pub before: ClockSample,
    pub after: ClockSample,
}

impl JiffyEdge {
    /// How precisely the edge is known: the time between its samples; None
    /// if they are not one jiffy apart.
    pub fn uncertainty_ns(&self) -> Option<u64> {
        if self.after.jiffies != self.before.jiffies.wrapping_add(1) {
            return None;
        }
        self.after
            .monotonic_ns
            .checked_sub(self.before.monotonic_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The edge of jiffy `jiffies`, which began at `start_ns`, sampled
    /// `before_ns` before it and `after_ns` after it.
    fn edge(jiffies: u64, start_ns: u64, (before_ns, after_ns): (u64, u64)) -> JiffyEdge {
        JiffyEdge {
            before: ClockSample {
                jiffies: jiffies - 1,
                monotonic_ns: start_ns - before_ns,
            },
            after: ClockSample {
                jiffies,
                monotonic_ns: start_ns + after_ns,
            },
        }
    }

    /// Two edges `window_ticks` apart of a kernel with `hz` whose jiffy
    /// `j0` began at `t0`, sampled with `spacing` around each edge.
    fn edges(hz: u64, j0: u64, t0: u64, window_ticks: u64, spacing: (u64, u64)) -> [JiffyEdge; 2] {
        let tick = tick_nsec(hz);
        [
            edge(j0, t0, spacing),
            edge(j0 + window_ticks, t0 + window_ticks * tick, spacing),
        ]
    }

    #[test]
    fn finds_the_tick_of_every_common_hz() {
        // 100 ms between the edges, samples 2 µs apart around each.
        for hz in [24, 100, 250, 256, 300, 1000, 1024, 1200] {
            let window = hz / 10;
            let j0 = 4_294_892_296 + 7 * hz;
            let [first, second] = edges(hz, j0, 5_000_000_000, window, (1_500, 500));
            let clock = JiffiesClock::from_edges(&first, &second).unwrap();
            assert_eq!(clock.tick_ns as u64, tick_nsec(hz), "HZ {hz}");
            assert_eq!(clock.hz() as u64, hz);
        }
        assert_eq!(tick_nsec(300), 3_333_333);
    }

    #[test]
    fn the_clock_reads_monotonic_time_never_ahead_of_it() {
        let (hz, j0, t0) = (250, 4_295_000_000, 65_322_594_000_000);
        let [first, second] = edges(hz, j0, t0, 25, (1_500, 500));
        let clock = JiffiesClock::from_edges(&first, &second).unwrap();
        // Each jiffy reads as its start, less the sampling's 1.5 µs.
        for j in [j0, j0 + 1, j0 + 1_000_000] {
            let start = t0 + (j - j0) * 4_000_000;
            assert_eq!(clock.monotonic_ns(j), start - 1_500);
        }
    }

    #[test]
    fn imprecise_or_inconsistent_edges_give_no_clock() {
        let (hz, j0, t0) = (1000, 4_295_000_000, 9_000_000_000);
        // A sample taken late (a preempted vCPU): 300 µs of doubt on a 20 ms
        // window cannot tell HZ 1000 from 1001.
        let [first, second] = edges(hz, j0, t0, 20, (299_000, 1_000));
        assert_eq!(JiffiesClock::from_edges(&first, &second), None);
        // Samples that skipped a jiffy bracket no edge.
        let [mut first, second] = edges(hz, j0, t0, 100, (1_000, 1_000));
        first.before.jiffies -= 1;
        assert_eq!(JiffiesClock::from_edges(&first, &second), None);
        // The same edge twice, or in the wrong order.
        let [first, second] = edges(hz, j0, t0, 100, (1_000, 1_000));
        assert_eq!(JiffiesClock::from_edges(&first, &first), None);
        assert_eq!(JiffiesClock::from_edges(&second, &first), None);
        // Times that fit no whole HZ: 100 jiffies in 100.025 ms.
        let [first, mut second] = edges(hz, j0, t0, 100, (1_000, 1_000));
        second.before.monotonic_ns += 25_000;
        second.after.monotonic_ns += 25_000;
        assert_eq!(JiffiesClock::from_edges(&first, &second), None);
    }

    #[test]
    fn an_unmeasured_clock_says_so() {
        let clock = JiffiesClock::default();
        assert!(!clock.measured());
        assert_eq!(clock.hz(), 0);
    }
}
