//! The SNAT connection table: the live translation of a flow, port
//! allocation for a new one, expiry and reclaiming. `NAT_FLOWS` holds a
//! flow's forward half, `NAT_REVERSE` its reverse half (which port toward
//! which remote endpoint belongs to which container).
use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    helpers::bpf_get_prandom_u32,
};
use dr_common::{
    nat::{route_period, Flow, FlowKey, Origin, Reverse, ReverseKey, State, PORT_TRIES},
    Counter, DatapathConfig,
};

use crate::{
    dry_run::{dry_run, record_new_translation},
    maps::{count, NAT_FLOWS, NAT_REVERSE},
};

/// The live translation of `key`; else the port of an expired one, left in
/// place for [`allocate`] to reopen (0 for none). One lookup while the
/// container keeps sending: a forward half names a port whose reverse half
/// names its flow. [`allocate`] returns a translation only once both halves
/// stand; a reverse half gets another holder only after [`dead`] removed
/// the forward half; and the sweeper, releasing an orphan, puts it back if
/// its forward half appeared meanwhile ([`restore_if_claimed`]).
#[inline(always)]
pub(super) fn live_flow(key: &FlowKey, cfg: &DatapathConfig, now: u64) -> Result<*mut Flow, u16> {
    let flow = NAT_FLOWS.get_ptr_mut(key).ok_or(0u16)?;
    // SAFETY: map value pointer, valid for this program run.
    let flow_now = unsafe { &*flow };
    if !expired(key, flow_now, cfg, now) {
        return Ok(flow);
    }
    Err(flow_now.nat_port)
}

/// Whether the translation of `key` (forward half `flow`) has been idle
/// both ways past its state's timeout at `now`. Its reverse half, which
/// holds the last reply's time, is read only when the container has been
/// quiet that long: replies alone keep a flow alive.
#[inline(always)]
pub fn expired(key: &FlowKey, flow: &Flow, cfg: &DatapathConfig, now: u64) -> bool {
    let t = &cfg.nat_timeouts;
    flow.expired(0, now, t)
        && flow.expired(
            reply_seen(&key.reverse(flow.nat_port), &key.origin()),
            now,
            t,
        )
}

/// When the last reply to `origin`'s translation `rkey` came; 0 for none.
#[inline(always)]
fn reply_seen(rkey: &ReverseKey, origin: &Origin) -> u64 {
    // SAFETY: map value, copied out.
    unsafe { NAT_REVERSE.get(rkey) }.map_or(0, |reverse| reverse.reply_seen_by(origin))
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
fn dead(
    rkey: &ReverseKey,
    holder: &Reverse,
    cfg: &DatapathConfig,
    now: u64,
    by: Reclaimer,
) -> bool {
    let fkey = rkey.forward(&holder.origin);
    let t = &cfg.nat_timeouts;
    // SAFETY: map value, copied out.
    match unsafe { NAT_FLOWS.get(fkey) }.copied() {
        Some(flow) if flow.nat_port == rkey.nat_port => {
            if !flow.expired(holder.reply_seen_ns, now, t) || NAT_FLOWS.remove(fkey).is_err() {
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
    let claim = Reverse::new(*origin);
    match NAT_REVERSE.insert(rkey, claim, BPF_NOEXIST as u64) {
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
    if NAT_REVERSE.insert(rkey, claim, BPF_EXIST as u64).is_ok()
        || NAT_REVERSE.insert(rkey, claim, BPF_NOEXIST as u64).is_ok()
    {
        return CLAIMED;
    }
    BUSY
}

/// The sweeper's removal of a dead reverse entry (expired, or an orphan);
/// true if it removed one (and did not have to put it back).
#[inline(always)]
pub fn release_dead(rkey: &ReverseKey, cfg: &DatapathConfig, now: u64) -> bool {
    // SAFETY: map value, copied out.
    let Some(holder) = (unsafe { NAT_REVERSE.get(rkey) }).copied() else {
        return false;
    };
    if !dead(rkey, &holder, cfg, now, Reclaimer::Sweeper) {
        return false;
    }
    release(rkey, &holder.origin);
    !restore_if_claimed(rkey, &holder)
}

/// After the sweeper released `rkey` as an orphan of `holder`: a claim that
/// sat between its two inserts when the sweeper looked (a vCPU stalled for
/// longer than the sweeper's listing took) may have inserted its forward
/// half and checked its reverse half since, in the instant before the
/// release. Its pair is made whole again; if another flow claimed the port
/// in between, the forward half goes instead, and its container's next
/// packet gets a new translation. Without this, such a forward half would
/// send from a port that no reverse half holds, which the datapath, reading
/// the forward half only, would not notice. True if the pair stands again.
#[inline(always)]
fn restore_if_claimed(rkey: &ReverseKey, holder: &Reverse) -> bool {
    let fkey = rkey.forward(&holder.origin);
    // SAFETY: map value, only compared.
    let claimed = || unsafe { NAT_FLOWS.get(fkey) }.is_some_and(|f| f.nat_port == rkey.nat_port);
    if !claimed() {
        return false;
    }
    // SAFETY: map value, only compared.
    let holds = || unsafe { NAT_REVERSE.get(rkey) }.is_some_and(|r| r.origin == holder.origin);
    if NAT_REVERSE.insert(rkey, holder, BPF_NOEXIST as u64).is_ok() || holds() {
        return true;
    }
    if claimed() {
        let _ = NAT_FLOWS.remove(fkey);
    }
    false
}

/// Removes the reverse entry `rkey` if it still names `origin`.
#[inline(always)]
fn release(rkey: &ReverseKey, origin: &Origin) {
    // SAFETY: map value, only compared.
    if unsafe { NAT_REVERSE.get(rkey) }.is_some_and(|r| r.origin == *origin) {
        let _ = NAT_REVERSE.remove(rkey);
    }
}

/// Reopens the expired translation of `key` (`origin`'s) on its port, the
/// one in `rkey` (a container's client reusing its address and port toward
/// the same server, as connections at a high rate do): the forward half is
/// removed, and its reverse half, which no other flow can take while the
/// forward half names the port, is kept for the new flow. Only the CPU
/// whose removal succeeds reopens it; another found it reclaimed by a flow
/// that needed its port ([`dead`]), or by a CPU starting the same flow, and
/// looks for a port as for any new flow. Saves the release of the reverse half and the search
/// for a free port, which in a table full of expired flows takes several
/// claims.
/// A function of its own (not inlined), like [`claim`].
#[inline(never)]
fn reopen(key: &FlowKey, rkey: &ReverseKey, origin: &Origin) -> u32 {
    if dry_run() {
        return CLAIMED;
    }
    if NAT_FLOWS.remove(key).is_err() {
        return BUSY;
    }
    count(Counter::NatExpired, 0);
    // The reply time it keeps is older than the expired flow's timeout,
    // too old to count as recent for the new one.
    // SAFETY: map value, only compared.
    if unsafe { NAT_REVERSE.get(rkey) }.is_some_and(|r| r.origin == *origin) {
        return CLAIMED;
    }
    // The sweeper released it as an orphan in the instant between.
    match NAT_REVERSE.insert(rkey, Reverse::new(*origin), BPF_NOEXIST as u64) {
        Ok(()) => CLAIMED,
        Err(e) if e != -EEXIST => TABLE_FULL,
        Err(_) => BUSY,
    }
}

const EEXIST: i32 = 17;

/// Allocates a source port for a new flow and records both halves; a TCP
/// flow's entry starts with the window scale its SYN offered (`wscale`),
/// every entry with the next hop the FIB gave (`next_hop`).
/// Reopens an expired translation of the same flow on its port
/// (`expired_port`, network order, 0 for none: see [`reopen`]); else, or if
/// that fails, tries up to PORT_TRIES ports from a random start in the range; a port is
/// taken only if no live translation uses it toward the same remote endpoint.
/// Both halves are inserted with `BPF_NOEXIST`: of two CPUs starting the same
/// flow (a retransmitted SYN, UDP), the second undoes its claim and uses the
/// first one's port, so every packet of the flow leaves from one port.
#[inline(always)]
pub(super) fn allocate(
    key: &FlowKey,
    cfg: &DatapathConfig,
    now: u64,
    tcp_flags: u8,
    wscale: u8,
    next_hop: u32,
    expired_port: u16,
) -> Result<u16, Counter> {
    let origin = key.origin();
    // checked_rem: no panic path for the verifier to reject (range is never 0).
    let range = cfg
        .nat_port_max
        .wrapping_sub(cfg.nat_port_min)
        .wrapping_add(1);
    // The expired translation's port, if still in the range, is tried first
    // (see [`reopen`]); the scan of a small range goes on from it.
    let expired_offset = (u16::from_be(expired_port) as u32).wrapping_sub(cfg.nat_port_min);
    let reopens = expired_port != 0 && expired_offset < range;
    // Out of the range now: the expired translation goes, as any would.
    if expired_port != 0 && !reopens && remove_translation(key, expired_port) {
        count(Counter::NatExpired, 0);
    }
    let start = if reopens {
        expired_offset
    } else {
        // SAFETY: no arguments.
        unsafe { bpf_get_prandom_u32() }
            .checked_rem(range)
            .unwrap_or(0)
    };
    // The entry is built once, the port set per candidate, and a losing
    // insert's winner read as a plain port (0 for none), not an `Option`:
    // the verifier walks each of the 32 candidates, and an entry built in
    // the loop and an `Option<u16>` (whose empty payload the compiler reads
    // from a dead register) took the programs that translate to 850,000
    // verified instructions of the kernel's million on 6.18 and 450,000 on
    // 6.1; 180,000 and 290,000 now (`tests/tests/datapath/verifier.rs`).
    let mut flow = Flow {
        created_ns: now,
        last_seen_ns: now,
        state: State::initial(key.proto, tcp_flags) as u8,
        wscale_out: wscale,
        next_hop,
        next_hop_period: route_period(now),
        ..Flow::default()
    };
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
        let claimed = if i == 0 && reopens {
            reopen(key, &rkey, &origin)
        } else {
            claim(&rkey, &origin, cfg, now)
        };
        match claimed {
            CLAIMED => {}
            TABLE_FULL => return Err(Counter::DropNatTableFull),
            _ => continue,
        }
        if dry_run() {
            record_new_translation();
            count(Counter::NatCreated, 0);
            return Ok(port);
        }
        flow.nat_port = port;
        // By reference: a copy per candidate took the verified instructions
        // from 180,000 to 620,000.
        #[allow(clippy::needless_borrows_for_generic_args)]
        let inserted = NAT_FLOWS.insert(key, &flow, BPF_NOEXIST as u64);
        if let Err(e) = inserted {
            // The port of a CPU that started the same flow first; 0 for none.
            // SAFETY: map value, copied out.
            let winner = unsafe { NAT_FLOWS.get(key) }.map_or(0, |f| f.nat_port);
            if winner != port {
                release(&rkey, &origin);
            }
            return if winner != 0 && e == -EEXIST {
                Ok(winner)
            } else {
                Err(Counter::DropNatTableFull)
            };
        }
        // A CPU that found the claim stale in the instant between the two
        // inserts took the port: nothing has left with it yet, try another.
        // SAFETY: map value, only compared.
        if !unsafe { NAT_REVERSE.get(rkey) }.is_some_and(|r| r.origin == origin) {
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
