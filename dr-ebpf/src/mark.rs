//! dr's bits of `skb->mark` (`dr_common::marks`): set by one program for
//! the next one on the packet's way, which takes them off.
use aya_ebpf::programs::TcContext;

#[inline(always)]
fn mark_of(ctx: &TcContext) -> u32 {
    // SAFETY: the context's skb is valid for the whole run.
    unsafe { (*ctx.skb.skb).mark }
}

/// Sets `bit` on the packet's mark.
#[inline(always)]
pub fn set(ctx: &TcContext, bit: u32) {
    ctx.set_mark(mark_of(ctx) | bit);
}

/// Whether the packet carries `bit`; clears it.
#[inline(always)]
pub fn take(ctx: &TcContext, bit: u32) -> bool {
    let mark = mark_of(ctx);
    if mark & bit == 0 {
        return false;
    }
    ctx.set_mark(mark & !bit);
    true
}
