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

    /// The clock given two observed turns of jiffies, `first` and a later
    /// `second`. The tick is that of the HZ in [`KNOWN_HZ`] whose ticks
    /// explain the time between the turns to within 1% (a tick handler that
    /// ran late, on a busy or emulated machine, moves a turn by
    /// microseconds to milliseconds; neighbouring choices differ by 2.4%
    /// or more). The offset puts each jiffy's start at the earliest the
    /// turns allow (their samples before the turn, the least delayed of
    /// the two), so that the clock is not ahead of CLOCK_MONOTONIC by more
    /// than that delay. None if the turns fit no known HZ.
    pub fn from_edges(first: &JiffyEdge, second: &JiffyEdge) -> Option<Self> {
        first.uncertainty_ns()?;
        second.uncertainty_ns()?;
        let ticks = second.before.jiffies.checked_sub(first.before.jiffies)?;
        let elapsed = second
            .before
            .monotonic_ns
            .checked_sub(first.before.monotonic_ns)?;
        if ticks == 0 {
            return None;
        }
        let tick_ns = KNOWN_HZ
            .iter()
            .map(|&hz| tick_nsec(hz))
            .min_by_key(|&tick| elapsed.abs_diff(ticks * tick))?;
        let expected = ticks * tick_ns;
        if elapsed.abs_diff(expected) * 100 > expected {
            return None;
        }
        let offset = |edge: &JiffyEdge| {
            edge.before
                .monotonic_ns
                .wrapping_sub(edge.after.jiffies.wrapping_mul(tick_ns))
        };
        // Both differ from the jiffies' true offset by their delay only
        // (wrapping: compared as a signed difference).
        let (a, b) = (offset(first), offset(second));
        let offset_ns = if (b.wrapping_sub(a) as i64) < 0 { b } else { a };
        Some(Self {
            tick_ns: tick_ns as u32,
            _pad: 0,
            offset_ns,
        })
    }
}

const NS_PER_SEC: u64 = 1_000_000_000;
/// The HZ values Linux builds with: x86 and arm64 offer 100, 250, 300 and
/// 1000; other architectures add the rest.
const KNOWN_HZ: [u64; 10] = [24, 48, 100, 128, 250, 256, 300, 1000, 1024, 1200];

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
    fn finds_the_tick_of_every_known_hz() {
        // 100 ms between the turns, samples 2 µs apart around each.
        for hz in KNOWN_HZ {
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
    fn the_clock_reads_each_jiffy_as_its_start_never_later() {
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
    fn a_late_tick_handler_changes_neither_hz_nor_offset() {
        let (hz, j0, t0) = (1000, 4_295_000_000, 9_000_000_000);
        // The first turn seen 400 µs late (its tick handler ran late, as on
        // a busy vCPU): HZ still fits, and the offset is the second's.
        let [mut first, second] = edges(hz, j0, t0, 100, (1_000, 1_000));
        first.before.monotonic_ns += 400_000;
        first.after.monotonic_ns += 400_000;
        let clock = JiffiesClock::from_edges(&first, &second).unwrap();
        assert_eq!(clock.hz(), 1000);
        assert_eq!(clock.monotonic_ns(j0), t0 - 1_000);
        // The same the other way round.
        let [first, mut second] = edges(hz, j0, t0, 100, (1_000, 1_000));
        second.before.monotonic_ns += 400_000;
        second.after.monotonic_ns += 400_000;
        let clock = JiffiesClock::from_edges(&first, &second).unwrap();
        assert_eq!(clock.monotonic_ns(j0), t0 - 1_000);
    }

    #[test]
    fn turns_that_fit_no_known_hz_give_no_clock() {
        let (hz, j0, t0) = (1000, 4_295_000_000, 9_000_000_000);
        // 100 jiffies in 103 ms: 3% off HZ 1000.
        let [first, mut second] = edges(hz, j0, t0, 100, (1_000, 1_000));
        second.before.monotonic_ns += 3_000_000;
        second.after.monotonic_ns += 3_000_000;
        assert_eq!(JiffiesClock::from_edges(&first, &second), None);
        // A kernel built with HZ 500.
        let [first, second] = edges(500, j0, t0, 50, (1_000, 1_000));
        assert_eq!(JiffiesClock::from_edges(&first, &second), None);
        // Samples that skipped a jiffy bracket no turn.
        let [mut first, second] = edges(hz, j0, t0, 100, (1_000, 1_000));
        first.before.jiffies -= 1;
        assert_eq!(JiffiesClock::from_edges(&first, &second), None);
        // The same turn twice, or in the wrong order.
        let [first, second] = edges(hz, j0, t0, 100, (1_000, 1_000));
        assert_eq!(JiffiesClock::from_edges(&first, &first), None);
        assert_eq!(JiffiesClock::from_edges(&second, &first), None);
    }

    #[test]
    fn an_unmeasured_clock_says_so() {
        let clock = JiffiesClock::default();
        assert!(!clock.measured());
        assert_eq!(clock.hz(), 0);
    }
}
