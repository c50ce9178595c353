//! What a program does with a frame: decided by its logic, carried out
//! (the action and its counter) once, by its entry point.
use aya_ebpf::bindings::{
    xdp_action::{XDP_ABORTED, XDP_PASS, XDP_REDIRECT},
    TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
};
use dr_common::Counter;

use crate::maps::count;

#[derive(Clone, Copy)]
pub enum Verdict {
    /// Left to the kernel stack, counted.
    Pass(Counter),
    /// Dropped, counted by reason.
    Drop(Counter),
    /// Handed to a redirect helper that took it, counted.
    Redirect(Counter),
}

impl Verdict {
    #[inline(always)]
    fn counter(self) -> Counter {
        match self {
            Verdict::Pass(counter) | Verdict::Drop(counter) | Verdict::Redirect(counter) => counter,
        }
    }

    /// Whether the frame was sent on: per-peer traffic counts only those.
    #[inline(always)]
    pub fn redirected(self) -> bool {
        matches!(self, Verdict::Redirect(_))
    }

    /// Counts the frame's `bytes` and gives the TC action.
    #[inline(always)]
    pub fn tc_action(self, bytes: u64) -> i32 {
        count(self.counter(), bytes);
        match self {
            Verdict::Pass(_) => TC_ACT_OK,
            Verdict::Drop(_) => TC_ACT_SHOT,
            Verdict::Redirect(_) => TC_ACT_REDIRECT,
        }
    }

    /// Counts the frame's `bytes` and gives the XDP action. XDP drops
    /// nothing of its own: its one drop is a redirect the device map refused
    /// at the last moment (the port vanished), counted as the redirect it
    /// was meant to be and aborted.
    #[inline(always)]
    pub fn xdp_action(self, bytes: u64) -> u32 {
        count(self.counter(), bytes);
        match self {
            Verdict::Pass(_) => XDP_PASS,
            Verdict::Redirect(_) => {
                count(Counter::XdpRedirect, bytes);
                XDP_REDIRECT
            }
            Verdict::Drop(_) => {
                count(Counter::XdpRedirect, bytes);
                XDP_ABORTED
            }
        }
    }
}
