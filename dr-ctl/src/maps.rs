//! Typed access to the pinned maps of one network namespace.
use std::{collections::BTreeSet, path::Path};

use aya::{
    maps::{
        lpm_trie::Key,
        xdp::{DevMapHash, XdpMapError},
        Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues,
    },
    util::nr_cpus,
};
use dr_common::{
    map_names,
    nat::{Flow, FlowKey, Origin, PublishedKey, Reverse, ReverseKey, Timeouts},
    peer_span, Counter, DatapathConfig, Endpoint, PeerEntry, PeerTraffic, Traffic, MAX_ENDPOINTS,
    MAX_PUBLISHED_PORTS,
};
use ipnet::Ipv4Net;

use crate::{
    endpoints,
    error::{io_context, Error, Result},
    migrate,
    peer::Peer,
    published::PublishedPort,
    subnet::{from_map_addr, to_map_addr},
};

/// A peer as stored in `PEER_SUBNETS`, with its `PEER_TRAFFIC` slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredPeer {
    pub peer: Peer,
    pub slot: u32,
}

pub struct Maps {
    peers: LpmTrie<MapData, u32, PeerEntry>,
    peer_traffic: PerCpuArray<MapData, PeerTraffic>,
    config: Array<MapData, DatapathConfig>,
    counters: PerCpuArray<MapData, Traffic>,
    nat_exclude: LpmTrie<MapData, u32, u8>,
    nat_flows: HashMap<MapData, FlowKey, Flow>,
    nat_reverse: HashMap<MapData, ReverseKey, Reverse>,
    endpoints: Array<MapData, Endpoint>,
    endpoint_ports: DevMapHash<MapData>,
    peer_hosts: HashMap<MapData, u32, u32>,
    /// None until an `up` of this version has created it.
    published_ports: Option<HashMap<MapData, PublishedKey, Origin>>,
    peer_capacity: u32,
}

/// Whether `dir` holds pinned maps at all (of any version of dr).
pub fn pinned(dir: &Path) -> bool {
    dir.join(map_names::DATAPATH_CONFIG).exists() || migrate::pending(dir)
}

/// The capacity of each pinned SNAT table in `dir`.
pub fn nat_table_size(dir: &Path) -> Result<u32> {
    Ok(aya::maps::MapInfo::from_pin(dir.join(map_names::NAT_FLOWS))?.max_entries())
}

/// How many peers the maps pinned in `dir` hold (`up --max-peers` when they
/// were created), if they are pinned.
pub fn peer_capacity(dir: &Path) -> Result<Option<u32>> {
    let path = dir.join(map_names::PEER_TRAFFIC);
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(aya::maps::MapInfo::from_pin(path)?.max_entries()))
}

fn open(dir: &Path, name: &str) -> Result<Map> {
    let data = MapData::from_pin(dir.join(name))?;
    Ok(Map::from_map_data(data)?)
}

fn key(subnet: Ipv4Net) -> Key<u32> {
    Key::new(subnet.prefix_len().into(), to_map_addr(subnet.network()))
}

fn subnet_of(k: &Key<u32>) -> Result<Ipv4Net> {
    Ipv4Net::new(from_map_addr(k.data()), k.prefix_len() as u8)
        .map_err(|_| Error::Internal(format!("corrupt trie key /{}", k.prefix_len())))
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

fn cpus() -> Result<usize> {
    nr_cpus().map_err(|(what, source)| Error::Io {
        context: format!("reading {what}"),
        source,
    })
}

/// The peer span holding `subnets`.
fn span_of(subnets: impl Iterator<Item = Ipv4Net>) -> u32 {
    peer_span::of(subnets.map(|s| (u32::from(s.network()), s.prefix_len())))
}

impl Maps {
    /// Opens the maps pinned in `dir`; `NotUp` if there are none.
    pub fn open(dir: &Path) -> Result<Self> {
        if !pinned(dir) {
            return Err(Error::NotUp);
        }
        let from_another_version = || {
            Error::Conflict(format!(
                "the maps pinned in {} come from another version of dr: run `dr-ctl up` \
                 (or `apply`) with this version to migrate them in place",
                dir.display()
            ))
        };
        Self::open_typed(dir).map_err(|e| match migrate::outdated(dir) {
            Ok(names) if !names.is_empty() || migrate::pending(dir) => from_another_version(),
            _ => e,
        })
    }

    fn open_typed(dir: &Path) -> Result<Self> {
        Ok(Self {
            peers: open(dir, map_names::PEER_SUBNETS)?.try_into()?,
            peer_traffic: open(dir, map_names::PEER_TRAFFIC)?.try_into()?,
            config: open(dir, map_names::DATAPATH_CONFIG)?.try_into()?,
            counters: open(dir, map_names::COUNTERS)?.try_into()?,
            nat_exclude: open(dir, map_names::NAT_EXCLUDE)?.try_into()?,
            nat_flows: open(dir, map_names::NAT_FLOWS)?.try_into()?,
            nat_reverse: open(dir, map_names::NAT_REVERSE)?.try_into()?,
            endpoints: open(dir, map_names::ENDPOINTS)?.try_into()?,
            endpoint_ports: open(dir, map_names::ENDPOINT_PORTS)?.try_into()?,
            peer_hosts: open(dir, map_names::PEER_HOSTS)?.try_into()?,
            published_ports: match dir.join(map_names::PUBLISHED_PORTS).exists() {
                true => Some(open(dir, map_names::PUBLISHED_PORTS)?.try_into()?),
                false => None,
            },
            peer_capacity: aya::maps::MapInfo::from_pin(dir.join(map_names::PEER_TRAFFIC))?
                .max_entries(),
        })
    }

    pub fn config(&self) -> Result<DatapathConfig> {
        Ok(self.config.get(&0, 0)?)
    }

    /// The configuration of a datapath that is up; `NotUp` otherwise.
    pub fn enabled_config(&self) -> Result<DatapathConfig> {
        let config = self.config()?;
        if config.enabled == 0 {
            return Err(Error::NotUp);
        }
        Ok(config)
    }

    pub fn set_config(&mut self, config: &DatapathConfig) -> Result<()> {
        Ok(self.config.set(0, config, 0)?)
    }

    pub fn peers(&self) -> Result<Vec<StoredPeer>> {
        let mut peers = Vec::new();
        for item in self.peers.iter() {
            let (k, v) = item?;
            let peer = Peer {
                subnet: subnet_of(&k)?,
                via: from_map_addr(v.via),
            };
            peers.push(StoredPeer { peer, slot: v.slot });
        }
        peers.sort_by_key(|p| (p.peer.subnet.network(), p.peer.subnet.prefix_len()));
        Ok(peers)
    }

    /// How many peers the maps hold (`up --max-peers`).
    pub fn peer_capacity(&self) -> u32 {
        self.peer_capacity
    }

    /// Inserts or replaces peers. Each new peer gets the lowest free traffic
    /// slot, zeroed before the peer becomes visible to the datapath. Peers
    /// beyond the capacity are refused before anything is written.
    pub fn upsert_peers(&mut self, peers: &[Peer]) -> Result<()> {
        let existing = self.peers()?;
        let slots: std::collections::HashMap<Ipv4Net, u32> =
            existing.iter().map(|p| (p.peer.subnet, p.slot)).collect();
        let new: BTreeSet<Ipv4Net> = peers
            .iter()
            .map(|p| p.subnet)
            .filter(|s| !slots.contains_key(s))
            .collect();
        let capacity = self.peer_capacity;
        if existing.len() + new.len() > capacity as usize {
            return Err(Error::Conflict(format!(
                "peer table is full: {} peers and {} new ones do not fit its {capacity}; \
                 `dr-ctl down`, then `dr-ctl up --max-peers N` sets a larger capacity",
                existing.len(),
                new.len()
            )));
        }
        // Wider first: the datapath looks up no address outside the span.
        let subnets = existing.iter().map(|p| p.peer.subnet);
        self.set_peer_span(subnets.chain(new.iter().copied()))?;
        let mut used: Vec<u32> = existing.iter().map(|p| p.slot).collect();
        used.sort_unstable();
        let mut free = (0..capacity).filter(|s| used.binary_search(s).is_err());
        let cpus = cpus()?;
        for &Peer { subnet, via } in peers {
            let slot = match slots.get(&subnet) {
                Some(slot) => *slot,
                None => {
                    let slot = free.next().ok_or_else(|| {
                        Error::Internal(format!("no free traffic slot below {capacity}"))
                    })?;
                    let zero = PerCpuValues::try_from(vec![PeerTraffic::default(); cpus])
                        .map_err(io_context("building per-CPU values"))?;
                    self.peer_traffic.set(slot, zero, 0)?;
                    slot
                }
            };
            let entry = PeerEntry {
                via: to_map_addr(via),
                slot,
            };
            self.peers.insert(&key(subnet), entry, 0)?;
        }
        self.sync_peer_hosts()
    }

    pub fn remove_peers(&mut self, subnets: &[Ipv4Net]) -> Result<()> {
        for subnet in subnets {
            self.peers.remove(&key(*subnet))?;
        }
        // Narrower only once the peers are gone.
        let left = self.peers()?;
        self.set_peer_span(left.iter().map(|p| p.peer.subnet))?;
        self.sync_peer_hosts()
    }

    /// The peer span (see `dr_common::peer_span`) of the stored peers.
    pub fn peer_span(&self) -> Result<u32> {
        Ok(span_of(self.peers()?.iter().map(|p| p.peer.subnet)))
    }

    /// Writes the span of `subnets` into the configuration, if it changed.
    fn set_peer_span(&mut self, subnets: impl Iterator<Item = Ipv4Net>) -> Result<()> {
        let config = self.config()?;
        let peer_span = span_of(subnets);
        if config.peer_span != peer_span {
            self.set_config(&DatapathConfig {
                peer_span,
                ..config
            })?;
        }
        Ok(())
    }

    /// Makes `PEER_HOSTS` the set of the peers' `via` addresses, adding
    /// before removing.
    pub fn sync_peer_hosts(&mut self) -> Result<()> {
        let wanted: BTreeSet<u32> = self
            .peers()?
            .iter()
            .map(|p| to_map_addr(p.peer.via))
            .collect();
        let current: BTreeSet<u32> = self
            .peer_hosts
            .keys()
            .collect::<std::result::Result<_, _>>()?;
        for addr in wanted.difference(&current) {
            self.peer_hosts.insert(addr, 1, 0)?;
        }
        for addr in current.difference(&wanted) {
            ignore_missing(self.peer_hosts.remove(addr))?;
        }
        Ok(())
    }

    /// A peer's traffic summed over CPUs.
    pub fn peer_traffic(&self, slot: u32) -> Result<PeerTraffic> {
        let mut sum = PeerTraffic::default();
        for cpu in self.peer_traffic.get(&slot, 0)?.iter() {
            sum.to_peer.merge(&cpu.to_peer);
            sum.from_peer.merge(&cpu.from_peer);
        }
        Ok(sum)
    }

    /// All verdict counters summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(Counter, Traffic)>> {
        Counter::ALL
            .iter()
            .map(|c| {
                let mut sum = Traffic::default();
                for cpu in self.counters.get(&(*c as u32), 0)?.iter() {
                    sum.merge(cpu);
                }
                Ok((*c, sum))
            })
            .collect()
    }

    /// The SNAT exclusions (cluster CIDR and `--no-masquerade`), sorted.
    pub fn exclusions(&self) -> Result<Vec<Ipv4Net>> {
        let mut out = self
            .nat_exclude
            .keys()
            .map(|k| subnet_of(&k?))
            .collect::<Result<Vec<_>>>()?;
        out.sort();
        Ok(out)
    }

    /// Makes the exclusions exactly `wanted`: adds before it removes, so a
    /// range in both the old and new set is never briefly translated.
    pub fn set_exclusions(&mut self, wanted: &[Ipv4Net]) -> Result<()> {
        for net in wanted {
            self.nat_exclude.insert(&key(*net), 1, 0)?;
        }
        for net in self.exclusions()? {
            if !wanted.contains(&net) {
                self.nat_exclude.remove(&key(net))?;
            }
        }
        Ok(())
    }

    /// The local containers dr delivers to directly (TC and XDP), by address.
    pub fn endpoints(&self) -> Result<Vec<Endpoint>> {
        let mut out: Vec<Endpoint> = self.endpoint_slots()?.into_iter().flatten().collect();
        out.sort_by_key(|e| u32::from_be(e.addr));
        Ok(out)
    }

    /// Every slot of `ENDPOINTS`, `None` where empty.
    fn endpoint_slots(&self) -> Result<Vec<Option<Endpoint>>> {
        (0..MAX_ENDPOINTS)
            .map(|slot| {
                let e = self.endpoints.get(&slot, 0)?;
                Ok((e.addr != 0).then_some(e))
            })
            .collect()
    }

    /// Makes the endpoints `wanted`, but for a container whose slot
    /// ([`dr_common::endpoint_slot`]) another one holds (the one that held
    /// it before, else the first in `wanted`) or whose port is gone: its
    /// packets go through docker0. Returns the endpoints stored.
    pub fn set_endpoints(&mut self, wanted: &[Endpoint]) -> Result<Vec<Endpoint>> {
        let current = self.endpoint_slots()?;
        let mut target = endpoints::placement(&current, wanted);
        // The port first: a slot is used only while its port is in
        // `ENDPOINT_PORTS`, from which the kernel removes deleted devices.
        for slot in target.iter_mut() {
            let Some(ep) = slot else { continue };
            match self.endpoint_ports.insert(ep.ifindex, ep.ifindex, None, 0) {
                Ok(()) => {}
                // Gone since it was read (a container stopping): not an endpoint.
                Err(XdpMapError::MapError(MapError::SyscallError(e)))
                    if e.io_error.raw_os_error() == Some(libc::ENODEV) =>
                {
                    *slot = None
                }
                Err(XdpMapError::MapError(e)) => return Err(e.into()),
                Err(e) => return Err(Error::Unsupported(e.to_string())),
            }
        }
        for (slot, (now, next)) in current.iter().zip(&target).enumerate() {
            if now != next {
                self.store_endpoint_slot(slot as u32, *now, *next)?;
            }
        }
        let stored: Vec<Endpoint> = target.into_iter().flatten().collect();
        let ports: BTreeSet<u32> = stored.iter().map(|e| e.ifindex).collect();
        let stale: Vec<u32> = self
            .endpoint_ports
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !ports.contains(k))
            .collect();
        for ifindex in stale {
            ignore_missing(self.endpoint_ports.remove(ifindex))?;
        }
        Ok(stored)
    }

    /// Changes slot `slot` from `now` to `next` so that the datapath, which
    /// may read it halfway through a write (an array's value is copied in
    /// place, not swapped as a hash table's is), sees the old entry, an
    /// empty slot, or the new entry, never a mix: each write changes the
    /// address alone, or leaves it 0.
    fn store_endpoint_slot(
        &mut self,
        slot: u32,
        now: Option<Endpoint>,
        next: Option<Endpoint>,
    ) -> Result<()> {
        if let Some(now) = now {
            self.endpoints.set(slot, Endpoint { addr: 0, ..now }, 0)?;
        }
        if let Some(next) = next {
            self.endpoints.set(slot, Endpoint { addr: 0, ..next }, 0)?;
            self.endpoints.set(slot, next, 0)?;
        }
        Ok(())
    }

    /// The published ports the datapath translates.
    pub fn published_ports(&self) -> Result<Vec<PublishedPort>> {
        let Some(map) = &self.published_ports else {
            return Ok(Vec::new());
        };
        let mut ports = Vec::new();
        for entry in map.iter() {
            let (key, target) = entry?;
            ports.extend(PublishedPort::from_map(&key, &target));
        }
        ports.sort_by_key(|p| (p.host_port, p.proto.number()));
        Ok(ports)
    }

    /// Makes `PUBLISHED_PORTS` hold exactly `wanted`: new and changed
    /// entries first, then the ones no longer wanted removed.
    pub fn set_published_ports(&mut self, wanted: &[PublishedPort]) -> Result<()> {
        if wanted.len() > MAX_PUBLISHED_PORTS as usize {
            return Err(Error::Conflict(format!(
                "more than {MAX_PUBLISHED_PORTS} published ports"
            )));
        }
        let Some(map) = &mut self.published_ports else {
            return Err(Error::Conflict(
                "the datapath has no published port table yet: run `dr-ctl up` with this version"
                    .into(),
            ));
        };
        let wanted: Vec<(PublishedKey, Origin)> =
            wanted.iter().map(PublishedPort::to_map).collect();
        for (key, target) in &wanted {
            map.insert(key, target, 0)?;
        }
        let stale: Vec<PublishedKey> = map
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !wanted.iter().any(|(w, _)| w == k))
            .collect();
        for key in stale {
            ignore_missing(map.remove(&key))?;
        }
        Ok(())
    }

    /// Every translation in the table, live or not.
    pub fn nat_flows(&self) -> Result<Vec<(FlowKey, Flow)>> {
        Ok(self
            .nat_flows
            .iter()
            .collect::<std::result::Result<_, _>>()?)
    }

    /// Every reverse entry, live or not.
    pub fn nat_reverse_entries(&self) -> Result<Vec<(ReverseKey, Reverse)>> {
        Ok(self
            .nat_reverse
            .iter()
            .collect::<std::result::Result<_, _>>()?)
    }

    /// Every translation in the table, live or not, with its last reply's
    /// time from its reverse half.
    pub fn nat_translations(&self) -> Result<Vec<Translation>> {
        let reverse: std::collections::HashMap<_, _> =
            self.nat_reverse_entries()?.into_iter().collect();
        Ok(self
            .nat_flows()?
            .into_iter()
            .map(|(key, flow)| Translation {
                reply_seen_ns: reverse
                    .get(&key.reverse(flow.nat_port))
                    .map_or(0, |r| r.reply_seen_by(&key.origin())),
                key,
                flow,
            })
            .collect())
    }

    /// Whether the flow `origin` names in the reverse entry `rkey` exists
    /// and holds that port.
    pub fn holds_port(&self, rkey: &ReverseKey, origin: &Origin) -> Result<bool> {
        match self.nat_flows.get(&rkey.forward(origin), 0) {
            Ok(flow) => Ok(flow.nat_port == rkey.nat_port),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// A translation's two halves as dr-ctl reads them: the forward half, and
/// from the reverse half when a reply last came (0 for none).
pub struct Translation {
    pub key: FlowKey,
    pub flow: Flow,
    pub reply_seen_ns: u64,
}

impl Translation {
    /// Idle both ways past its state's timeout at `now_ns`.
    pub fn expired(&self, now_ns: u64, t: &Timeouts) -> bool {
        self.flow.expired(self.reply_seen_ns, now_ns, t)
    }

    /// The later of its last packet out and its last reply.
    pub fn last_seen_ns(&self) -> u64 {
        self.flow.last_active_ns(self.reply_seen_ns)
    }
}

/// Entries may vanish between listing and removal (the datapath and LRU
/// eviction remove them too).
fn ignore_missing(r: std::result::Result<(), aya::maps::MapError>) -> Result<()> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => Ok(other?),
    }
}
