//! External -> container: a reply to a live translation is translated back
//! and delivered to the container; what else reaches the uplink's address
//! may be for a published port (`published.rs`).
use aya_ebpf::programs::TcContext;
use dr_common::{
    nat::{mark_seen, Flow, Reverse, ReverseKey, IPPROTO_ICMP, TCP_FIN, TCP_RST, TCP_SYN},
    Counter, DatapathConfig,
};
use network_types::ip::Ipv4Hdr;

use super::{
    icmp_error::icmp_error_reply,
    published::published_in,
    rewrite::{layout, rewrite, Address, L4Layout},
    ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_PARAMETER_PROBLEM, ICMP_TIME_EXCEEDED,
};
use crate::{
    clock::now,
    dry_run::dry_run,
    maps::{count, NAT_FLOWS, NAT_REVERSE},
    packet::{decrement_ttl, is_fragment, l4_offset, l4_ports, src_addr, FrameBytes, TCP_SEQ},
    redirect::to_container,
    verdict::Verdict,
};

/// A reply's live translation: its reverse half (the container end, the
/// last reply's time), and its forward half when the reply needed it.
pub struct LiveReply {
    pub reverse: &'static mut Reverse,
    /// The flow's state, looked up when the reply may change it (SYN, FIN,
    /// RST) or when no recent reply vouches for the flow's liveness.
    pub flow: Option<&'static mut Flow>,
}

/// The live translation a reply with `tcp_flags` answers at time `now`.
/// None when the reply's port is outside the NAT range or no live
/// translation matches (then the packet is the host's own traffic). A dead
/// translation is never used: a stale mapping must not deliver to a
/// container. One lookup while replies keep coming
/// ([`Reverse::recently_answered`]); else the forward half is read too: a
/// half-evicted translation, or one idle past its state's timeout, is dead.
#[inline(always)]
pub fn live_reply(
    cfg: &DatapathConfig,
    rkey: &ReverseKey,
    tcp_flags: u8,
    now: u64,
) -> Option<LiveReply> {
    let host_port = u16::from_be(rkey.nat_port) as u32;
    if cfg.nat_enabled == 0 || host_port < cfg.nat_port_min || host_port > cfg.nat_port_max {
        return None;
    }
    let reverse = NAT_REVERSE.get_ptr_mut(rkey)?;
    // SAFETY: map value pointer, valid for this program run.
    let reverse = unsafe { &mut *reverse };
    if tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0
        && reverse.recently_answered(rkey.proto, now, &cfg.nat_timeouts)
    {
        return Some(LiveReply {
            reverse,
            flow: None,
        });
    }
    let flow = NAT_FLOWS.get_ptr_mut(rkey.forward(&reverse.origin))?;
    // SAFETY: map value pointer, valid for this program run.
    let flow = unsafe { &mut *flow };
    if flow.nat_port != rkey.nat_port {
        count(Counter::NatEvicted, 0);
        return None;
    }
    if flow.expired(reverse.reply_seen_ns, now, &cfg.nat_timeouts) {
        count(Counter::NatExpired, 0);
        return None;
    }
    Some(LiveReply {
        reverse,
        flow: Some(flow),
    })
}

/// Whether the remote's segment at `l4_at` lies near enough to the
/// container's receive window for its RST or FIN to count
/// ([`Flow::in_window`]). Not inlined: keeps the reply path's branches
/// within the verifier's budget.
#[inline(never)]
fn teardown_in_window(ctx: &TcContext, l4_at: usize, flow: &Flow) -> bool {
    match ctx.read::<u32>(l4_at + TCP_SEQ) {
        Some(seq) => flow.in_window(u32::from_be(seq)),
        // Not reached: the caller read the flags further on.
        None => true,
    }
}

/// Records a reply seen at `now` on its translation: the time in its
/// reverse half, and the TCP state if the forward half was read.
#[inline(always)]
pub fn touch_reply(reply: LiveReply, tcp_flags: u8, now: u64) {
    if dry_run() {
        return;
    }
    mark_seen(&mut reply.reverse.reply_seen_ns, now);
    if let Some(flow) = reply.flow {
        flow.record(tcp_flags, true);
    }
}

/// The translation a TCP/UDP packet or ICMP echo reply would answer
/// (remote end, NAT port), and its TCP flags; None if its header is cut
/// short. Shared by TC and XDP.
#[inline(always)]
pub fn reply_key(frame: &impl FrameBytes, ip: &Ipv4Hdr) -> Option<(ReverseKey, u8)> {
    let (remote_port, nat_port, tcp_flags) = l4_ports(frame, ip)?;
    // An echo reply's identifier is the NAT port; ICMP has no remote port.
    let (remote_port, nat_port) = if ip.proto == IPPROTO_ICMP {
        (0, remote_port)
    } else {
        (remote_port, nat_port)
    };
    let rkey = ReverseKey {
        remote_addr: src_addr(ip),
        remote_port,
        nat_port,
        proto: ip.proto,
        _pad: 0,
        _pad2: 0,
    };
    Some((rkey, tcp_flags))
}

/// External -> the uplink's address: a reply to a live translation, a
/// request to a published port dr translates, or an ICMP error about
/// either is translated and delivered to the container. None when it is
/// for none of them (the host's own traffic, or the kernel's DNAT).
#[inline(always)]
pub fn to_uplink_address(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    ip: &mut Ipv4Hdr,
) -> Option<Verdict> {
    let proto = ip.proto;
    let l4 = layout(proto)?;
    if is_fragment(ip) {
        // Only the first fragment has ports; dr does not track fragments by
        // IP id (as Cilium does): the stack gets them, counted.
        return (cfg.nat_enabled != 0).then_some(Verdict::Pass(Counter::NatFragmentIn));
    }
    let l4_at = l4_offset(ip);
    if proto == IPPROTO_ICMP {
        let [icmp_type, _]: [u8; 2] = ctx.read(l4_at)?;
        match icmp_type {
            ICMP_ECHO_REPLY => {}
            ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM => {
                return icmp_error_reply(ctx, cfg, ip, l4_at, now(cfg));
            }
            _ => return None,
        }
    }
    let (rkey, tcp_flags) = reply_key(ctx, ip)?;
    let now = now(cfg);
    let Some(reply) = live_reply(cfg, &rkey, tcp_flags, now) else {
        return published_in(ctx, cfg, ip, &rkey, now, l4_at, l4);
    };
    let origin = reply.reverse.origin;
    // A RST or FIN far from the container's window is not believed (an
    // off-path sender guessing), but still delivered: the container's stack
    // judges it again (RFC 5961) and answers with a challenge ACK. (A RST or
    // FIN always has its flow read.)
    let believed = match &reply.flow {
        Some(flow) if tcp_flags & (TCP_RST | TCP_FIN) != 0 => teardown_in_window(ctx, l4_at, flow),
        _ => true,
    };
    if believed {
        touch_reply(reply, tcp_flags, now);
    } else {
        count(Counter::NatTeardownOutOfWindow, 0);
    }
    let ports = (rkey.nat_port, origin.port);
    Some(deliver_translated(
        ctx,
        cfg,
        ip,
        (l4_at, l4),
        ports,
        origin.addr,
        Counter::NatIn,
    ))
}

/// Delivers a packet from outside to container `to` as addressed to it:
/// TTL decremented, destination address set and destination port `ports.0`
/// rewritten to `ports.1` (checksums fixed). SNAT replies and published
/// ports' requests.
#[inline(always)]
pub(super) fn deliver_translated(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    ip: &mut Ipv4Hdr,
    (l4_at, l4): (usize, L4Layout),
    ports: (u16, u16),
    to: u32,
    counter: Counter,
) -> Verdict {
    if !decrement_ttl(ip) {
        return Verdict::Drop(Counter::DropTtlExceeded);
    }
    let (check_at, port_at) = (l4_at + l4.check, l4_at + l4.reply_port);
    if rewrite(
        ctx,
        ip,
        (Address::Destination, to),
        check_at,
        port_at,
        ports,
    )
    .is_err()
    {
        return Verdict::Drop(Counter::DropRedirectFailed);
    }
    to_container(ctx, cfg, to, counter)
}
