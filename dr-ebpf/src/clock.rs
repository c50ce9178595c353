//! The clock flows are timed by. Timeouts count in seconds, so the coarse
//! clock (`bpf_ktime_get_coarse_ns`, the last tick's CLOCK_MONOTONIC) does;
//! it costs about 10 ns less per packet than `bpf_ktime_get_ns`, measured
//! on every SNAT path. It came in Linux 5.11 and dr supports 5.10: dr-ctl
//! sets `COARSE_CLOCK` when it loads the object on a kernel that has it.
//! The global lives in `.rodata`, which the loader freezes, so the verifier
//! walks only the branch the kernel can run (as with `DRY_RUN`).
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, generated::bpf_ktime_get_coarse_ns},
    Global,
};

#[unsafe(no_mangle)]
static COARSE_CLOCK: Global<u8> = Global::new(0);

/// CLOCK_MONOTONIC in ns. Read once per packet and handed on: a helper call
/// costs more than the arithmetic around it.
#[inline(always)]
pub fn now() -> u64 {
    if COARSE_CLOCK.load() != 0 {
        // SAFETY: no arguments, no memory access.
        unsafe { bpf_ktime_get_coarse_ns() }
    } else {
        // SAFETY: as above.
        unsafe { bpf_ktime_get_ns() }
    }
}
