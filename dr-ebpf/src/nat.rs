//! SNAT for container traffic to external destinations, in place of
//! `iptables ... -j MASQUERADE`: the connection table, port allocation,
//! expiry, and the rewrites in both directions (ICMP errors included).
//!
//! Rewrites go through `bpf_skb_store_bytes` and the `l3/l4_csum_replace`
//! helpers, which keep checksums right for CHECKSUM_PARTIAL skbs (as veth
//! produces) where direct arithmetic on the field would not.
use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use aya_log_ebpf::warn;
use dr_common::{
    checksum,
    nat::{
        rewritten_l4_checksum, Flow, FlowKey, Origin, ReverseKey, State, DELIVERED_BY_KERNEL,
        IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, PORT_TRIES, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
    },
    Counter, DatapathConfig,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    dry_run::{dry_run, record_new_translation},
    inbound::inbound_answered,
    maps::{count, NAT_EXCLUDE, NAT_FLOWS, NAT_REVERSE},
    mtu::too_big,
    packet::{
        decrement_ttl, drop, dst_addr, flow_of, forward, is_fragment, l4_offset, l4_ports,
        load_prefix, pass, send, src_addr, IP_CHECK, IP_DST, IP_SRC,
    },
    route::leaves_by_uplink,
};

pub const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// Where a protocol keeps its ports (or ICMP identifier) and its checksum.
#[derive(Clone, Copy)]
struct L4Layout {
    /// Offset of the "source" port; the destination port follows it (not for ICMP).
    port: usize,
    check: usize,
}

#[inline(always)]
fn layout(proto: u8) -> Option<L4Layout> {
    match proto {
        IPPROTO_TCP => Some(L4Layout { port: 0, check: 16 }),
        IPPROTO_UDP => Some(L4Layout { port: 0, check: 6 }),
        IPPROTO_ICMP => Some(L4Layout { port: 4, check: 2 }),
        _ => None,
    }
}

/// The flags for `l4_csum_replace` when a pseudo-header field (an address) changes.
#[inline(always)]
fn pseudo_flags(proto: u8) -> u64 {
    match proto {
        // UDP: a zero checksum means "none" and must stay zero.
        IPPROTO_UDP => (BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0) as u64,
        IPPROTO_TCP => BPF_F_PSEUDO_HDR as u64,
        _ => 0,
    }
}

#[inline(always)]
fn port_flags(proto: u8) -> u64 {
    if proto == IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    }
}

/// Rewrites the IPv4 address at `addr_at` and the L4 port/identifier at
/// `port_at`, fixing the IP header checksum and the L4 checksum.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    proto: u8,
    check_at: usize,
    addr_at: usize,
    addrs: (u32, u32),
    port_at: usize,
    ports: (u16, u16),
) -> Result<(), i64> {
    let (old_addr, new_addr) = addrs;
    let (old_port, new_port) = ports;
    ctx.store(addr_at, &new_addr, 0)?;
    ctx.l3_csum_replace(IP_CHECK, old_addr as u64, new_addr as u64, 4)?;
    if proto != IPPROTO_ICMP {
        ctx.l4_csum_replace(
            check_at,
            old_addr as u64,
            new_addr as u64,
            pseudo_flags(proto) | 4,
        )?;
    }
    ctx.store(port_at, &new_port, 0)?;
    ctx.l4_csum_replace(
        check_at,
        old_port as u64,
        new_port as u64,
        port_flags(proto) | 2,
    )?;
    Ok(())
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no arguments, no memory access.
    unsafe { bpf_ktime_get_ns() }
}

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

/// The live translation of `key`, or None. Drops an expired one, and one
/// whose reverse half another flow reclaimed (after finding this one dead).
#[inline(always)]
fn live_flow(key: &FlowKey, cfg: &DatapathConfig, now: u64) -> Option<*mut Flow> {
    let flow = NAT_FLOWS.get_ptr_mut(key)?;
    // SAFETY: map value pointer, valid for this program run.
    let nat_port = unsafe { (*flow).nat_port };
    if unsafe { (*flow).expired(now, &cfg.nat_timeouts) } {
        count(Counter::NatExpired, 0);
    } else {
        // SAFETY: as above.
        match unsafe { NAT_REVERSE.get(key.reverse(nat_port)) } {
            Some(origin) if *origin == key.origin() => return Some(flow),
            _ => count(Counter::NatEvicted, 0),
        }
    }
    remove_translation(key, nat_port);
    None
}

/// Removes the translation of `key`: its forward half, then its reverse half
/// if that still names this flow (another CPU may have reclaimed the port
/// since). Whoever removes the forward half frees the reverse one: false
/// when another CPU removed it first.
#[inline(always)]
pub fn remove_translation(key: &FlowKey, nat_port: u16) -> bool {
    if dry_run() {
        return false;
    }
    if NAT_FLOWS.remove(key).is_err() {
        return false;
    }
    release(&key.reverse(nat_port), &key.origin());
    true
}

/// Who may find a translation dead, and what counts as dead for it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reclaimer {
    /// The datapath, claiming a port: only an expired translation is dead.
    Datapath,
    /// `dr_nat_sweep`: also an orphan, a reverse half whose forward half is
    /// gone (evicted from the LRU table) or on another port.
    Sweeper,
}

/// Whether the translation holding `rkey` is dead, in which case the caller
/// is the only one to reclaim the entry. An expired one: its forward half is
/// removed here, and of several CPUs only the one whose removal succeeds
/// gets true. The datapath never takes an orphan: the claim of a CPU that
/// has inserted the reverse half but not yet the forward half looks the same,
/// and two CPUs taking it would send two flows from one port (seen by
/// tests/tests/datapath/nat_race.rs). The sweeper takes only orphans older
/// than its listing of the table (milliseconds), which a claim never is.
#[inline(always)]
fn dead(rkey: &ReverseKey, holder: &Origin, cfg: &DatapathConfig, now: u64, by: Reclaimer) -> bool {
    let fkey = rkey.forward(holder);
    // SAFETY: map value, copied out.
    match unsafe { NAT_FLOWS.get(fkey) }.copied() {
        Some(flow) if flow.nat_port == rkey.nat_port => {
            if !flow.expired(now, &cfg.nat_timeouts) || NAT_FLOWS.remove(fkey).is_err() {
                return false;
            }
            count(Counter::NatExpired, 0);
            true
        }
        _ if by == Reclaimer::Sweeper => {
            count(Counter::NatEvicted, 0);
            true
        }
        _ => false,
    }
}

/// [`claim`]'s outcomes.
const CLAIMED: u32 = 0;
const BUSY: u32 = 1;
const TABLE_FULL: u32 = 2;

/// Claims `rkey` for `origin`: a free port, or one whose translation has
/// expired. The entry of an expired one is overwritten in place by the one
/// CPU [`dead`] chose, never deleted and inserted again: between the two,
/// another CPU could claim the port, and a delete by key removes whatever
/// is there.
/// A function of its own (not inlined): the verifier then sees one of three
/// results per candidate port instead of every path through it.
#[inline(never)]
fn claim(rkey: &ReverseKey, origin: &Origin, cfg: &DatapathConfig, now: u64) -> u32 {
    // A dry run takes the first free candidate and reclaims nothing.
    if dry_run() {
        // SAFETY: only the presence of the value is read.
        return if unsafe { NAT_REVERSE.get(rkey) }.is_none() {
            CLAIMED
        } else {
            BUSY
        };
    }
    match NAT_REVERSE.insert(rkey, origin, BPF_NOEXIST as u64) {
        Ok(()) => return CLAIMED,
        Err(e) if e != -EEXIST => return TABLE_FULL,
        Err(_) => {}
    }
    // SAFETY: map value, copied out.
    let Some(holder) = (unsafe { NAT_REVERSE.get(rkey) }).copied() else {
        return BUSY;
    };
    if !dead(rkey, &holder, cfg, now, Reclaimer::Datapath) {
        return BUSY;
    }
    // If gone since (the sweeper took it as an orphan), claimed afresh.
    if NAT_REVERSE.insert(rkey, origin, BPF_EXIST as u64).is_ok()
        || NAT_REVERSE.insert(rkey, origin, BPF_NOEXIST as u64).is_ok()
    {
        return CLAIMED;
    }
    BUSY
}

/// The sweeper's removal of a dead reverse entry (expired, or an orphan);
/// true if it removed one.
#[inline(always)]
pub fn release_dead(rkey: &ReverseKey, cfg: &DatapathConfig, now: u64) -> bool {
    // SAFETY: map value, copied out.
    let Some(holder) = (unsafe { NAT_REVERSE.get(rkey) }).copied() else {
        return false;
    };
    if !dead(rkey, &holder, cfg, now, Reclaimer::Sweeper) {
        return false;
    }
    release(rkey, &holder);
    true
}

/// Removes the reverse entry `rkey` if it still names `origin`.
#[inline(always)]
fn release(rkey: &ReverseKey, origin: &Origin) {
    // SAFETY: map value, only compared.
    if unsafe { NAT_REVERSE.get(rkey) }.is_some_and(|o| o == origin) {
        let _ = NAT_REVERSE.remove(rkey);
    }
}

const EEXIST: i32 = 17;

/// Allocates a source port for a new flow and records both halves.
/// Tries up to PORT_TRIES ports from a random start in the range; a port is
/// taken only if no live translation uses it toward the same remote endpoint.
/// Both halves are inserted with `BPF_NOEXIST`: of two CPUs starting the same
/// flow (a retransmitted SYN, UDP), the second undoes its claim and uses the
/// first one's port, so every packet of the flow leaves from one port.
#[inline(always)]
fn allocate(key: &FlowKey, cfg: &DatapathConfig, now: u64, tcp_flags: u8) -> Result<u16, Counter> {
    let origin = key.origin();
    // checked_rem: no panic path for the verifier to reject (range is never 0).
    let range = cfg
        .nat_port_max
        .wrapping_sub(cfg.nat_port_min)
        .wrapping_add(1);
    // SAFETY: no arguments.
    let start = unsafe { bpf_get_prandom_u32() }
        .checked_rem(range)
        .unwrap_or(0);
    for i in 0..PORT_TRIES {
        // A small range is scanned whole; in a large one, independent random
        // candidates avoid the clusters a linear probe runs into when busy.
        let offset = if range <= PORT_TRIES {
            start.wrapping_add(i).checked_rem(range).unwrap_or(0)
        } else if i == 0 {
            start
        } else {
            // SAFETY: no arguments.
            unsafe { bpf_get_prandom_u32() }
                .checked_rem(range)
                .unwrap_or(0)
        };
        let port = (cfg.nat_port_min.wrapping_add(offset) as u16).to_be();
        let rkey = key.reverse(port);
        match claim(&rkey, &origin, cfg, now) {
            CLAIMED => {}
            TABLE_FULL => return Err(Counter::DropNatTableFull),
            _ => continue,
        }
        if dry_run() {
            record_new_translation();
            count(Counter::NatCreated, 0);
            return Ok(port);
        }
        let flow = Flow {
            created_ns: now,
            last_seen_ns: now,
            nat_port: port,
            state: State::initial(key.proto, tcp_flags) as u8,
            ..Flow::default()
        };
        if let Err(e) = NAT_FLOWS.insert(key, flow, BPF_NOEXIST as u64) {
            // SAFETY: map value, copied out.
            let winner = unsafe { NAT_FLOWS.get(key) }.map(|f| f.nat_port);
            if winner != Some(port) {
                release(&rkey, &origin);
            }
            return match winner {
                Some(port) if e == -EEXIST => Ok(port),
                _ => Err(Counter::DropNatTableFull),
            };
        }
        // A CPU that found the claim stale in the instant between the two
        // inserts took the port: nothing has left with it yet, try another.
        // SAFETY: map value, only compared.
        if !unsafe { NAT_REVERSE.get(rkey) }.is_some_and(|o| *o == origin) {
            if unsafe { NAT_FLOWS.get(key) }.is_some_and(|f| f.nat_port == port) {
                let _ = NAT_FLOWS.remove(key);
            }
            continue;
        }
        count(Counter::NatCreated, 0);
        return Ok(port);
    }
    Err(Counter::DropNatPortsExhausted)
}

/// A container's packet for neither the local subnet nor a peer subnet.
/// An answer to an inbound flow leaves the way the flow came (to the kernel,
/// or straight to the peer host); a packet for an external destination that
/// the host routes out of the uplink is translated to the uplink's address
/// (SNAT) and sent there; everything else goes to the stack.
#[inline(always)]
pub fn snat_out(ctx: &TcContext, cfg: &DatapathConfig, ip: &mut Ipv4Hdr, bytes: u64) -> i32 {
    let dst = dst_addr(ip);
    let nat_enabled = cfg.nat_enabled != 0;
    let proto = ip.proto;
    let Some(l4) = layout(proto) else {
        return pass(Counter::Passed, bytes);
    };
    if is_fragment(ip) {
        if nat_enabled && !excluded(cfg, dst) {
            return drop(Counter::DropNatFragment, bytes);
        }
        return pass(Counter::Passed, bytes);
    }
    let l4_at = l4_offset(ip);
    // Echo requests start translations and echo replies answer inbound
    // pings; other ICMP goes to the stack.
    let icmp_type = if proto == IPPROTO_ICMP {
        match ctx.load::<u8>(l4_at) {
            Ok(t @ (ICMP_ECHO | ICMP_ECHO_REPLY)) => t,
            _ => return pass(Counter::Passed, bytes),
        }
    } else {
        ICMP_ECHO
    };
    let Some((key, tcp_flags)) = flow_of(ctx, ip) else {
        return pass(Counter::Malformed, bytes);
    };
    let now = now();
    let starts = icmp_type == ICMP_ECHO;
    // A live translation is used without asking the exclusions again: as
    // with conntrack, a rule changed later applies to new flows.
    let live = if nat_enabled && starts {
        live_flow(&key, cfg, now)
    } else {
        None
    };
    if live.is_none() {
        match inbound_answered(&key, cfg, now) {
            Some(DELIVERED_BY_KERNEL) => return pass(Counter::InboundReply, bytes),
            Some(_) => {
                if let Some(verdict) = too_big(ctx, cfg, ip, bytes) {
                    return verdict;
                }
                return forward(
                    ctx,
                    ip,
                    cfg.uplink_ifindex,
                    Some(dst),
                    Counter::ToPeer,
                    bytes,
                )
                .0;
            }
            None => {}
        }
        if !nat_enabled || !starts || excluded(cfg, dst) {
            return pass(Counter::Passed, bytes);
        }
        // Only a SYN opens a TCP translation: any other segment answers a
        // connection the kernel knows (or one long gone).
        if proto == IPPROTO_TCP && tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
            return pass(Counter::InboundReply, bytes);
        }
        // Only a new flow asks the FIB: a live one left by the uplink when
        // it started, and its packets keep the path they had.
        if !leaves_by_uplink(ctx, cfg, &key, ip.tos) {
            return pass(Counter::Passed, bytes);
        }
    }
    // Before any translation is made: a packet refused here creates none.
    if let Some(verdict) = too_big(ctx, cfg, ip, bytes) {
        return verdict;
    }
    let (nat_port, flow) = match live {
        Some(flow) => {
            // SAFETY: map value pointer, valid for this program run.
            let entry = unsafe { &mut *flow };
            if !dry_run() {
                entry.last_seen_ns = now;
                entry.record(tcp_flags, false);
            }
            (entry.nat_port, Some(flow))
        }
        None => {
            if ip.ttl <= 1 {
                return drop(Counter::DropTtlExceeded, bytes);
            }
            match allocate(&key, cfg, now, tcp_flags) {
                Ok(port) => (port, None),
                Err(reason) => {
                    warn!(
                        ctx,
                        "snat: no translation for {:i}:{} -> {:i}:{} ({})",
                        u32::from_be(key.src_addr),
                        u16::from_be(key.src_port),
                        u32::from_be(dst),
                        u16::from_be(key.dst_port),
                        if reason == Counter::DropNatTableFull {
                            "table full"
                        } else {
                            "no free port"
                        }
                    );
                    return drop(reason, bytes);
                }
            }
        }
    };
    if proto == IPPROTO_TCP && !dry_run() {
        // A new flow's entry is looked up again: only its SYN pays for that.
        if let Some(flow) = flow.or_else(|| NAT_FLOWS.get_ptr_mut(key)) {
            record_container_window(ctx, l4_at, tcp_flags, flow);
        }
    }
    if !decrement_ttl(ip) {
        return drop(Counter::DropTtlExceeded, bytes);
    }
    let addrs = (key.src_addr, cfg.uplink_addr);
    let port_at = l4_at + l4.port;
    if rewrite(
        ctx,
        proto,
        l4_at + l4.check,
        IP_SRC,
        addrs,
        port_at,
        (key.src_port, nat_port),
    )
    .is_err()
    {
        return drop(Counter::DropRedirectFailed, bytes);
    }
    send(ctx, cfg.uplink_ifindex, None, Counter::NatOut, bytes).0
}

/// The container end of a reply to a live translation, and its flow entry.
/// None when the reply's port is outside the NAT range or no live
/// translation matches (then the packet is the host's own traffic). A dead
/// or half-evicted translation is never used: a stale mapping must not
/// deliver to a container.
#[inline(always)]
pub fn live_reply(cfg: &DatapathConfig, rkey: &ReverseKey) -> Option<(Origin, &'static mut Flow)> {
    let host_port = u16::from_be(rkey.nat_port) as u32;
    if host_port < cfg.nat_port_min || host_port > cfg.nat_port_max {
        return None;
    }
    // SAFETY: map value, copied out.
    let origin: Origin = unsafe { NAT_REVERSE.get(rkey) }.copied()?;
    let flow = NAT_FLOWS.get_ptr_mut(rkey.forward(&origin))?;
    // SAFETY: map value pointer, valid for this program run.
    let flow = unsafe { &mut *flow };
    if flow.nat_port != rkey.nat_port {
        count(Counter::NatEvicted, 0);
        return None;
    }
    if flow.expired(now(), &cfg.nat_timeouts) {
        count(Counter::NatExpired, 0);
        return None;
    }
    Some((origin, flow))
}

/// Whether the remote's segment at `l4_at` lies near enough to the
/// container's receive window for its RST or FIN to count
/// ([`Flow::in_window`]). Not inlined: keeps the reply path's branches
/// within the verifier's budget.
#[inline(never)]
fn teardown_in_window(ctx: &TcContext, l4_at: usize, flow: &Flow) -> bool {
    match ctx.load::<u32>(l4_at + 4) {
        Ok(seq) => flow.in_window(u32::from_be(seq)),
        // Not reached: the caller read the flags further on.
        Err(_) => true,
    }
}

/// Records the container's receive window from its TCP segment at `l4_at`
/// ([`Flow::record_window`]), for judging the remote's RSTs and FINs. Not
/// inlined, for the verifier (see [`claim`]).
#[inline(never)]
fn record_container_window(ctx: &TcContext, l4_at: usize, flags: u8, flow: *mut Flow) {
    // Sequence, acknowledgment, data offset, flags, window.
    let Ok(h) = ctx.load::<[u8; 12]>(l4_at + 4) else {
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

const TCPOPT_WINDOW: u8 = 3;
/// At most 40 bytes of options (a 60-byte header).
const TCP_MAX_OPTION_BYTES: usize = 40;

/// The window scale a SYN whose header is `data_offset` words long offers:
/// the largest shift among the bytes that read as a window scale option
/// (kind 3, length 3), 0 without one. Not a walk of the option list: a loop
/// whose position depends on each option's length took the verifier past
/// its budget, while this one's iterations all look alike to it. The real
/// option is among the matches, and a false one (inside another option's
/// value) only widens the window judged. The options are copied once (one
/// helper call, not one per position): bytes past them stay zero and match
/// nothing.
#[inline(always)]
fn syn_window_scale(ctx: &TcContext, l4_at: usize, data_offset: u8) -> u8 {
    let options = (data_offset as usize * 4).saturating_sub(20);
    let mut bytes = [0u8; TCP_MAX_OPTION_BYTES];
    if load_prefix(ctx, l4_at + 20, &mut bytes, options).is_err() {
        return 0;
    }
    let mut shift = 0;
    for i in 0..TCP_MAX_OPTION_BYTES - 2 {
        if bytes[i] == TCPOPT_WINDOW && bytes[i + 1] == 3 && bytes[i + 2] > shift {
            shift = bytes[i + 2];
        }
    }
    shift
}

/// Records a reply on its flow: time and TCP state.
#[inline(always)]
pub fn touch_reply(flow: &mut Flow, tcp_flags: u8) {
    if dry_run() {
        return;
    }
    flow.last_seen_ns = now();
    flow.record(tcp_flags, true);
}

/// External -> container: a packet to the uplink address that answers a
/// translation is translated back and delivered to docker0. None when it is
/// not for a translation (the host's own traffic).
#[inline(always)]
pub fn snat_reply(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    ip: &mut Ipv4Hdr,
    bytes: u64,
) -> Option<i32> {
    let proto = ip.proto;
    let l4 = layout(proto)?;
    if is_fragment(ip) {
        // Only the first fragment has ports; dr does not track fragments by
        // IP id (as Cilium does): the stack gets them, counted.
        return Some(pass(Counter::NatFragmentIn, bytes));
    }
    let l4_at = l4_offset(ip);
    if proto == IPPROTO_ICMP {
        match ctx.load::<u8>(l4_at).ok()? {
            ICMP_ECHO_REPLY => {}
            ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM => {
                return icmp_error_reply(ctx, cfg, ip, l4_at, bytes);
            }
            _ => return None,
        }
    }
    let (remote_port, nat_port, tcp_flags) = l4_ports(ctx, ip)?;
    let (remote_port, nat_port) = if proto == IPPROTO_ICMP {
        (0, remote_port)
    } else {
        (remote_port, nat_port)
    };
    let rkey = ReverseKey {
        remote_addr: src_addr(ip),
        remote_port,
        nat_port,
        proto,
        _pad: [0; 3],
    };
    let (origin, flow) = live_reply(cfg, &rkey)?;
    // A RST or FIN far from the container's window is not believed (an
    // off-path sender guessing), but still delivered: the container's stack
    // judges it again (RFC 5961) and answers with a challenge ACK.
    if tcp_flags & (TCP_RST | TCP_FIN) == 0 || teardown_in_window(ctx, l4_at, flow) {
        touch_reply(flow, tcp_flags);
    } else {
        count(Counter::NatTeardownOutOfWindow, 0);
    }
    if !decrement_ttl(ip) {
        return Some(drop(Counter::DropTtlExceeded, bytes));
    }
    let addrs = (cfg.uplink_addr, origin.addr);
    // The reply's destination port (ICMP: the identifier) is the NAT port.
    let port_at = l4_at + if proto == IPPROTO_ICMP { l4.port } else { 2 };
    if rewrite(
        ctx,
        proto,
        l4_at + l4.check,
        IP_DST,
        addrs,
        port_at,
        (nat_port, origin.port),
    )
    .is_err()
    {
        return Some(drop(Counter::DropRedirectFailed, bytes));
    }
    Some(send(ctx, cfg.bridge_ifindex, None, Counter::NatIn, bytes).0)
}

/// An ICMP error quoting a translated packet: translate the outer destination
/// and the quoted packet's source (address, port, both checksums), keeping the
/// ICMP checksum right, so the container's stack sees the error about its own
/// packet (path MTU discovery, traceroute).
#[inline(always)]
fn icmp_error_reply(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    ip: &mut Ipv4Hdr,
    l4_at: usize,
    bytes: u64,
) -> Option<i32> {
    let inner = l4_at + 8;
    let vihl: u8 = ctx.load(inner).ok()?;
    let inner_len = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || inner_len < 20 {
        return None;
    }
    let proto: u8 = ctx.load(inner + 9).ok()?;
    let quoted_src: u32 = ctx.load(inner + 12).ok()?;
    let remote: u32 = ctx.load(inner + 16).ok()?;
    if quoted_src != cfg.uplink_addr {
        return None;
    }
    let l4 = layout(proto)?;
    let inner_l4 = inner + inner_len;
    // The quote ends with the outer packet, not with the frame (Ethernet
    // padding): its ports must lie inside.
    let packet_end = EthHdr::LEN + u16::from_be_bytes(ip.tot_len) as usize;
    if inner_l4 + 8 > packet_end {
        return None;
    }
    let (nat_port, remote_port) = if proto == IPPROTO_ICMP {
        if ctx.load::<u8>(inner_l4).ok()? != ICMP_ECHO {
            return None;
        }
        (ctx.load::<u16>(inner_l4 + 4).ok()?, 0)
    } else {
        let p: [u16; 2] = ctx.load(inner_l4).ok()?;
        (p[0], p[1])
    };
    let rkey = ReverseKey {
        remote_addr: remote,
        remote_port,
        nat_port,
        proto,
        _pad: [0; 3],
    };
    // The same checks as a reply's: a dead translation delivers nothing.
    let (origin, _) = live_reply(cfg, &rkey)?;
    if !decrement_ttl(ip) {
        return Some(drop(Counter::DropTtlExceeded, bytes));
    }
    if translate_icmp_error(
        ctx, cfg, l4_at, inner, inner_l4, packet_end, proto, l4, &origin, nat_port,
    )
    .is_err()
    {
        return Some(drop(Counter::DropRedirectFailed, bytes));
    }
    Some(
        send(
            ctx,
            cfg.bridge_ifindex,
            None,
            Counter::NatIcmpErrorIn,
            bytes,
        )
        .0,
    )
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn translate_icmp_error(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    l4_at: usize,
    inner: usize,
    inner_l4: usize,
    packet_end: usize,
    proto: u8,
    l4: L4Layout,
    origin: &Origin,
    nat_port: u16,
) -> Result<(), i64> {
    let icmp_check = l4_at + 2;
    // The ICMP checksum covers the quoted packet: every quoted change is
    // folded into it as well. No pseudo-header for ICMP.
    let fold = |old: u64, new: u64, size: u64| ctx.l4_csum_replace(icmp_check, old, new, size);

    // Outer destination.
    ctx.store(IP_DST, &origin.addr, 0)?;
    ctx.l3_csum_replace(IP_CHECK, cfg.uplink_addr as u64, origin.addr as u64, 4)?;

    // Quoted source address and the quoted header's checksum.
    let old_check: u16 = ctx.load(inner + 10)?;
    let new_check = checksum::replace_u32(old_check, cfg.uplink_addr, origin.addr);
    ctx.store(inner + 12, &origin.addr, 0)?;
    ctx.store(inner + 10, &new_check, 0)?;
    fold(cfg.uplink_addr as u64, origin.addr as u64, 4)?;
    fold(old_check as u64, new_check as u64, 2)?;

    // Quoted source port (ICMP: identifier).
    ctx.store(inner_l4 + l4.port, &origin.port, 0)?;
    fold(nat_port as u64, origin.port as u64, 2)?;

    // The quoted L4 checksum, when the error quotes that far.
    let at = inner_l4 + l4.check;
    if at + 2 > packet_end {
        return Ok(());
    }
    if let Ok(old) = ctx.load::<u16>(at) {
        let addrs = (cfg.uplink_addr, origin.addr);
        let new = rewritten_l4_checksum(proto, old, addrs, (nat_port, origin.port));
        ctx.store(at, &new, 0)?;
        fold(old as u64, new as u64, 2)?;
    }
    Ok(())
}
