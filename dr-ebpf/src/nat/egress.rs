//! Container -> external: a new flow gets a translation, and every packet
//! of a translated flow leaves with the uplink's address and its NAT port.
use aya_ebpf::{maps::lpm_trie::Key, programs::TcContext};
use aya_log_ebpf::warn;
use dr_common::{
    nat::{
        mark_seen, Flow, FlowKey, DELIVERED_BY_KERNEL, IPPROTO_ICMP, IPPROTO_TCP, PUBLISHED_BY_DR,
        TCP_ACK, TCP_SYN,
    },
    Counter, DatapathConfig,
};
use network_types::{ip::Ipv4Hdr, tcp::TcpHdr};

use super::{
    rewrite::{layout, rewrite, Address, L4Layout},
    table::{allocate, live_flow},
    ICMP_ECHO, ICMP_ECHO_REPLY,
};
use crate::{
    clock::now,
    dry_run::dry_run,
    inbound::inbound_answered,
    maps::NAT_EXCLUDE,
    mtu::too_big,
    packet::{
        decrement_ttl, dst_addr, flow_of, is_fragment, l4_offset, ptr_at, FrameBytes,
        TCP_DATA_OFFSET, TCP_SEQ,
    },
    redirect::{forward, send},
    route::{route, Route},
    verdict::Verdict,
};

/// Whether container traffic to `addr` keeps the container's source address.
/// Multicast and broadcast never leave by the uplink as one flow's answer
/// could come back: the stack handles them.
#[inline(always)]
pub fn excluded(cfg: &DatapathConfig, addr: u32) -> bool {
    let first_octet = addr.to_ne_bytes()[0];
    addr == cfg.uplink_addr
        || addr == cfg.gateway
        || first_octet >= 224
        || NAT_EXCLUDE.get(Key::new(32, addr)).is_some()
}

/// A container's packet for neither the local subnet nor a peer subnet.
/// An answer to an inbound flow leaves the way the flow came (to the
/// kernel, straight to the peer host, or translated back to a published
/// port); a packet for an external destination that the host routes out of
/// the uplink is translated to the uplink's address (SNAT) and sent there;
/// everything else goes to the stack.
#[inline(always)]
pub fn snat_out(ctx: &TcContext, cfg: &DatapathConfig, ip: &mut Ipv4Hdr) -> Verdict {
    let dst = dst_addr(ip);
    let nat_enabled = cfg.nat_enabled != 0;
    let proto = ip.proto;
    let Some(l4) = layout(proto) else {
        return Verdict::Pass(Counter::Passed);
    };
    if is_fragment(ip) {
        if nat_enabled && !excluded(cfg, dst) {
            return Verdict::Drop(Counter::DropNatFragment);
        }
        return Verdict::Pass(Counter::Passed);
    }
    let l4_at = l4_offset(ip);
    // Echo requests start translations and echo replies answer inbound
    // pings; other ICMP goes to the stack.
    let icmp_type = if proto == IPPROTO_ICMP {
        match ctx.read::<[u8; 2]>(l4_at) {
            Some([t @ (ICMP_ECHO | ICMP_ECHO_REPLY), _]) => t,
            _ => return Verdict::Pass(Counter::Passed),
        }
    } else {
        ICMP_ECHO
    };
    let Some((key, tcp_flags)) = flow_of(ctx, ip) else {
        return Verdict::Pass(Counter::Malformed);
    };
    let now = now(cfg);
    let starts = icmp_type == ICMP_ECHO;
    // A live translation is used without asking the exclusions again: as
    // with conntrack, a rule changed later applies to new flows.
    let live = if nat_enabled && starts {
        live_flow(&key, cfg, now)
    } else {
        Err(0)
    };
    // The next hop of a new flow, from the FIB below.
    let mut next_hop = 0;
    if live.is_err() {
        // A TCP segment opening a connection answers none: the inbound
        // flows are not asked (a lookup saved on every new connection).
        let opens = proto == IPPROTO_TCP && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        let answered = if opens {
            None
        } else {
            inbound_answered(&key, cfg, now)
        };
        match answered {
            Some((DELIVERED_BY_KERNEL, _)) => return Verdict::Pass(Counter::InboundReply),
            Some((delivered_by, host_port)) => {
                if let Some(verdict) = too_big(ctx, cfg, ip) {
                    return verdict;
                }
                if delivered_by == PUBLISHED_BY_DR {
                    let ports = (key.src_port, host_port);
                    let counter = Counter::PublishedOut;
                    return send_translated(ctx, cfg, ip, (l4_at, l4), ports, (0, counter));
                }
                return forward(ctx, ip, cfg.uplink_ifindex, Some(dst), Counter::ToPeer);
            }
            None => {}
        }
        if !nat_enabled || !starts || excluded(cfg, dst) {
            return Verdict::Pass(Counter::Passed);
        }
        // Only a SYN opens a TCP translation: any other segment answers a
        // connection the kernel knows (or one long gone).
        if proto == IPPROTO_TCP && !opens {
            return Verdict::Pass(Counter::InboundReply);
        }
        // Whether a new flow is translated is the FIB's answer when it
        // starts: a live one left by the uplink then, and keeps doing so.
        match route(ctx, cfg, &key, ip.tos) {
            Route::Uplink(hop) => next_hop = hop,
            Route::Elsewhere => return Verdict::Pass(Counter::Passed),
        }
    }
    // Before any translation is made: a packet refused here creates none.
    if let Some(verdict) = too_big(ctx, cfg, ip) {
        return verdict;
    }
    let nat_port = match live {
        Ok(flow) => {
            if proto == IPPROTO_TCP && !dry_run() {
                record_container_window(ctx, l4_at, tcp_flags, flow);
            }
            next_hop = live_next_hop(ctx, cfg, &key, ip.tos, flow, now);
            refresh(flow, tcp_flags, now)
        }
        Err(expired_port) => {
            if ip.ttl <= 1 {
                return Verdict::Drop(Counter::DropTtlExceeded);
            }
            // A SYN's window scale goes into the new entry, which is then
            // not looked up again.
            let wscale = if proto == IPPROTO_TCP {
                offered_window_scale(ctx, l4_at)
            } else {
                0
            };
            match allocate(&key, cfg, now, tcp_flags, wscale, next_hop, expired_port) {
                Ok(port) => port,
                Err(reason) => {
                    warn_no_translation(ctx, &key, reason);
                    return Verdict::Drop(reason);
                }
            }
        }
    };
    let ports = (key.src_port, nat_port);
    send_translated(
        ctx,
        cfg,
        ip,
        (l4_at, l4),
        ports,
        (next_hop, Counter::NatOut),
    )
}

/// Sends a container's packet out of the uplink as the uplink's own: TTL
/// decremented, source address set to the uplink's and source port
/// `ports.0` rewritten to `ports.1` (checksums fixed), to `next_hop`, or
/// routed by the host's table when it is 0; counted under `counter`. SNAT
/// and published ports' answers; the caller checked the path MTU.
#[inline(always)]
fn send_translated(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    ip: &mut Ipv4Hdr,
    (l4_at, l4): (usize, L4Layout),
    ports: (u16, u16),
    (next_hop, counter): (u32, Counter),
) -> Verdict {
    if !decrement_ttl(ip) {
        return Verdict::Drop(Counter::DropTtlExceeded);
    }
    let (check_at, port_at) = (l4_at + l4.check, l4_at + l4.port);
    let uplink = (Address::Source, cfg.uplink_addr);
    if rewrite(ctx, ip, uplink, check_at, port_at, ports).is_err() {
        return Verdict::Drop(Counter::DropRedirectFailed);
    }
    let next_hop = (next_hop != 0).then_some(next_hop);
    send(ctx, cfg.uplink_ifindex, next_hop, counter)
}

/// A live flow's next hop (0: the kernel routes): the one looked up in this
/// route period, else the FIB's answer now, recorded for the period. A
/// route changed since applies within a period, as it would to the
/// kernel's routing of each packet; one that no longer leaves by the uplink
/// leaves the packet to the kernel's routing out of it, as before dr kept
/// next hops. The stores race with other CPUs' only with answers as
/// current as their own.
#[inline(always)]
fn live_next_hop(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    key: &FlowKey,
    tos: u8,
    flow: *mut Flow,
    now: u64,
) -> u32 {
    // SAFETY: map value pointer, valid for this program run.
    let entry = unsafe { &mut *flow };
    if let Some(hop) = entry.current_next_hop(now) {
        return hop;
    }
    let hop = match route(ctx, cfg, key, tos) {
        Route::Uplink(hop) => hop,
        Route::Elsewhere => 0,
    };
    if !dry_run() {
        entry.record_next_hop(hop, now);
    }
    hop
}

/// Records a container's packet on its live translation (time, TCP state);
/// returns the translation's port.
#[inline(always)]
fn refresh(flow: *mut Flow, tcp_flags: u8, now: u64) -> u16 {
    // SAFETY: map value pointer, valid for this program run.
    let entry = unsafe { &mut *flow };
    if !dry_run() {
        mark_seen(&mut entry.last_seen_ns, now);
        entry.record(tcp_flags, false);
    }
    entry.nat_port
}

/// Logs why `key`'s new flow got no translation (`reason`, its drop counter).
#[inline(always)]
fn warn_no_translation(ctx: &TcContext, key: &FlowKey, reason: Counter) {
    warn!(
        ctx,
        "snat: no translation for {:i}:{} -> {:i}:{} ({})",
        u32::from_be(key.src_addr),
        u16::from_be(key.src_port),
        u32::from_be(key.dst_addr),
        u16::from_be(key.dst_port),
        if reason == Counter::DropNatTableFull {
            "table full"
        } else {
            "no free port"
        }
    );
}

/// Records the container's receive window from its TCP segment at `l4_at`
/// ([`Flow::record_window`]), for judging the remote's RSTs and FINs, on
/// every TCP segment of a live flow. Inlined: as a call of its own it cost
/// about 20 ns per segment. Its stack stays small: Debian 12's 6.1 verifier
/// caps a call chain's stack at 512 bytes (each frame rounded up to 32),
/// and the entry point's frame takes most of it (a 40-byte copy of a SYN's
/// options here went past the cap).
#[inline(always)]
fn record_container_window(ctx: &TcContext, l4_at: usize, flags: u8, flow: *mut Flow) {
    // Sequence, acknowledgment, data offset, flags, window.
    let Some(h) = ctx.read::<[u8; 12]>(l4_at + TCP_SEQ) else {
        return;
    };
    let ack = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let window = u16::from_be_bytes([h[10], h[11]]);
    let wscale = if flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        syn_window_scale(ctx, l4_at, h[8] >> 4)
    } else {
        0
    };
    // SAFETY: map value pointer, valid for this program run.
    unsafe { (*flow).record_window(flags, ack, window, wscale) };
}

/// The window scale offered by the SYN at `l4_at` that starts a new flow
/// (see [`syn_window_scale`]); 0 if its header is cut short. Not inlined,
/// for the verifier (see `table::claim`): a new flow's path is long.
#[inline(never)]
fn offered_window_scale(ctx: &TcContext, l4_at: usize) -> u8 {
    match ctx.read::<[u8; 2]>(l4_at + TCP_DATA_OFFSET) {
        Some([data_offset, _]) => syn_window_scale(ctx, l4_at, data_offset >> 4),
        None => 0,
    }
}

const TCPOPT_WINDOW: u8 = 3;
/// At most 40 bytes of options (a 60-byte header).
const TCP_MAX_OPTION_BYTES: usize = 40;

/// The window scale a SYN whose header is `data_offset` words long offers:
/// the largest shift among the bytes that read as a window scale option
/// (kind 3, length 3), 0 without one. Not a walk of the option list: a loop
/// whose position depends on each option's length took the verifier past
/// its budget, while this one's iterations all look alike to it. The real
/// option is among the matches, and a false one (inside another option's
/// value) only widens the window judged.
#[inline(always)]
fn syn_window_scale(ctx: &TcContext, l4_at: usize, data_offset: u8) -> u8 {
    let options = (data_offset as usize * 4).saturating_sub(TcpHdr::LEN);
    let mut shift = 0;
    for i in 0..TCP_MAX_OPTION_BYTES - 2 {
        if i + 3 > options {
            break;
        }
        // Hidden from LLVM, whose rewrite of the loop's offsets gives the
        // verifier a pointer below the packet's start.
        let at = l4_at + TcpHdr::LEN + i;
        // SAFETY: a local.
        let at = unsafe { core::ptr::read_volatile(&at) };
        // In place only: a SYN's header is in the linear data. (The
        // helper's failure path here left LLVM reading a register the
        // verifier saw as unset.) Without it, no scale: only a narrower
        // window for judging the remote's RSTs and FINs.
        let Some(option) = ptr_at::<[u8; 3]>(ctx.data(), ctx.data_end(), at) else {
            break;
        };
        // SAFETY: bounds checked by ptr_at; packet bytes have no alignment.
        if let [TCPOPT_WINDOW, 3, value] = unsafe { option.read_unaligned() } {
            if value > shift {
                shift = value;
            }
        }
    }
    shift
}
