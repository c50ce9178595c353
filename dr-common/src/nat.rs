//! The SNAT connection table: keys, values, states and their timeouts.
//!
//! A translation is two entries: `NAT_FLOWS` maps the container's flow to its
//! allocated port and holds state and timestamps (the authoritative entry);
//! `NAT_REVERSE` maps a reply's view of the flow back to the container's
//! address and port. Ports and addresses are stored as in the packet (network
//! order in memory), except where noted.

use crate::checksum;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Default table size (entries per map) and port range.
pub const DEFAULT_TABLE_SIZE: u32 = 65_536;
/// Below Linux's default ephemeral range (32768-60999), so the host's own
/// outgoing connections never pick these ports, and above the crowded
/// low service ports; see README.
pub const DEFAULT_PORT_MIN: u16 = 10_000;
pub const DEFAULT_PORT_MAX: u16 = 32_767;
/// Candidate ports tried before a new flow is refused.
pub const PORT_TRIES: u32 = 32;

/// A container's flow, as it leaves the container. For ICMP echo, `src_port`
/// is the identifier and `dst_port` is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    /// Padding as a byte and a half-word, not `[u8; 3]`: programs zeroed
    /// three bytes with a call to a memset subprogram, for every key built.
    pub _pad: u8,
    pub _pad2: u16,
}

/// How stale a flow's last-seen time is left. Timeouts count in seconds,
/// and a store on every packet moves the entry's cache line back and forth
/// between the CPUs that carry a flow's two directions.
pub const LAST_SEEN_STEP_NS: u64 = 1_000_000;

/// Records in `last_seen_ns` that its flow was seen at `now`, at most once
/// per [`LAST_SEEN_STEP_NS`].
#[inline(always)]
pub fn mark_seen(last_seen_ns: &mut u64, now: u64) {
    if now.saturating_sub(*last_seen_ns) >= LAST_SEEN_STEP_NS {
        *last_seen_ns = now;
    }
}

/// Value of `NAT_FLOWS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) at creation and at the
    /// container's last packet (at most [`LAST_SEEN_STEP_NS`] stale); the
    /// last reply's time is in the reverse half ([`Reverse::reply_seen_ns`]).
    pub created_ns: u64,
    pub last_seen_ns: u64,
    /// The allocated source port (network order).
    pub nat_port: u16,
    /// A [`State`] value, as of the last packet that changed it; the
    /// teardown marks below take precedence (see [`Flow::current_state`]).
    pub state: u8,
    /// TCP teardown seen, one byte per [`Teardown`] mark, set to 1 and
    /// cleared only when a new SYN reopens the flow. Programs on several
    /// CPUs update a flow at once: a read-modify-write of `state` by one can
    /// undo another's FIN, a store of a constant into its own byte cannot.
    pub teardown: Teardown,
    pub _pad: u8,
    // The fields below (appended at the end: the table is an ABI) hold the
    // container's receive window as of its last segment with ACK, in host
    // order, to judge a remote RST or FIN (`Flow::in_window`).
    // Plain stores on every outbound segment: CPUs racing may leave a
    // slightly older value, which the check's margin absorbs, and these
    // bytes lie apart from the teardown marks, which they cannot undo.
    /// The last acknowledgment number the container sent: the remote's next
    /// sequence number as the container last knew it.
    pub ack_out: u32,
    /// The window field of that segment, unscaled.
    pub window_out: u16,
    /// The window scale the container offered in its SYN (0 without one).
    pub wscale_out: u8,
    /// 1 once `ack_out` and `window_out` hold a segment's values. 0 in a
    /// flow that has not seen the container's ACK yet, and in one carried
    /// over from a version of dr without these fields (zero-extended by
    /// the migration): then there is nothing to judge by, and a RST or FIN
    /// counts as before.
    pub window_known: u8,
    // Appended: where the flow's packets go beyond the uplink, so that
    // their redirect does not have the kernel route every packet again.
    /// The next hop (network order) the host's FIB gave for the flow; 0 for
    /// none known (the kernel routes the packet as it leaves).
    pub next_hop: u32,
    /// The [`route_period`] in which `next_hop` was looked up: the next
    /// packet of a later period looks it up again, so a changed route
    /// applies within about a second, as the kernel's routing of every
    /// packet would. 0 in a flow carried over from a version without these
    /// fields: looked up at its next packet.
    pub next_hop_period: u32,
}

/// How long a flow's next hop is used before the FIB is asked again:
/// 2^30 ns, about 1.07 s (a shift, not a division, in the datapath).
pub const ROUTE_PERIOD_SHIFT: u32 = 30;

/// The route period `now` (CLOCK_MONOTONIC ns) falls in; never 0, the mark
/// of a next hop never looked up.
#[inline(always)]
pub fn route_period(now: u64) -> u32 {
    ((now >> ROUTE_PERIOD_SHIFT) as u32) | 1 << 31
}

/// `Flow::teardown`: the container's FIN, the remote's FIN, the connection
/// closed (a RST, or both FINs with the container first), and the remote
/// holding TIME_WAIT (both FINs with the remote first).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Teardown {
    pub fin_out: u8,
    pub fin_in: u8,
    pub closed: u8,
    pub time_wait: u8,
}

/// A reply's view of a translated flow (key of `NAT_REVERSE`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReverseKey {
    pub remote_addr: u32,
    pub remote_port: u16,
    pub nat_port: u16,
    pub proto: u8,
    /// Padding as a byte and a half-word, not `[u8; 3]`: programs zeroed
    /// three bytes with a call to a memset subprogram, for every key built.
    pub _pad: u8,
    pub _pad2: u16,
}

/// A container's end of a flow: where replies go (and a published port's
/// target).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Value of `NAT_REVERSE`: the reply's container end, and when a reply last
/// came. A reply finds its flow's liveness here, with no second lookup in
/// `NAT_FLOWS` (see [`Reverse::recently_answered`]); the flow's last
/// activity is the later of this time and [`Flow::last_seen_ns`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reverse {
    pub origin: Origin,
    /// `bpf_ktime_get_ns` at the last reply (at most [`LAST_SEEN_STEP_NS`]
    /// stale), 0 before the first one and in an entry carried over from a
    /// version of dr without it (zero-extended by the migration).
    pub reply_seen_ns: u64,
}

impl Reverse {
    /// A claim of a port for `origin`, answered by nothing yet.
    #[inline(always)]
    pub fn new(origin: Origin) -> Self {
        Self {
            origin,
            reply_seen_ns: 0,
        }
    }

    /// When the last reply to `origin`'s flow came: this entry's time if it
    /// names that container end, else 0 (the port went to another flow, so
    /// its replies say nothing about this one).
    #[inline(always)]
    pub fn reply_seen_by(&self, origin: &Origin) -> u64 {
        if self.origin == *origin {
            self.reply_seen_ns
        } else {
            0
        }
    }

    /// Whether a reply came within the shortest timeout any state of
    /// `proto` has: then the flow is alive at `now_ns` whatever its state,
    /// and a reply without SYN, FIN or RST (which changes no state that the
    /// container's next packet would not change too) needs nothing from
    /// its forward half.
    #[inline(always)]
    pub fn recently_answered(&self, proto: u8, now_ns: u64, t: &Timeouts) -> bool {
        self.reply_seen_ns != 0
            && now_ns.saturating_sub(self.reply_seen_ns) < t.shortest(proto) as u64 * 1_000_000_000
    }
}

impl FlowKey {
    /// The reverse key of this flow once translated to `nat_port`.
    #[inline(always)]
    pub fn reverse(&self, nat_port: u16) -> ReverseKey {
        ReverseKey {
            remote_addr: self.dst_addr,
            remote_port: self.dst_port,
            nat_port,
            proto: self.proto,
            _pad: 0,
            _pad2: 0,
        }
    }

    #[inline(always)]
    pub fn origin(&self) -> Origin {
        Origin {
            addr: self.src_addr,
            port: self.src_port,
            _pad: 0,
        }
    }

    /// The same flow seen from its other end: what answers this packet
    /// carry. An ICMP echo reply carries the request's identifier.
    #[inline(always)]
    pub fn answer(&self) -> FlowKey {
        let (src_port, dst_port) = if self.proto == IPPROTO_ICMP {
            (self.src_port, self.dst_port)
        } else {
            (self.dst_port, self.src_port)
        };
        FlowKey {
            src_addr: self.dst_addr,
            dst_addr: self.src_addr,
            src_port,
            dst_port,
            proto: self.proto,
            _pad: 0,
            _pad2: 0,
        }
    }
}

/// What `dr_nat_sweep` is asked to do with one table entry ([`SweepRequest::op`]).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SweepOp {
    /// Remove the translation of `flow` if it has expired (`nat gc`).
    ExpiredFlow = 1,
    /// Remove the translation of `flow` whatever its state (`nat flush`).
    AnyFlow = 2,
    /// Remove the reverse entry `reverse` if its translation is dead
    /// (expired, evicted, or moved to another port).
    DeadReverse = 3,
}

/// The packet `nat gc` and `nat flush` run `dr_nat_sweep` on (with
/// BPF_PROG_TEST_RUN), one entry per run. Removal is decided and done in the
/// program, not by dr-ctl: the datapath reclaims ports between two system
/// calls, and a check-then-delete by key from user space can delete the new
/// holder's claim (two flows on one port, replies to the wrong one). In the
/// program the check and the delete are a few instructions apart, as in the
/// datapath's own reclaim. Not stored in a map: not an ABI between versions
/// (the program and dr-ctl come from one build).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepRequest {
    /// A [`SweepOp`].
    pub op: u8,
    /// Set by the program: 1 when it removed the entry.
    pub removed: u8,
    pub _pad: [u8; 2],
    pub flow: FlowKey,
    pub reverse: ReverseKey,
}

impl SweepRequest {
    /// The request as the bytes of the test-run packet.
    pub fn to_bytes(&self) -> [u8; core::mem::size_of::<SweepRequest>()] {
        // SAFETY: repr(C), integers only, no padding the compiler adds
        // (asserted below).
        unsafe { core::mem::transmute(*self) }
    }
}

const _: () = assert!(core::mem::size_of::<SweepRequest>() == 4 + 16 + 12);

/// `InboundFlow::delivered_by`: the kernel delivered the flow (a published
/// port's DNAT, a route to the container); answers go back to the kernel.
pub const DELIVERED_BY_KERNEL: u8 = 1;
/// `InboundFlow::delivered_by`: dr delivered the flow from a peer host's own
/// address; answers go straight back to that host.
pub const DELIVERED_FROM_PEER_HOST: u8 = 2;
/// `InboundFlow::delivered_by`: dr translated the flow to a published port's
/// container (`PUBLISHED_PORTS`); answers leave with the uplink's address
/// and `InboundFlow::host_port`.
pub const PUBLISHED_BY_DR: u8 = 3;

/// Key of `PUBLISHED_PORTS`: a port published on the uplink's address
/// (`docker run -p`), whose traffic dr translates to the container (the
/// value, an [`Origin`]) instead of the kernel's DNAT.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PublishedKey {
    /// The host's port, network order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of `INBOUND_FLOWS`, keyed by the container's answer as it leaves
/// the container: a flow into a local container that the container did not
/// start, so that its answers are never translated.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InboundFlow {
    /// `bpf_ktime_get_ns` of the flow's last packet, either way.
    pub last_seen_ns: u64,
    /// `DELIVERED_BY_KERNEL`, `DELIVERED_FROM_PEER_HOST` or `PUBLISHED_BY_DR`.
    pub delivered_by: u8,
    pub _pad0: u8,
    /// `PUBLISHED_BY_DR`: the published port the flow came to (network
    /// order), its answers' source port. Was padding (zero) before.
    pub host_port: u16,
    pub _pad: [u8; 4],
}

impl InboundFlow {
    /// Idle past the timeout of an established flow of `proto`.
    #[inline(always)]
    pub fn expired(&self, proto: u8, now_ns: u64, t: &Timeouts) -> bool {
        let timeout = match proto {
            IPPROTO_TCP => t.tcp_established,
            IPPROTO_UDP => t.udp,
            _ => t.icmp,
        };
        now_ns.saturating_sub(self.last_seen_ns) > timeout as u64 * 1_000_000_000
    }
}

impl ReverseKey {
    /// The forward key of the flow this reply belongs to.
    #[inline(always)]
    pub fn forward(&self, origin: &Origin) -> FlowKey {
        FlowKey {
            src_addr: origin.addr,
            dst_addr: self.remote_addr,
            src_port: origin.port,
            dst_port: self.remote_port,
            proto: self.proto,
            _pad: 0,
            _pad2: 0,
        }
    }
}

/// The L4 checksum of a TCP/UDP/ICMP header after a translation changed the
/// pseudo-header address `addrs.0 -> addrs.1` and the port (ICMP: the
/// identifier) `ports.0 -> ports.1`; values as in the packet. ICMP has no
/// pseudo-header; a zero UDP checksum means "none" and stays zero, and a
/// computed zero is sent as 0xffff.
#[inline(always)]
pub fn rewritten_l4_checksum(proto: u8, check: u16, addrs: (u32, u32), ports: (u16, u16)) -> u16 {
    match proto {
        IPPROTO_ICMP => checksum::replace_u16(check, ports.0, ports.1),
        IPPROTO_UDP if check == 0 => 0,
        _ => {
            let c = checksum::replace_u32(check, addrs.0, addrs.1);
            let c = checksum::replace_u16(c, ports.0, ports.1);
            if proto == IPPROTO_UDP && c == 0 {
                0xffff
            } else {
                c
            }
        }
    }
}

/// Idle timeouts in seconds (part of `DatapathConfig`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct Timeouts {
    pub tcp_syn: u32,
    pub tcp_established: u32,
    pub tcp_closing: u32,
    pub tcp_closed: u32,
    pub tcp_time_wait: u32,
    pub udp: u32,
    pub icmp: u32,
    #[cfg_attr(feature = "user", serde(skip))]
    pub _pad: u32,
}

impl Timeouts {
    /// The shortest timeout of any state a flow of `proto` can be in.
    #[inline(always)]
    pub fn shortest(&self, proto: u8) -> u32 {
        match proto {
            IPPROTO_TCP => [
                self.tcp_syn,
                self.tcp_established,
                self.tcp_closing,
                self.tcp_time_wait,
            ]
            .into_iter()
            .fold(self.tcp_closed, |a, b| if b < a { b } else { a }),
            IPPROTO_UDP => self.udp,
            _ => self.icmp,
        }
    }
}

impl Default for Timeouts {
    /// conntrack-like defaults; TCP established follows RFC 5382's 2h4m minimum.
    fn default() -> Self {
        Self {
            tcp_syn: 60,
            tcp_established: 7440,
            tcp_closing: 120,
            tcp_closed: 2,
            tcp_time_wait: 60,
            udp: 60,
            icmp: 30,
            _pad: 0,
        }
    }
}

/// Connection state of a translation.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// TCP: the container sent SYN, no reply yet.
    TcpSynSent = 1,
    TcpEstablished = 2,
    /// TCP: the container sent FIN; the remote may still send.
    TcpFinOut = 3,
    /// TCP: the remote sent FIN; the container may still send.
    TcpFinIn = 4,
    /// TCP: FIN both ways with the container closing first, or a RST. The
    /// remote holds no TIME_WAIT for the translated tuple, so the port is
    /// free again after a short grace for the last ACKs.
    TcpClosed = 5,
    Udp = 6,
    Icmp = 7,
    /// TCP: FIN both ways with the remote closing first: the remote holds
    /// TIME_WAIT for the translated tuple, so the port is kept as long.
    TcpTimeWait = 8,
}

/// TCP flag bits (byte 13 of the header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

impl State {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => State::TcpSynSent,
            2 => State::TcpEstablished,
            3 => State::TcpFinOut,
            4 => State::TcpFinIn,
            5 => State::TcpClosed,
            6 => State::Udp,
            7 => State::Icmp,
            8 => State::TcpTimeWait,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            State::TcpSynSent => "syn_sent",
            State::TcpEstablished => "established",
            State::TcpFinOut => "fin_out",
            State::TcpFinIn => "fin_in",
            State::TcpClosed => "closed",
            State::TcpTimeWait => "time_wait",
            State::Udp => "udp",
            State::Icmp => "icmp",
        }
    }

    /// The state of a new flow whose first packet has `proto` and `tcp_flags`.
    #[inline(always)]
    pub fn initial(proto: u8, tcp_flags: u8) -> Self {
        match proto {
            IPPROTO_TCP => State::TcpSynSent.next(tcp_flags, false),
            IPPROTO_UDP => State::Udp,
            _ => State::Icmp,
        }
    }

    /// The state after a TCP packet with `flags`, `reply` if it came from the remote side.
    #[inline(always)]
    pub fn next(self, flags: u8, reply: bool) -> Self {
        let fin_here = if reply {
            State::TcpFinIn
        } else {
            State::TcpFinOut
        };
        let closed = matches!(self, State::TcpClosed | State::TcpTimeWait);
        match self {
            State::Udp | State::Icmp => self,
            // A new SYN after a close reopens the flow (the same 4-tuple reused).
            _ if closed && flags & TCP_SYN != 0 && flags & TCP_ACK == 0 && !reply => {
                State::TcpSynSent
            }
            _ if flags & TCP_RST != 0 => State::TcpClosed,
            // The second FIN: whoever sent the first one holds TIME_WAIT.
            State::TcpFinOut if flags & TCP_FIN != 0 && reply => State::TcpClosed,
            State::TcpFinIn if flags & TCP_FIN != 0 && !reply => State::TcpTimeWait,
            _ if closed => self,
            s if flags & TCP_FIN != 0 && s != fin_here => fin_here,
            State::TcpSynSent if reply || flags & TCP_SYN == 0 => State::TcpEstablished,
            other => other,
        }
    }

    /// Idle timeout of this state, in seconds.
    #[inline(always)]
    pub fn timeout_secs(self, t: &Timeouts) -> u32 {
        match self {
            State::TcpSynSent => t.tcp_syn,
            State::TcpEstablished => t.tcp_established,
            State::TcpFinOut | State::TcpFinIn => t.tcp_closing,
            State::TcpClosed => t.tcp_closed,
            State::TcpTimeWait => t.tcp_time_wait,
            State::Udp => t.udp,
            State::Icmp => t.icmp,
        }
    }
}

/// Largest window shift (RFC 7323 section 2.3).
const MAX_WSCALE: u8 = 14;

impl Flow {
    /// The flow's next hop if it was looked up in `now`'s route period:
    /// `Some(0)` when the FIB gave none (the kernel routes), `None` when it
    /// is to be looked up again.
    #[inline(always)]
    pub fn current_next_hop(&self, now: u64) -> Option<u32> {
        (self.next_hop_period == route_period(now)).then_some(self.next_hop)
    }

    /// Records `next_hop` as looked up at `now`.
    #[inline(always)]
    pub fn record_next_hop(&mut self, next_hop: u32, now: u64) {
        self.next_hop = next_hop;
        self.next_hop_period = route_period(now);
    }

    /// Records what the container's TCP segment says about its receive
    /// window: the window scale of a SYN, the ACK and window of anything
    /// with ACK. Values as in the header, host order.
    #[inline(always)]
    pub fn record_window(&mut self, flags: u8, ack: u32, window: u16, wscale: u8) {
        if flags & TCP_ACK != 0 {
            self.ack_out = ack;
            self.window_out = window;
            if self.window_known == 0 {
                self.window_known = 1;
            }
        } else if flags & TCP_SYN != 0 {
            self.wscale_out = wscale;
            self.window_known = 0;
        }
    }

    /// Whether a remote segment starting at `seq` (host order) lies close
    /// enough to the container's receive window for its RST or FIN to be
    /// believed. A simplification of conntrack's `tcp_in_window`, which
    /// tracks both ends' highest sequence and largest window: dr sees the
    /// container's side only and keeps its last ACK and window, and accepts
    /// `seq` within one window either side of that ACK. Ahead: data the
    /// container received and has not acknowledged yet, up to what it
    /// allowed. Behind: a retransmission of a segment partly acknowledged,
    /// and an ACK stored by one CPU after a newer one by another. The window
    /// is scaled by the container's SYN's shift whether or not the remote
    /// agreed to scaling (not seen here): a wider window, never a valid RST
    /// refused. An off-path sender must then guess a sequence number within
    /// a window of 2^32. Without a known window every segment counts.
    #[inline(always)]
    pub fn in_window(&self, seq: u32) -> bool {
        if self.window_known == 0 {
            return true;
        }
        let shift = if self.wscale_out > MAX_WSCALE {
            MAX_WSCALE
        } else {
            self.wscale_out
        };
        let window = (self.window_out as u32) << shift;
        let distance = seq.wrapping_sub(self.ack_out) as i32;
        distance.unsigned_abs() <= window
    }

    /// The flow's state: the teardown marks, else `state`. Both FINs seen
    /// without their order (two CPUs at once) count as TIME_WAIT, the longer
    /// hold of the port.
    #[inline(always)]
    pub fn current_state(&self) -> Option<State> {
        let base = State::from_u8(self.state)?;
        let t = self.teardown;
        Some(match base {
            State::Udp | State::Icmp => base,
            _ if t.closed != 0 => State::TcpClosed,
            _ if t.time_wait != 0 || (t.fin_out != 0 && t.fin_in != 0) => State::TcpTimeWait,
            _ if t.fin_out != 0 => State::TcpFinOut,
            _ if t.fin_in != 0 => State::TcpFinIn,
            _ => base,
        })
    }

    /// Records a packet's TCP `flags` (`reply`: from the remote side). Only
    /// what changes is written, and a teardown only ever sets its own mark.
    #[inline(always)]
    pub fn record(&mut self, flags: u8, reply: bool) {
        // A segment without SYN, FIN or RST (nearly every one) changes only
        // SYN_SENT: the state is not worked out for it.
        if flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0 && self.state != State::TcpSynSent as u8 {
            return;
        }
        let Some(current) = self.current_state() else {
            return;
        };
        let next = current.next(flags, reply);
        if next == current {
            return;
        }
        match next {
            State::TcpFinOut => self.teardown.fin_out = 1,
            State::TcpFinIn => self.teardown.fin_in = 1,
            State::TcpClosed => self.teardown.closed = 1,
            State::TcpTimeWait => self.teardown.time_wait = 1,
            // Established, or a SYN reopening a closed flow.
            _ => {
                if self.teardown != Teardown::default() {
                    self.teardown = Teardown::default();
                }
                self.state = next as u8;
            }
        }
    }

    /// Whether the flow has been idle longer than its state allows at
    /// `now_ns`, its last reply seen at `reply_seen_ns` (its reverse half's
    /// [`Reverse::reply_seen_ns`]; 0 for none). A state with a timeout of 0
    /// holds nothing, even within the clock's tick (the coarse clock moves
    /// once a tick: a packet and the next can read one time).
    #[inline(always)]
    pub fn expired(&self, reply_seen_ns: u64, now_ns: u64, t: &Timeouts) -> bool {
        let timeout = match self.current_state() {
            Some(s) => s.timeout_secs(t),
            None => 0,
        };
        let idle = now_ns.saturating_sub(self.last_active_ns(reply_seen_ns));
        timeout == 0 || idle > timeout as u64 * 1_000_000_000
    }

    /// The flow's last activity, either way: the later of the container's
    /// last packet and the last reply (`reply_seen_ns`).
    #[inline(always)]
    pub fn last_active_ns(&self, reply_seen_ns: u64) -> u64 {
        if reply_seen_ns > self.last_seen_ns {
            reply_seen_ns
        } else {
            self.last_seen_ns
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_seen_moves_once_per_step() {
        let mut last_seen = 5_000_000;
        mark_seen(&mut last_seen, 5_000_000 + LAST_SEEN_STEP_NS - 1);
        assert_eq!(last_seen, 5_000_000);
        mark_seen(&mut last_seen, 5_000_000 + LAST_SEEN_STEP_NS);
        assert_eq!(last_seen, 5_000_000 + LAST_SEEN_STEP_NS);
        // A clock read on another CPU a moment earlier leaves it.
        mark_seen(&mut last_seen, 5_000_000);
        assert_eq!(last_seen, 5_000_000 + LAST_SEEN_STEP_NS);
    }

    #[test]
    fn tcp_states_follow_the_handshake_and_teardown() {
        let s = State::initial(IPPROTO_TCP, TCP_SYN);
        assert_eq!(s, State::TcpSynSent);
        let s = s.next(TCP_SYN | TCP_ACK, true);
        assert_eq!(s, State::TcpEstablished);
        assert_eq!(s.next(TCP_ACK, false), State::TcpEstablished);
        // Remote closes first, then the container.
        let half = s.next(TCP_FIN | TCP_ACK, true);
        assert_eq!(half, State::TcpFinIn);
        assert_eq!(half.next(TCP_ACK, false), State::TcpFinIn);
        assert_eq!(
            half.next(TCP_FIN | TCP_ACK, true),
            State::TcpFinIn,
            "retransmitted FIN"
        );
        assert_eq!(half.next(TCP_FIN | TCP_ACK, false), State::TcpTimeWait);
        assert_eq!(State::TcpTimeWait.next(TCP_ACK, true), State::TcpTimeWait);
        // Container closes first.
        assert_eq!(s.next(TCP_FIN, false).next(TCP_FIN, true), State::TcpClosed);
        assert_eq!(State::TcpClosed.next(TCP_ACK, false), State::TcpClosed);
        assert_eq!(s.next(TCP_RST, false), State::TcpClosed);
        assert_eq!(State::TcpClosed.next(TCP_SYN, false), State::TcpSynSent);
        // A flow picked up mid-stream is established.
        assert_eq!(State::initial(IPPROTO_TCP, TCP_ACK), State::TcpEstablished);
        assert_eq!(State::initial(IPPROTO_UDP, 0), State::Udp);
        assert_eq!(State::Udp.next(TCP_RST, true), State::Udp);
    }

    #[test]
    fn a_stale_update_cannot_undo_a_teardown() {
        let established = Flow {
            state: State::TcpEstablished as u8,
            ..Flow::default()
        };
        // Two CPUs read the flow established; one records the container's
        // FIN, the other an ACK from the remote: the ACK writes nothing.
        let mut fin = established;
        fin.record(TCP_FIN | TCP_ACK, false);
        let mut ack = established;
        ack.record(TCP_ACK, true);
        assert_eq!(ack, established);
        assert_eq!(fin.current_state(), Some(State::TcpFinOut));
        // FINs both ways: the order kept when seen in order, TIME_WAIT (the
        // longer hold) when two CPUs each saw only their own.
        let mut ordered = fin;
        ordered.record(TCP_FIN | TCP_ACK, true);
        assert_eq!(ordered.current_state(), Some(State::TcpClosed));
        let mut both = fin;
        both.teardown.fin_in = 1;
        assert_eq!(both.current_state(), Some(State::TcpTimeWait));
        // A new SYN reopens a closed flow.
        ordered.record(TCP_SYN, false);
        assert_eq!(ordered.current_state(), Some(State::TcpSynSent));
        assert_eq!(ordered.teardown, Teardown::default());
    }

    #[test]
    fn a_remote_teardown_counts_only_near_the_containers_window() {
        let mut flow = Flow {
            state: State::TcpEstablished as u8,
            ..Flow::default()
        };
        // Nothing known yet (a new flow, one migrated from an older dr).
        assert!(flow.in_window(12345));
        flow.record_window(TCP_SYN, 0, 64240, 7);
        assert!(flow.in_window(12345), "a SYN says no ACK");
        flow.record_window(TCP_ACK, 1_000_000, 502, 0);
        let window = 502 << 7;
        assert!(flow.in_window(1_000_000));
        assert!(flow.in_window(1_000_000 + window));
        assert!(flow.in_window(1_000_000 - window));
        assert!(!flow.in_window(1_000_000 + window + 1));
        assert!(!flow.in_window(1_000_000 - window - 1));
        assert!(!flow.in_window(1_000_000u32.wrapping_add(1 << 31)));
        // Across the wrap of the sequence space.
        flow.record_window(TCP_ACK, u32::MAX - 10, 502, 0);
        assert!(flow.in_window(20));
        // A zero window: only the next expected sequence number.
        flow.record_window(TCP_ACK, 7, 0, 0);
        assert!(flow.in_window(7));
        assert!(!flow.in_window(8));
        // A new SYN on the same tuple: nothing known again.
        flow.record_window(TCP_SYN, 0, 64240, 0);
        assert!(flow.in_window(1 << 31));
    }

    #[test]
    fn plain_segments_move_only_syn_sent() {
        let states = [
            State::TcpSynSent,
            State::TcpEstablished,
            State::TcpFinOut,
            State::TcpFinIn,
            State::TcpClosed,
            State::TcpTimeWait,
            State::Udp,
            State::Icmp,
        ];
        let marks = [
            Teardown::default(),
            Teardown {
                fin_out: 1,
                ..Teardown::default()
            },
            Teardown {
                fin_in: 1,
                ..Teardown::default()
            },
            Teardown {
                closed: 1,
                ..Teardown::default()
            },
        ];
        for state in states {
            for teardown in marks {
                for flags in [0, TCP_ACK, TCP_ACK | 0x08] {
                    for reply in [false, true] {
                        let mut flow = Flow {
                            state: state as u8,
                            teardown,
                            ..Flow::default()
                        };
                        let want = flow.current_state().unwrap().next(flags, reply);
                        flow.record(flags, reply);
                        assert_eq!(flow.current_state(), Some(want), "{state:?} {teardown:?}");
                    }
                }
            }
        }
    }

    /// A UDP flow last seen at 1 s, and timeouts giving UDP 2 s.
    fn udp_flow_seen_at_1s() -> (Flow, Timeouts) {
        let t = Timeouts {
            udp: 2,
            ..Timeouts::default()
        };
        let flow = Flow {
            last_seen_ns: 1_000_000_000,
            state: State::Udp as u8,
            ..Flow::default()
        };
        (flow, t)
    }

    #[test]
    fn a_next_hop_is_used_within_its_route_period_only() {
        let period_ns = 1u64 << ROUTE_PERIOD_SHIFT;
        // Carried over from a version without the field, or never looked up,
        // even in the first period after boot.
        assert_eq!(Flow::default().current_next_hop(0), None);
        assert_eq!(Flow::default().current_next_hop(5 * period_ns), None);
        let mut flow = Flow::default();
        let router = u32::from_ne_bytes([192, 168, 91, 254]);
        let at = 7 * period_ns + 5;
        flow.record_next_hop(router, at);
        assert_eq!(flow.current_next_hop(at), Some(router));
        assert_eq!(flow.current_next_hop(8 * period_ns - 1), Some(router));
        assert_eq!(flow.current_next_hop(8 * period_ns), None);
        // "The FIB gave none" is remembered for the period too.
        flow.record_next_hop(0, 8 * period_ns);
        assert_eq!(flow.current_next_hop(8 * period_ns + 1), Some(0));
        assert_eq!(flow.current_next_hop(0), None);
    }

    #[test]
    fn expiry_uses_the_state_timeout() {
        let (flow, t) = udp_flow_seen_at_1s();
        assert!(!flow.expired(0, 3_000_000_000, &t));
        assert!(flow.expired(0, 3_000_000_001, &t));
        // A zero timeout: gone at once, even read at the same time.
        let closed = Flow {
            state: State::TcpClosed as u8,
            ..flow
        };
        let no_hold = Timeouts { tcp_closed: 0, ..t };
        assert!(closed.expired(0, closed.last_seen_ns, &no_hold));
        assert!(!closed.expired(0, closed.last_seen_ns, &t));
        assert_eq!(State::TcpClosed.timeout_secs(&t), 2);
        assert_eq!(State::TcpTimeWait.timeout_secs(&t), 60);
        assert_eq!(State::TcpFinOut.timeout_secs(&t), 120);
    }

    #[test]
    fn a_flow_lives_from_its_later_direction() {
        let (flow, t) = udp_flow_seen_at_1s();
        // Replies alone keep it: the container has not sent for 4 s.
        assert!(!flow.expired(4_000_000_000, 5_000_000_000, &t));
        assert!(flow.expired(4_000_000_000, 6_000_000_001, &t));
        // An older reply changes nothing.
        assert!(flow.expired(500_000_000, 3_000_000_001, &t));
    }

    #[test]
    fn a_recent_reply_vouches_for_every_state() {
        let t = Timeouts::default();
        assert_eq!(t.shortest(IPPROTO_TCP), t.tcp_closed);
        assert_eq!(t.shortest(IPPROTO_UDP), t.udp);
        assert_eq!(t.shortest(IPPROTO_ICMP), t.icmp);
        let short_syn = Timeouts { tcp_syn: 1, ..t };
        assert_eq!(short_syn.shortest(IPPROTO_TCP), 1);
        let answered = Reverse {
            reply_seen_ns: 10_000_000_000,
            ..Reverse::default()
        };
        let tcp_closed_ns = t.tcp_closed as u64 * 1_000_000_000;
        assert!(answered.recently_answered(IPPROTO_TCP, 10_000_000_000 + tcp_closed_ns - 1, &t));
        assert!(!answered.recently_answered(IPPROTO_TCP, 10_000_000_000 + tcp_closed_ns, &t));
        // Within it, no state of the flow can have expired.
        for state in [
            State::TcpSynSent,
            State::TcpEstablished,
            State::TcpFinOut,
            State::TcpClosed,
            State::TcpTimeWait,
        ] {
            let flow = Flow {
                state: state as u8,
                ..Flow::default()
            };
            assert!(!flow.expired(
                answered.reply_seen_ns,
                10_000_000_000 + tcp_closed_ns - 1,
                &t
            ));
        }
        // Its time speaks for the flow it names only.
        let other = Origin {
            port: 9,
            ..answered.origin
        };
        assert_eq!(answered.reply_seen_by(&answered.origin), 10_000_000_000);
        assert_eq!(answered.reply_seen_by(&other), 0);
        // No reply yet: never vouched for.
        assert!(!Reverse::new(Origin::default()).recently_answered(IPPROTO_UDP, 1, &t));
        // A zero timeout vouches for nothing.
        let none = Timeouts { tcp_closed: 0, ..t };
        assert!(!answered.recently_answered(IPPROTO_TCP, 10_000_000_000, &none));
    }

    #[test]
    fn l4_checksum_rewrites_follow_the_protocol() {
        let (addrs, ports) = ((1, 2), (3, 4));
        // ICMP ignores the addresses.
        assert_eq!(
            rewritten_l4_checksum(IPPROTO_ICMP, 0x1234, addrs, ports),
            checksum::replace_u16(0x1234, 3, 4)
        );
        let tcp = rewritten_l4_checksum(IPPROTO_TCP, 0x1234, addrs, ports);
        assert_eq!(
            tcp,
            checksum::replace_u16(checksum::replace_u32(0x1234, 1, 2), 3, 4)
        );
        assert_eq!(
            rewritten_l4_checksum(IPPROTO_UDP, 0x1234, addrs, ports),
            tcp
        );
        assert_eq!(rewritten_l4_checksum(IPPROTO_UDP, 0, addrs, ports), 0);
        // A UDP result of zero is sent as all ones: find an input that gives it.
        let zero_input = (1..=u16::MAX)
            .find(|c| rewritten_l4_checksum(IPPROTO_TCP, *c, addrs, ports) == 0)
            .unwrap();
        assert_eq!(
            rewritten_l4_checksum(IPPROTO_UDP, zero_input, addrs, ports),
            0xffff
        );
    }

    #[test]
    fn inbound_flows_expire_by_protocol() {
        let t = Timeouts::default();
        let flow = InboundFlow {
            last_seen_ns: 1_000_000_000,
            delivered_by: DELIVERED_BY_KERNEL,
            ..Default::default()
        };
        let after = |secs: u64| flow.last_seen_ns + secs * 1_000_000_000;
        assert!(!flow.expired(IPPROTO_UDP, after(60), &t));
        assert!(flow.expired(IPPROTO_UDP, after(61), &t));
        assert!(!flow.expired(IPPROTO_TCP, after(7440), &t));
        assert!(flow.expired(IPPROTO_TCP, after(7441), &t));
        assert!(flow.expired(IPPROTO_ICMP, after(31), &t));
    }

    #[test]
    fn an_answer_swaps_the_ends() {
        let k = FlowKey {
            src_addr: 1,
            dst_addr: 2,
            src_port: 3,
            dst_port: 4,
            proto: IPPROTO_TCP,
            _pad: 0,
            _pad2: 0,
        };
        let a = k.answer();
        assert_eq!(
            (a.src_addr, a.dst_addr, a.src_port, a.dst_port),
            (2, 1, 4, 3)
        );
        assert_eq!(a.answer(), k);
        let ping = FlowKey {
            proto: IPPROTO_ICMP,
            dst_port: 0,
            ..k
        };
        let pong = ping.answer();
        assert_eq!((pong.src_addr, pong.src_port, pong.dst_port), (2, 3, 0));
    }

    #[test]
    fn keys_round_trip_between_directions() {
        let k = FlowKey {
            src_addr: 1,
            dst_addr: 2,
            src_port: 3,
            dst_port: 4,
            proto: IPPROTO_UDP,
            _pad: 0,
            _pad2: 0,
        };
        let r = k.reverse(99);
        assert_eq!((r.remote_addr, r.remote_port, r.nat_port), (2, 4, 99));
        assert_eq!(r.forward(&k.origin()), k);
    }
}
