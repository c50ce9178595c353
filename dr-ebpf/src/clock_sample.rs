//! Never attached: `dr-ctl up` runs it (BPF_PROG_TEST_RUN) over and over to
//! see jiffies turn, and measures the datapath's clock from that (see
//! `dr_common::clock`). Reads both clocks the way the datapath does, in
//! the kernel, one right after the other.
use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_PASS},
    helpers::{bpf_ktime_get_ns, generated::bpf_jiffies64},
    macros::xdp,
    programs::XdpContext,
};
use dr_common::clock::ClockSample;

use crate::packet::ptr_at;

/// Writes a [`ClockSample`] at the start of the frame.
#[xdp]
pub fn dr_clock_sample(ctx: XdpContext) -> u32 {
    let Some(sample) = ptr_at::<ClockSample>(ctx.data(), ctx.data_end(), 0) else {
        return XDP_ABORTED;
    };
    // SAFETY: no arguments, no memory access.
    let (jiffies, monotonic_ns) = unsafe { (bpf_jiffies64(), bpf_ktime_get_ns()) };
    // SAFETY: inside the frame (checked by ptr_at); no alignment assumed.
    unsafe {
        sample.write_unaligned(ClockSample {
            jiffies,
            monotonic_ns,
        })
    };
    XDP_PASS
}
