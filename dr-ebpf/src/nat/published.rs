//! Published ports (`docker run -p`) dr translates itself, in place of the
//! kernel's DNAT and conntrack: a request to the uplink's address and a
//! port in `PUBLISHED_PORTS` gets the container's address and port and is
//! delivered to it, and its flow is recorded in `INBOUND_FLOWS` with the
//! port; the container's answers leave with the uplink's address and that
//! port (`snat_out` finds the record, `egress.rs`); an ICMP error about an
//! answer goes back to the container (`icmp_error.rs`).
use aya_ebpf::programs::TcContext;
use dr_common::{
    nat::{FlowKey, InboundFlow, Origin, PublishedKey, ReverseKey, IPPROTO_ICMP, PUBLISHED_BY_DR},
    Counter, DatapathConfig,
};
use network_types::ip::Ipv4Hdr;

use super::{ingress::deliver_translated, rewrite::L4Layout};
use crate::{
    inbound::record_inbound,
    maps::{INBOUND_FLOWS, PUBLISHED_PORTS},
    verdict::Verdict,
};

/// The container behind the published port that `rkey` (the request seen
/// as a reply: client, client port, host port) addresses, and the key of
/// the container's answers. Shared by TC and XDP.
#[inline(always)]
pub fn published_target(cfg: &DatapathConfig, rkey: &ReverseKey) -> Option<(Origin, FlowKey)> {
    if rkey.proto == IPPROTO_ICMP {
        return None;
    }
    let key = PublishedKey {
        port: rkey.nat_port,
        proto: rkey.proto,
        _pad: 0,
    };
    // SAFETY: map value, copied out.
    let target = unsafe { PUBLISHED_PORTS.get(key) }.copied()?;
    // dr-ctl writes only local containers; a packet's way is decided here.
    if !cfg.is_container(target.addr) {
        return None;
    }
    let answer = FlowKey {
        src_addr: target.addr,
        dst_addr: rkey.remote_addr,
        src_port: target.port,
        dst_port: rkey.remote_port,
        proto: rkey.proto,
        _pad: 0,
        _pad2: 0,
    };
    Some((target, answer))
}

/// A request to a published port on the uplink's address, seen at `now`:
/// translated to the container (destination address and port), recorded,
/// delivered.
/// None when the port is not one dr translates (the kernel's then).
#[inline(always)]
pub(super) fn published_in(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    ip: &mut Ipv4Hdr,
    rkey: &ReverseKey,
    now: u64,
    l4_at: usize,
    l4: L4Layout,
) -> Option<Verdict> {
    let (target, answer) = published_target(cfg, rkey)?;
    record_inbound(&answer, PUBLISHED_BY_DR, rkey.nat_port, now);
    let ports = (rkey.nat_port, target.port);
    let counter = Counter::PublishedIn;
    Some(deliver_translated(
        ctx,
        cfg,
        ip,
        (l4_at, l4),
        ports,
        target.addr,
        counter,
    ))
}

/// The container end of the published flow that an ICMP error's quoted
/// answer (`rkey`: client, client port, host port) belongs to, if dr
/// translated that flow and it is live at `now`.
#[inline(always)]
pub(super) fn published_origin(
    cfg: &DatapathConfig,
    rkey: &ReverseKey,
    now: u64,
) -> Option<Origin> {
    let (target, answer) = published_target(cfg, rkey)?;
    // SAFETY: map value, copied out.
    let flow: InboundFlow = unsafe { INBOUND_FLOWS.get(answer) }.copied()?;
    let ours = flow.delivered_by == PUBLISHED_BY_DR && flow.host_port == rkey.nat_port;
    (ours && !flow.expired(rkey.proto, now, &cfg.nat_timeouts)).then_some(target)
}
