//! `dr_nat_sweep`: the SNAT table's garbage collection. Never attached:
//! `dr-ctl nat gc` and `nat flush` run it with BPF_PROG_TEST_RUN on a
//! [`SweepRequest`] per entry. The decision to remove an entry and its
//! removal happen here, a few instructions apart, with the same checks the
//! datapath makes when it reclaims a port; from user space, a
//! check-then-delete by key could delete a claim the datapath made in
//! between (two flows on one port, replies to the wrong container).
use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};
use dr_common::{
    nat::{FlowKey, SweepOp, SweepRequest},
    Counter, DatapathConfig,
};

use crate::{
    clock::now,
    maps::{config, count, NAT_FLOWS},
    nat::{expired, release_dead, remove_translation},
    packet::ptr_at,
};

#[xdp]
pub fn dr_nat_sweep(ctx: XdpContext) -> u32 {
    let Some(req) = ptr_at::<SweepRequest>(ctx.data(), ctx.data_end(), 0) else {
        return XDP_ABORTED;
    };
    let Some(cfg) = config() else {
        return XDP_ABORTED;
    };
    // SAFETY: inside the packet (checked by ptr_at).
    let req = unsafe { &mut *req };
    // Keys copied to the stack: map helpers get stack keys, as everywhere.
    let (flow, reverse) = (req.flow, req.reverse);
    let now = now(cfg);
    let removed = match req.op {
        op if op == SweepOp::ExpiredFlow as u8 => {
            let removed = remove_flow(&flow, cfg, now, true);
            if removed {
                count(Counter::NatExpiredGc, 0);
            }
            removed
        }
        op if op == SweepOp::AnyFlow as u8 => remove_flow(&flow, cfg, now, false),
        op if op == SweepOp::DeadReverse as u8 => release_dead(&reverse, cfg, now),
        _ => return XDP_ABORTED,
    };
    req.removed = removed as u8;
    XDP_PASS
}

/// Removes the translation of `key` (if `expired_only`, only once expired).
#[inline(always)]
fn remove_flow(key: &FlowKey, cfg: &DatapathConfig, now: u64, expired_only: bool) -> bool {
    // SAFETY: map value, copied out.
    let Some(flow) = (unsafe { NAT_FLOWS.get(key) }).copied() else {
        return false;
    };
    if expired_only && !expired(key, &flow, cfg, now) {
        return false;
    }
    remove_translation(key, flow.nat_port)
}
