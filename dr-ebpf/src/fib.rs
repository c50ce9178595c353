//! Asking the host's FIB from TC (`bpf_fib_lookup`): the parameter block and
//! the call, for a new flow's route (`route.rs`) and the MAC of the host's
//! own packets' next hop (`uplink_egress.rs`).
use core::mem::{size_of, MaybeUninit};

use aya_ebpf::{bindings::bpf_fib_lookup, helpers::generated, programs::TcContext};

/// The parameter block, aligned for word stores.
#[repr(C, align(8))]
pub struct Block(bpf_fib_lookup);

const _: () = assert!(size_of::<Block>() == size_of::<bpf_fib_lookup>());

/// The parameters in `block`, zeroed in place by eight word stores: the
/// compiler turned `mem::zeroed`, fields set to zero (the MAC arrays), or a
/// zeroed block moved into place, into calls to a memset subprogram, a
/// sixth of a new flow's route lookup. Volatile stores are not merged back
/// into such a call.
#[inline(always)]
pub fn zeroed(block: &mut MaybeUninit<Block>) -> &mut bpf_fib_lookup {
    const WORDS: usize = size_of::<Block>() / size_of::<u64>();
    let words = block.as_mut_ptr() as *mut u64;
    for i in 0..WORDS {
        // SAFETY: within the 8-aligned block, which is WORDS words long.
        unsafe { words.add(i).write_volatile(0) };
    }
    // SAFETY: every byte written; plain data, zero is a valid value.
    unsafe { &mut block.assume_init_mut().0 }
}

/// Looks `params` up for `ctx`'s packet with `flags` (`BPF_FIB_LOOKUP_*`);
/// the helper's answer (`BPF_FIB_LKUP_RET_*`, negative for an error), with
/// what it found written into `params`.
#[inline(always)]
pub fn lookup(ctx: &TcContext, params: &mut bpf_fib_lookup, flags: u32) -> i64 {
    // SAFETY: the parameter block lives across the call; its size matches.
    unsafe {
        generated::bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            params,
            size_of::<bpf_fib_lookup>() as i32,
            flags,
        )
    }
}
