//! The dry run behind `dr-ctl trace`: a second copy of this object, loaded
//! with `DRY_RUN` set and run with BPF_PROG_TEST_RUN against the live pinned
//! maps. In that copy the programs write no shared state (counters,
//! per-peer traffic, the SNAT and inbound tables) and record in `TRACE`
//! what the packet would have counted and where it would have gone.
//!
//! `DRY_RUN` lives in `.rodata`, which the loader freezes: the verifier
//! knows its value and never walks the dry-run branches of the attached
//! programs, so they cost them neither instructions nor verifier budget.
use aya_ebpf::{macros::map, maps::Array, Global};
use dr_common::{Counter, Trace};

#[unsafe(no_mangle)]
static DRY_RUN: Global<u8> = Global::new(0);

/// Not pinned: each loaded copy has its own, read by the dr-ctl that loaded it.
#[map]
static TRACE: Array<Trace> = Array::with_max_entries(1, 0);

/// Whether this is the dry-run copy.
#[inline(always)]
pub fn dry_run() -> bool {
    DRY_RUN.load() != 0
}

#[inline(always)]
fn record(update: impl FnOnce(&mut Trace)) {
    if let Some(trace) = TRACE.get_ptr_mut(0) {
        // SAFETY: map value pointer, valid for this program run; dr-ctl runs
        // one packet at a time.
        update(unsafe { &mut *trace })
    }
}

/// The packet would have been counted under `counter`.
#[inline(always)]
pub fn record_counter(counter: Counter) {
    record(|t| t.counters |= 1 << counter as u32)
}

/// The packet would have been redirected to `ifindex`, toward `next_hop`
/// (0: its destination).
#[inline(always)]
pub fn record_redirect(ifindex: u32, next_hop: u32) {
    record(|t| {
        t.redirect_ifindex = ifindex;
        t.next_hop = next_hop;
    })
}

/// The packet would have been handed to the container behind docker0 port
/// `ifindex`.
#[inline(always)]
pub fn record_delivery(ifindex: u32) {
    record(|t| {
        t.redirect_ifindex = ifindex;
        t.into_container = 1;
    })
}

/// A new SNAT translation would have been made.
#[inline(always)]
pub fn record_new_translation() {
    record(|t| t.new_translation = 1)
}
