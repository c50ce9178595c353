//! The clock the programs time flows by. The tables hold CLOCK_MONOTONIC
//! nanoseconds, which dr-ctl compares with its own clock (`nat list`,
//! `nat gc`, the metrics).
//!
//! The cheapest source is `bpf_jiffies64`: the JIT of a 64-bit host turns it
//! into one load, where `bpf_ktime_get_coarse_ns` is a helper call (about 30
//! ns more per SNAT packet, measured both ways). The kernel advances jiffies
//! from CLOCK_MONOTONIC in steps of exactly one tick (`TICK_NSEC`, from the
//! build option HZ), so `jiffies × tick + offset` is CLOCK_MONOTONIC as of
//! the last tick, as the coarse clock is. dr-ctl reads the tick (`clock_getres`
//! of the coarse clocks is `TICK_NSEC`) and measures the offset once per
//! boot, when `up` loads the programs, and keeps them in the configuration
//! ([`JiffiesClock`]); until then (and with an older dr's
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

    /// The clock given the kernel's tick (`TICK_NSEC`, which
    /// `clock_getres` reports for the coarse clocks) and observed turns of
    /// jiffies. The kernel advances jiffies to the tick that began last, so
    /// a turn seen between two samples puts the new jiffy's start at or
    /// before the later sample; a tick handler that ran late (on a busy or
    /// emulated machine, by up to several ticks) only moves the turn later.
    /// The offset is the earliest the turns allow (the least delayed one's
    /// sample before it), so the clock is never ahead of CLOCK_MONOTONIC
    /// by more than that delay, and behind it by at most the samples'
    /// spacing. None for a tick outside HZ 10 to 10000, no turns, or
    /// samples between which jiffies did not advance. Not checked: whether
    /// the turns' spread fits the tick (the emulated VM under load saw late
    /// handlers spread them further; the tick is the kernel's constant).
    pub fn from_edges(tick_ns: u64, turns: &[JiffyEdge]) -> Option<Self> {
        if !(MIN_TICK_NS..=MAX_TICK_NS).contains(&tick_ns) {
            return None;
        }
        // CLOCK_MONOTONIC minus the new jiffy's start, wrapping.
        let offset = |turn: &JiffyEdge| {
            turn.before
                .monotonic_ns
                .wrapping_sub(turn.after.jiffies.wrapping_mul(tick_ns))
        };
        let first = offset(turns.first()?);
        // Compared as signed differences from the first (wrapping).
        let mut earliest = 0i64;
        for turn in turns {
            turn.uncertainty_ns()?;
            earliest = earliest.min(offset(turn).wrapping_sub(first) as i64);
        }
        Some(Self {
            tick_ns: tick_ns as u32,
            _pad: 0,
            offset_ns: first.wrapping_add(earliest as u64),
        })
    }
}

const NS_PER_SEC: u64 = 1_000_000_000;
/// The tick of HZ 10000 and of HZ 10: beyond what any kernel is built with.
const MIN_TICK_NS: u64 = NS_PER_SEC / 10_000;
const MAX_TICK_NS: u64 = NS_PER_SEC / 10;

/// Jiffies and CLOCK_MONOTONIC read together by `dr_clock_sample`, which
/// writes them at the start of the frame it is run on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockSample {
    pub jiffies: u64,
    pub monotonic_ns: u64,
}

/// Where jiffies turned: the last sample of one jiffy and the first of a
/// later one (a tick handler that ran late advances several at once), taken
/// one right after the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JiffyEdge {
    pub before: ClockSample,
    pub after: ClockSample,
}

impl JiffyEdge {
    /// How precisely the edge is known: the time between its samples; None
    /// if jiffies did not advance between them.
    pub fn uncertainty_ns(&self) -> Option<u64> {
        if self.after.jiffies <= self.before.jiffies {
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

    /// HZ 250, whose jiffy `J0` began at `T0`.
    const TICK: u64 = 4_000_000;
    const J0: u64 = 4_295_000_000;
    const T0: u64 = 65_322_594_000_000;

    /// The turn to jiffy `j`, `jump` jiffies at once, `late_ns` after the
    /// jiffy began, sampled 1.5 µs before and 0.5 µs after.
    fn turn(j: u64, jump: u64, late_ns: u64) -> JiffyEdge {
        let seen = T0 + (j - J0) * TICK + late_ns;
        JiffyEdge {
            before: ClockSample {
                jiffies: j - jump,
                monotonic_ns: seen - 1_500,
            },
            after: ClockSample {
                jiffies: j,
                monotonic_ns: seen + 500,
            },
        }
    }

    #[test]
    fn the_clock_reads_each_jiffy_as_its_start_never_later() {
        let clock = JiffiesClock::from_edges(TICK, &[turn(J0, 1, 0), turn(J0 + 25, 1, 0)]).unwrap();
        assert_eq!(clock.hz(), 250);
        // Each jiffy reads as its start, less the sampling's 1.5 µs.
        for j in [J0, J0 + 1, J0 + 1_000_000] {
            assert_eq!(clock.monotonic_ns(j), T0 + (j - J0) * TICK - 1_500);
        }
    }

    #[test]
    fn late_tick_handlers_do_not_move_the_offset() {
        // Turns seen late, one of them jumping three jiffies (its handler
        // ran more than two ticks after the one before), one several ticks
        // late: the one on time gives the offset, wherever it comes.
        let late = [
            turn(J0, 1, 3_900_000),
            turn(J0 + 7, 3, 2_000_000),
            turn(J0 + 30, 1, 400_000),
        ];
        for on_time in 0..=late.len() {
            let mut turns = late.to_vec();
            turns.insert(on_time, turn(J0 + 100, 1, 0));
            let clock = JiffiesClock::from_edges(TICK, &turns).unwrap();
            assert_eq!(clock.monotonic_ns(J0), T0 - 1_500, "on time at {on_time}");
        }
        // All late: the least delayed one.
        let clock = JiffiesClock::from_edges(TICK, &late).unwrap();
        assert_eq!(clock.monotonic_ns(J0), T0 + 400_000 - 1_500);
    }

    #[test]
    fn no_clock_without_a_kernel_tick_or_a_turn() {
        let turns = [turn(J0, 1, 0), turn(J0 + 100, 1, 0)];
        // No tick any kernel is built with.
        for tick in [0, 99_999, 100_000_001] {
            assert_eq!(JiffiesClock::from_edges(tick, &turns), None, "{tick}");
        }
        // No turns, or samples between which jiffies did not advance.
        assert_eq!(JiffiesClock::from_edges(TICK, &[]), None);
        let mut still = turn(J0, 1, 0);
        still.before.jiffies = J0;
        assert_eq!(JiffiesClock::from_edges(TICK, &[turns[0], still]), None);
        let mut backwards = turn(J0, 1, 0);
        backwards.after.monotonic_ns = backwards.before.monotonic_ns - 1;
        assert_eq!(JiffiesClock::from_edges(TICK, &[backwards]), None);
    }

    #[test]
    fn hz_is_read_back_from_the_tick() {
        // TICK_NSEC: a second divided by HZ, rounded.
        for (hz, tick) in [
            (100, 10_000_000),
            (250, 4_000_000),
            (300, 3_333_333),
            (1000, 1_000_000),
        ] {
            let clock = JiffiesClock::from_edges(tick, &[turn(J0, 1, 0)]).unwrap();
            assert_eq!(clock.hz(), hz);
        }
    }

    #[test]
    fn an_unmeasured_clock_says_so() {
        let clock = JiffiesClock::default();
        assert!(!clock.measured());
        assert_eq!(clock.hz(), 0);
    }
}
