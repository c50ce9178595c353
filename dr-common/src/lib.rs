//! Types shared by the eBPF datapath (`dr-ebpf`) and the control plane (`dr-ctl`).
//!
//! Every map key and value is `#[repr(C)]` with explicit padding so both sides agree
//! on the layout byte for byte. IPv4 addresses are stored as `u32` holding the four
//! address bytes in network order in memory (`u32::from_ne_bytes(addr.octets())`):
//! the datapath can compare them with packet fields without byte swapping, and the
//! LPM trie matches prefixes on the same in-memory bytes.
#![no_std]

pub mod checksum;
pub mod clock;
pub mod nat;
pub mod peer_span;

/// Peers a datapath holds unless `dr-ctl up --max-peers` says otherwise:
/// the capacity of the peer subnet trie, the per-peer statistics array and
/// the peer host set (the object's sizes; dr-ctl sets them when it creates
/// the maps).
pub const DEFAULT_MAX_PEERS: u32 = 4096;

/// The most `--max-peers` accepts: the fixed capacity of earlier releases.
pub const MAX_PEERS_LIMIT: u32 = 131_072;

/// Capacity of the SNAT exclusion trie (cluster CIDR and `--no-masquerade`).
pub const MAX_EXCLUSIONS: u32 = 1024;

/// Declares the pinned maps once: a name constant each and `ALL`.
macro_rules! map_names {
    ($($name:ident),* $(,)?) => {
        /// Names of the pinned maps, as declared in `dr-ebpf` (the statics'
        /// names) and found under the pin directory.
        pub mod map_names {
            $(pub const $name: &str = stringify!($name);)*
            /// Every pinned map.
            pub const ALL: [&str; [$($name),*].len()] = [$($name),*];
        }
    };
}

map_names!(
    PEER_SUBNETS,
    PEER_TRAFFIC,
    DATAPATH_CONFIG,
    COUNTERS,
    NAT_EXCLUDE,
    NAT_FLOWS,
    NAT_REVERSE,
    ENDPOINTS,
    ENDPOINT_PORTS,
    PEER_HOSTS,
    INBOUND_FLOWS,
    NODE_STATE,
    PUBLISHED_PORTS,
);

/// The dry-run copy of the datapath (`dr-ctl trace`): its switch, a global
/// set when the copy is loaded, and its private, unpinned record.
pub mod dry_run {
    /// `u8` global in the object's `.rodata`: 1 in the copy `trace` loads.
    pub const GLOBAL: &str = "DRY_RUN";
    /// Array of one [`super::Trace`], not pinned: each copy has its own.
    pub const TRACE_MAP: &str = "TRACE";
}

/// The value of `TRACE`: what a packet run through the dry-run copy would
/// have done beyond its verdict and output frame. Zeroed by dr-ctl before
/// each run.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// Bit `i`: counter `i` (`Counter`) would have counted the packet.
    pub counters: u64,
    /// Where the packet would have been redirected (0: nowhere).
    pub redirect_ifindex: u32,
    /// The next hop given with the redirect (network order; 0: the
    /// packet's destination, by the neighbour table).
    pub next_hop: u32,
    /// 1: a new SNAT translation would have been made.
    pub new_translation: u8,
    /// 1: the redirect hands the packet to the container behind the docker0
    /// port `redirect_ifindex` (TC's `bpf_redirect_peer`, XDP's redirect
    /// into the veth), not out of a device.
    pub into_container: u8,
    pub _pad: [u8; 6],
}

/// Capacity of the local container endpoint table (direct delivery, TC and XDP).
pub const MAX_ENDPOINTS: u32 = 4096;
/// Entries of `PUBLISHED_PORTS`: ports (TCP and UDP apart) dr translates.
pub const MAX_PUBLISHED_PORTS: u32 = 4096;

/// Bits of `skb->mark` one of dr's programs sets on a packet for another
/// it will meet next, which clears it: past that hop the host's own marks
/// are as they were. A container cannot forge them: a packet's mark is
/// cleared when it crosses from the container's namespace into the host's.
pub mod marks {
    /// dr redirected the packet to the egress of docker0 or the uplink,
    /// whose program leaves it alone.
    pub const REDIRECTED: u32 = 1 << 20;
    /// `dr_port_ingress` decided on and counted this container's packet
    /// and left it to the bridge: `dr_bridge_ingress` lets it pass without
    /// deciding again.
    pub const PASSED_BY_PORT: u32 = 1 << 21;
}

/// Names of the eBPF programs in the object.
pub mod program_names {
    pub const BRIDGE_INGRESS: &str = "dr_bridge_ingress";
    /// On each learned container's docker0 port (see port.rs).
    pub const PORT_INGRESS: &str = "dr_port_ingress";
    pub const UPLINK_INGRESS: &str = "dr_uplink_ingress";
    pub const UPLINK_XDP: &str = "dr_uplink_xdp";
    pub const BRIDGE_EGRESS: &str = "dr_bridge_egress";
    pub const UPLINK_EGRESS: &str = "dr_uplink_egress";
    /// Never attached: `nat gc` and `nat flush` run it (see nat_sweep.rs).
    pub const NAT_SWEEP: &str = "dr_nat_sweep";
    /// Never attached: `up` runs it to measure the clock (see clock_sample.rs).
    pub const CLOCK_SAMPLE: &str = "dr_clock_sample";
}

/// Value of `ENDPOINTS`, an array of `MAX_ENDPOINTS` slots: a local
/// container and where TC and XDP deliver its frames. A container's slot is
/// [`endpoint_slot`] of its address; the entry names the address, so a slot
/// holds at most one of the containers that share it (the others go
/// through docker0). An array, not a hash table: its lookup is a few
/// instructions the verifier inlines, where hashing the address cost about
/// 30 ns per delivered packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// The container's address (network order); 0: an empty slot. dr-ctl
    /// changes a slot's other fields only while this is 0 (see its
    /// `Maps::store_endpoint_slot`).
    pub addr: u32,
    /// The container's veth on the host side (a docker0 port).
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// 1 if XDP may redirect into the port: XDP runs in generic mode, or
    /// the container's end of the veth has GRO on (native XDP hands frames
    /// to the peer's NAPI ring, which exists only then; without it the
    /// kernel drops them).
    pub xdp_ready: u8,
    pub _pad: u8,
}

/// The `ENDPOINTS` slot of container address `addr` (network order): its
/// low bits. Docker hands out a bridge's addresses from the bottom of its
/// range, so two of its containers share a slot only beyond the subnet's
/// first `MAX_ENDPOINTS` addresses.
#[inline(always)]
pub fn endpoint_slot(addr: u32) -> u32 {
    u32::from_be(addr) & (MAX_ENDPOINTS - 1)
}

/// Value of `PEER_SUBNETS` (LPM trie keyed by the peer's container subnet).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerEntry {
    /// The peer host's uplink address: the next hop for the subnet.
    pub via: u32,
    /// Index into `PEER_TRAFFIC`, allocated by dr-ctl, unique among live peers.
    pub slot: u32,
}

/// Packet and byte counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

impl Traffic {
    #[inline(always)]
    pub fn add(&mut self, bytes: u64) {
        self.packets += 1;
        self.bytes += bytes;
    }

    pub fn merge(&mut self, other: &Traffic) {
        self.packets += other.packets;
        self.bytes += other.bytes;
    }
}

/// Value of `PEER_TRAFFIC` (per-CPU array indexed by `PeerEntry::slot`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerTraffic {
    /// Sent by local containers to the peer's subnet.
    pub to_peer: Traffic,
    /// Received from the peer's subnet for local containers.
    pub from_peer: Traffic,
}

/// `NodeState::owned` bit: `dr-ctl up` created the bridge, `down` deletes it.
pub const OWNED_BRIDGE: u32 = 1;
/// `NodeState::owned` bit: `dr-ctl up` added the gateway address to the bridge.
pub const OWNED_ADDRESS: u32 = 2;

/// Single entry of the `NODE_STATE` array: dr-ctl's bookkeeping about the
/// node, which no program reads. Declared in the object with the programs'
/// maps so that it is created, pinned, migrated and removed with them: it
/// lives exactly as long as the datapath it describes, survives dr-ctl being
/// killed (one map update is all or nothing) and any upgrade.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeState {
    /// Non-zero once dr-ctl has written the entry. Zero in a map this version
    /// created over an older dr's pins, whose bookkeeping is still in
    /// `DatapathConfig`'s retired fields.
    pub recorded: u32,
    /// `OWNED_*` bits: what `up` created and `down` must remove.
    pub owned: u32,
    /// Hash of the eBPF object that dr-ctl attached: a different binary's
    /// `up` swaps the programs in place (upgrade without a traffic gap).
    pub object_hash: u64,
    /// How the XDP program is attached: `XDP_OFF`, `XDP_NATIVE` or `XDP_GENERIC`.
    pub xdp_mode: u8,
    /// Level of the datapath's aya-log events (0: off, 1 error .. 5 trace),
    /// fixed when the programs are loaded (`up --datapath-log`).
    pub datapath_log: u8,
    pub _pad: [u8; 6],
}

/// Single entry of the `DATAPATH_CONFIG` array, written by `dr-ctl up`:
/// what the programs read. dr-ctl's own bookkeeping is in [`NodeState`];
/// the `retired_*` fields held it before and keep their bytes, since a
/// pinned type only grows at its end.
///
/// Kept in a map rather than in `.rodata` so that it is pinned with the other
/// state: a later `dr-ctl` finds the host's configuration there, and the
/// programs see the configuration without being reloaded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Non-zero once `dr-ctl up` has written the entry; the programs pass
    /// everything until then.
    pub enabled: u32,
    /// Local container subnet (docker0's network), network order, host bits clear.
    pub local_net: u32,
    /// Netmask of the local subnet, network order (dr-ctl reads the prefix
    /// length from it).
    pub local_mask: u32,
    /// Retired (the local prefix length before it was read from
    /// `local_mask`): written as zero.
    pub retired_prefix_len: u32,
    /// docker0's address (Docker's `bip`), network order.
    pub gateway: u32,
    pub bridge_ifindex: u32,
    pub uplink_ifindex: u32,
    /// The uplink's IPv4 address, network order.
    pub uplink_addr: u32,
    /// Retired (`NodeState::owned` before `NODE_STATE`): written as zero;
    /// read only to carry an older dr's bookkeeping into `NODE_STATE`.
    pub retired_owned: u32,
    /// Non-zero when container traffic to destinations outside the cluster
    /// (and outside `NAT_EXCLUDE`) leaves with `uplink_addr` as source.
    pub nat_enabled: u32,
    /// Source ports (and ICMP echo identifiers) the SNAT allocates, host order, inclusive.
    pub nat_port_min: u32,
    pub nat_port_max: u32,
    /// Idle timeouts of translations, in seconds, by state.
    pub nat_timeouts: nat::Timeouts,
    /// docker0's MAC address: the source of frames the XDP path delivers.
    pub bridge_mac: [u8; 6],
    /// Retired like `retired_owned`: `NodeState::xdp_mode`.
    pub retired_xdp_mode: u8,
    /// Retired like `retired_owned`: `NodeState::datapath_log`.
    pub retired_datapath_log: u8,
    /// Retired like `retired_owned`: `NodeState::object_hash`.
    pub retired_object_hash: u64,
    // Fields below were added after the first release: new fields go at the
    // end, so that an older configuration is a prefix of this one (see
    // `dr-ctl`'s map migration).
    /// The uplink's MTU: container packets that do not fit it are answered
    /// with ICMP fragmentation needed (DF) or dropped (no DF) instead of
    /// being redirected, since `bpf_redirect_neigh` skips the forwarding
    /// path's MTU check. Written by `dr-ctl up`, refreshed by `dr-ctl sync`;
    /// 0 (unknown) checks nothing.
    pub uplink_mtu: u32,
    /// The smallest prefix holding every peer subnet, in `peer_span`'s
    /// encoding (once padding: 0 holds every address). Written by dr-ctl
    /// wherever it changes the peers: wider before a peer is added,
    /// narrower after one is removed.
    pub peer_span: u32,
    /// The programs' clock, measured by `dr-ctl up` once per boot (see
    /// `clock`); unmeasured (an older dr's configuration), they read the
    /// kernel's.
    pub clock: clock::JiffiesClock,
}

pub const XDP_OFF: u8 = 0;
pub const XDP_NATIVE: u8 = 1;
pub const XDP_GENERIC: u8 = 2;

// Types stored in pinned maps are an ABI between versions of dr: every
// field explicit (no implicit padding), and a type only grows at its end
// (`dr-ctl` migrates a grown map in place, see its migrate/). A changed size
// here must be a deliberate, appended field.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<DatapathConfig>() == 120);
    // The retired fields keep their places: an older dr's bookkeeping is
    // read from there (dr-ctl's node state).
    use core::mem::offset_of;
    assert!(offset_of!(DatapathConfig, retired_prefix_len) == 12);
    assert!(offset_of!(DatapathConfig, retired_owned) == 32);
    assert!(offset_of!(DatapathConfig, retired_xdp_mode) == 86);
    assert!(offset_of!(DatapathConfig, retired_datapath_log) == 87);
    assert!(offset_of!(DatapathConfig, retired_object_hash) == 88);
    assert!(offset_of!(DatapathConfig, uplink_mtu) == 96);
    assert!(offset_of!(DatapathConfig, peer_span) == 100);
    assert!(offset_of!(DatapathConfig, clock) == 104);
    assert!(size_of::<clock::JiffiesClock>() == 16);
    assert!(size_of::<clock::ClockSample>() == 16);
    assert!(size_of::<NodeState>() == 24);
    assert!(size_of::<PeerEntry>() == 8);
    assert!(size_of::<Trace>() == 24);
    // One bit per counter in `Trace::counters`.
    assert!(COUNTER_COUNT <= 64);
    assert!(size_of::<Traffic>() == 16);
    assert!(size_of::<PeerTraffic>() == 32);
    assert!(size_of::<Endpoint>() == 16);
    assert!(offset_of!(Endpoint, ifindex) == 4);
    assert!(offset_of!(Endpoint, xdp_ready) == 14);
    // A slot is its address's low bits.
    assert!(MAX_ENDPOINTS.is_power_of_two());
    assert!(size_of::<nat::FlowKey>() == 16);
    assert!(offset_of!(nat::FlowKey, proto) == 12);
    assert!(offset_of!(nat::FlowKey, _pad2) == 14);
    // The next hop was appended to the 32 bytes of the window's version.
    assert!(size_of::<nat::Flow>() == 40);
    assert!(offset_of!(nat::Flow, window_known) == 31);
    assert!(offset_of!(nat::Flow, next_hop) == 32);
    assert!(offset_of!(nat::Flow, next_hop_period) == 36);
    assert!(size_of::<nat::Teardown>() == 4);
    assert!(size_of::<nat::ReverseKey>() == 12);
    assert!(offset_of!(nat::ReverseKey, proto) == 8);
    assert!(offset_of!(nat::ReverseKey, _pad2) == 10);
    assert!(size_of::<nat::Origin>() == 8);
    // The reverse entry was an `Origin` alone: the time was appended.
    assert!(size_of::<nat::Reverse>() == 16);
    assert!(offset_of!(nat::Reverse, reply_seen_ns) == 8);
    assert!(size_of::<nat::InboundFlow>() == 16);
    assert!(offset_of!(nat::InboundFlow, delivered_by) == 8);
    assert!(offset_of!(nat::InboundFlow, host_port) == 10);
    assert!(size_of::<nat::PublishedKey>() == 4);
    assert!(size_of::<nat::Timeouts>() == 32);
};

impl DatapathConfig {
    /// Whether `addr` (network order) lies in the local container subnet.
    #[inline(always)]
    pub fn is_local(&self, addr: u32) -> bool {
        addr & self.local_mask == self.local_net
    }

    /// Whether `addr` (network order) can be a container's: in the local
    /// subnet, and not its network, gateway (the host's) or broadcast address.
    #[inline(always)]
    pub fn is_container(&self, addr: u32) -> bool {
        self.is_local(addr)
            && addr != self.gateway
            && addr != self.local_net
            && addr != self.local_net | !self.local_mask
    }
}

/// Declares the counters once: the enum (its values index the per-CPU
/// `COUNTERS` array, an ABI between versions of dr), `ALL` in index order,
/// each one's name and `COUNTER_COUNT`.
macro_rules! counters {
    ($($(#[$doc:meta])* $variant:ident = $index:literal => $name:literal,)*) => {
        /// Index into the per-CPU `COUNTERS` array.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $($(#[$doc])* $variant = $index,)*
        }

        impl Counter {
            pub const ALL: [Counter; [$($index),*].len()] = [$(Counter::$variant),*];

            /// Stable name used in `dr-ctl status` and its JSON output.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)*
                }
            }
        }
    };
}

counters! {
    /// Container packets redirected to a peer host.
    ToPeer = 0 => "to_peer",
    /// Packets from a peer's containers delivered to docker0.
    FromPeer = 1 => "from_peer",
    /// Packets left to the kernel stack unchanged.
    Passed = 2 => "passed",
    /// IPv4 packets with a truncated or malformed header, left to the kernel.
    Malformed = 3 => "malformed",
    /// Dropped: a container sent a source address outside the local subnet.
    DropSpoofed = 4 => "drop_spoofed_source",
    /// Dropped: TTL would reach zero while forwarding.
    DropTtlExceeded = 5 => "drop_ttl_exceeded",
    /// Dropped: the redirect helper failed (e.g. the uplink vanished).
    DropRedirectFailed = 6 => "drop_redirect_failed",
    /// Container packets translated and sent to an external destination.
    NatOut = 7 => "nat_out",
    /// Replies translated back and delivered to a container.
    NatIn = 8 => "nat_in",
    /// ICMP errors about a translated flow, translated back (inner header too).
    NatIcmpErrorIn = 9 => "nat_icmp_error_in",
    /// New translations (connection table entries) created.
    NatCreated = 10 => "nat_created",
    /// Expired translations found and reclaimed by the datapath.
    NatExpired = 11 => "nat_expired",
    /// Expired translations removed by `dr-ctl nat gc` (through `dr_nat_sweep`).
    NatExpiredGc = 12 => "nat_expired_gc",
    /// Translations found half-evicted from the full (LRU) table.
    NatEvicted = 13 => "nat_evicted",
    /// Dropped: no free source port for the flow's destination within the retries.
    DropNatPortsExhausted = 14 => "drop_nat_ports_exhausted",
    /// Dropped: the connection table refused an insert.
    DropNatTableFull = 15 => "drop_nat_table_full",
    /// Dropped: an IP fragment to an external destination (ports unknown).
    DropNatFragment = 16 => "drop_nat_fragment",
    /// Peer traffic the XDP program sent straight to a container's veth
    /// (also counted in `from_peer`).
    XdpRedirect = 17 => "xdp_redirect",
    /// Frames the XDP program left to TC (not for a known local endpoint).
    XdpPass = 18 => "xdp_pass",
    /// Container packets answering a connection the container did not start
    /// (a published port, a connection routed in): left to the kernel, whose
    /// conntrack undoes its own translation.
    InboundReply = 19 => "inbound_reply",
    /// The host's own packets for a peer subnet, sent to the peer host.
    HostToPeer = 20 => "host_to_peer",
    /// Container packets too big for the uplink MTU with DF set, answered
    /// with ICMP fragmentation needed (the uplink MTU) back to the container.
    IcmpFragNeeded = 21 => "icmp_frag_needed",
    /// Container packets too big for the uplink MTU without DF: dr does not
    /// fragment; they are answered like the DF ones, and their senders
    /// fragment to the uplink MTU from then on.
    IcmpFragNeededNoDf = 22 => "icmp_frag_needed_no_df",
    /// IP fragments to the uplink address with SNAT on, left to the host
    /// stack: dr does not reassemble, so fragmented replies to a translated
    /// flow (large UDP answers such as EDNS0 DNS) do not reach the container.
    /// The host's own fragmented traffic is counted too.
    NatFragmentIn = 23 => "nat_fragment_in",
    /// A remote RST or FIN outside the container's receive window: delivered
    /// (the container's stack judges it too) without closing the translation,
    /// so that an off-path sender cannot free the port of a live connection.
    NatTeardownOutOfWindow = 24 => "nat_teardown_out_of_window",
    /// Packets to a published port on the uplink's address (and ICMP errors
    /// about its answers) that dr translated to the container and delivered,
    /// instead of the kernel's DNAT.
    PublishedIn = 25 => "published_in",
    /// A published port's answers that dr translated back to the uplink's
    /// address and port and sent out of the uplink.
    PublishedOut = 26 => "published_out",
}

// `ALL[i]` is counter `i`: the indices are 0..COUNTER_COUNT without gaps.
const _: () = {
    let mut i = 0;
    while i < Counter::ALL.len() {
        assert!(Counter::ALL[i] as usize == i);
        i += 1;
    }
};

/// Number of entries in `COUNTERS`.
pub const COUNTER_COUNT: u32 = Counter::ALL.len() as u32;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] of integer fields with no implicit padding.
    unsafe impl aya::Pod for super::PeerEntry {}
    unsafe impl aya::Pod for super::Trace {}
    unsafe impl aya::Pod for super::Traffic {}
    unsafe impl aya::Pod for super::PeerTraffic {}
    unsafe impl aya::Pod for super::DatapathConfig {}
    unsafe impl aya::Pod for super::NodeState {}
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::nat::FlowKey {}
    unsafe impl aya::Pod for super::nat::Flow {}
    unsafe impl aya::Pod for super::nat::ReverseKey {}
    unsafe impl aya::Pod for super::nat::Origin {}
    unsafe impl aya::Pod for super::nat::Reverse {}
    unsafe impl aya::Pod for super::nat::InboundFlow {}
    unsafe impl aya::Pod for super::nat::PublishedKey {}
}
