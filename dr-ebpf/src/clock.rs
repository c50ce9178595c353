//! The clock flows are timed by (see `dr_common::clock`): jiffies, once
//! dr-ctl has measured their tick and offset (the JIT makes
//! `bpf_jiffies64` one load); before that the coarse clock
//! (`bpf_ktime_get_coarse_ns`, the last tick's CLOCK_MONOTONIC), or on 5.10,
//! which lacks it, `bpf_ktime_get_ns`. dr-ctl sets `COARSE_CLOCK` when it
//! loads the object on a kernel that has it. The global lives in `.rodata`,
//! which the loader freezes, so the verifier walks only the branch the
//! kernel can run (as with `DRY_RUN`).
use aya_ebpf::{
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    },
    Global,
};
use dr_common::DatapathConfig;

#[unsafe(no_mangle)]
static COARSE_CLOCK: Global<u8> = Global::new(0);

/// CLOCK_MONOTONIC in ns, as of the last tick at least. Read once per
/// packet and handed on.
#[inline(always)]
pub fn now(cfg: &DatapathConfig) -> u64 {
    if cfg.clock.measured() {
        // SAFETY: no arguments, no memory access.
        return cfg.clock.monotonic_ns(unsafe { bpf_jiffies64() });
    }
    if COARSE_CLOCK.load() != 0 {
        // SAFETY: as above.
        unsafe { bpf_ktime_get_coarse_ns() }
    } else {
        // SAFETY: as above.
        unsafe { bpf_ktime_get_ns() }
    }
}
