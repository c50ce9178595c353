//! Flows into local containers that the containers did not start: a
//! published port's DNAT or a route to the container (the kernel delivered
//! them), a peer host's own process, or a published port dr translates
//! itself (dr delivered them). Their answers must leave the way the flow
//! came in, never with a SNAT translation of dr's.
use dr_common::{
    nat::{mark_seen, FlowKey, InboundFlow},
    DatapathConfig,
};

use crate::{dry_run::dry_run, maps::INBOUND_FLOWS};

/// Records (or refreshes) the flow whose answers are `answer`; `host_port`
/// is the published port dr translated it from (`PUBLISHED_BY_DR`), else 0.
#[inline(always)]
pub fn record_inbound(answer: &FlowKey, delivered_by: u8, host_port: u16, now: u64) {
    if dry_run() {
        return;
    }
    if let Some(flow) = INBOUND_FLOWS.get_ptr_mut(answer) {
        // SAFETY: map value pointer, valid for this program run.
        let flow = unsafe { &mut *flow };
        mark_seen(&mut flow.last_seen_ns, now);
        // Stores only of a change: see `mark_seen`.
        if (flow.delivered_by, flow.host_port) != (delivered_by, host_port) {
            flow.delivered_by = delivered_by;
            flow.host_port = host_port;
        }
        return;
    }
    let flow = InboundFlow {
        last_seen_ns: now,
        delivered_by,
        _pad0: 0,
        host_port,
        _pad: [0; 4],
    };
    // A full table evicts its least recently used flow: best effort.
    let _ = INBOUND_FLOWS.insert(answer, flow, 0);
}

/// Who delivered the live inbound flow that `answer` answers, if any
/// (`DELIVERED_*`, `PUBLISHED_BY_DR`), and its published port; refreshes it.
#[inline(always)]
pub fn inbound_answered(answer: &FlowKey, cfg: &DatapathConfig, now: u64) -> Option<(u8, u16)> {
    let flow = INBOUND_FLOWS.get_ptr_mut(answer)?;
    // SAFETY: map value pointer, valid for this program run.
    let flow = unsafe { &mut *flow };
    if flow.expired(answer.proto, now, &cfg.nat_timeouts) {
        return None;
    }
    if !dry_run() {
        mark_seen(&mut flow.last_seen_ns, now);
    }
    Some((flow.delivered_by, flow.host_port))
}
