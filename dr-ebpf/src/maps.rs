//! The maps, pinned by name under dr-ctl's per-network-namespace directory,
//! and the small accessors the programs use on them.
use crate::dry_run::{dry_run, record_counter};
use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use dr_common::{
    endpoint_slot,
    nat::{
        Flow, FlowKey, InboundFlow, Origin, PublishedKey, Reverse, ReverseKey, DEFAULT_TABLE_SIZE,
    },
    peer_span, Counter, DatapathConfig, Endpoint, NodeState, PeerEntry, PeerTraffic, Traffic,
    COUNTER_COUNT, DEFAULT_MAX_PEERS, MAX_ENDPOINTS, MAX_EXCLUSIONS, MAX_PUBLISHED_PORTS,
};

/// Peer container subnet -> the peer host that owns it. Written by `dr-ctl peer`.
/// This map, `PEER_TRAFFIC` and `PEER_HOSTS` are sized by `dr-ctl up --max-peers`
/// (these sizes are the default's; see dr-ctl's `datapath::load`).
#[map]
pub static PEER_SUBNETS: LpmTrie<u32, PeerEntry> = LpmTrie::pinned(DEFAULT_MAX_PEERS + 1, 0);

/// Per-peer traffic, indexed by `PeerEntry::slot`. Zeroed by dr-ctl when a slot is allocated.
#[map]
pub static PEER_TRAFFIC: PerCpuArray<PeerTraffic> = PerCpuArray::pinned(DEFAULT_MAX_PEERS, 0);

/// This host's addressing and interfaces. Written by `dr-ctl up`.
#[map]
pub static DATAPATH_CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);

/// dr-ctl's bookkeeping about the node. No program reads it: it is declared
/// here to be pinned, migrated and removed with the maps above.
#[map]
pub static NODE_STATE: Array<NodeState> = Array::pinned(1, 0);

/// Verdict counters, indexed by `Counter`.
#[map]
pub static COUNTERS: PerCpuArray<Traffic> = PerCpuArray::pinned(COUNTER_COUNT, 0);

/// Destinations whose traffic keeps the container's source address: the
/// cluster CIDR and `--no-masquerade` ranges. Written by `dr-ctl up`.
#[map]
pub static NAT_EXCLUDE: LpmTrie<u32, u8> = LpmTrie::pinned(MAX_EXCLUSIONS, 0);

/// SNAT translations by the container's flow. LRU: when full, the least
/// recently used (idle or dead) translations make room. Size set by dr-ctl.
#[map]
pub static NAT_FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::pinned(DEFAULT_TABLE_SIZE, 0);

/// SNAT translations by the replies' view, pointing back to the container.
/// Not LRU: an eviction would free the port of a live flow for another
/// container's claim, and its replies would go there. Entries go when their
/// flow is found dead (by the programs or `dr-ctl nat gc`); when full, new
/// flows are refused (`drop_nat_table_full`) until then.
#[map]
pub static NAT_REVERSE: HashMap<ReverseKey, Reverse> = HashMap::pinned(DEFAULT_TABLE_SIZE, 0);

/// Local containers dr delivers to directly (XDP, and TC's `to_container`):
/// by slot ([`endpoint_slot`]), the container's address, docker0 port and
/// MAC. Written by dr-ctl from the neighbour table and the bridge FDB.
#[map]
pub static ENDPOINTS: Array<Endpoint> = Array::pinned(MAX_ENDPOINTS, 0);

/// The docker0 ports of `ENDPOINTS`, by ifindex: XDP redirects through this
/// map, TC looks ports up in it, and the kernel deletes entries with their
/// device. A container restarted on a new veth is thus never sent to its
/// old, gone port: its frames go through docker0 until dr-ctl learns the
/// new one.
#[map]
pub static ENDPOINT_PORTS: DevMapHash = DevMapHash::pinned(MAX_ENDPOINTS, 0);

/// The endpoint of local container `addr` (network order), if its slot
/// names it and its docker0 port still exists.
#[inline(always)]
pub fn endpoint(addr: u32) -> Option<Endpoint> {
    let endpoint = *ENDPOINTS.get(endpoint_slot(addr))?;
    if endpoint.addr != addr {
        return None;
    }
    ENDPOINT_PORTS.get_ifindex(endpoint.ifindex)?;
    Some(endpoint)
}

/// Peer hosts' own addresses (the `via` of some peer subnet): their
/// processes reach local containers, and containers answer them, directly.
/// Kept by dr-ctl alongside `PEER_SUBNETS`.
#[map]
pub static PEER_HOSTS: HashMap<u32, u32> = HashMap::pinned(2 * DEFAULT_MAX_PEERS, 0);

/// Flows into local containers that the containers did not start, keyed by
/// their answers as they leave the container: see `inbound.rs`. Sized like
/// the SNAT tables by dr-ctl.
#[map]
pub static INBOUND_FLOWS: LruHashMap<FlowKey, InboundFlow> =
    LruHashMap::pinned(DEFAULT_TABLE_SIZE, 0);

/// Ports published on the uplink's address that dr translates itself:
/// `{port, proto}` -> the container's address and port (see
/// `nat/published.rs`). Written by `dr-ctl sync` from Docker's DNAT rules.
#[map]
pub static PUBLISHED_PORTS: HashMap<PublishedKey, Origin> = HashMap::pinned(MAX_PUBLISHED_PORTS, 0);

/// The configuration, once `dr-ctl up` has enabled it.
#[inline(always)]
pub fn config() -> Option<&'static DatapathConfig> {
    DATAPATH_CONFIG.get(0).filter(|c| c.enabled != 0)
}

/// The peer whose subnet holds `addr` (network order), longest prefix first.
/// An address outside the peer span is no peer's: no trie walk for it.
#[inline(always)]
pub fn peer_for(cfg: &DatapathConfig, addr: u32) -> Option<&'static PeerEntry> {
    if !peer_span::holds(cfg.peer_span, addr) {
        return None;
    }
    PEER_SUBNETS.get(Key::new(32, addr))
}

#[inline(always)]
pub fn count(counter: Counter, bytes: u64) {
    if dry_run() {
        return record_counter(counter);
    }
    if let Some(t) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU value, no other writer on this CPU while we run.
        unsafe { (*t).add(bytes) }
    }
}

/// Whether `addr` (network order) is a peer host's own address.
#[inline(always)]
pub fn is_peer_host(addr: u32) -> bool {
    // SAFETY: only the presence of the value is read.
    unsafe { PEER_HOSTS.get(addr) }.is_some()
}

/// Per-peer traffic slot, for the caller to add to one direction; none in
/// a dry run.
#[inline(always)]
pub fn peer_traffic(peer: &PeerEntry) -> Option<&'static mut PeerTraffic> {
    if dry_run() {
        return None;
    }
    // SAFETY: per-CPU value, no other writer on this CPU while we run.
    PEER_TRAFFIC
        .get_ptr_mut(peer.slot)
        .map(|p| unsafe { &mut *p })
}
