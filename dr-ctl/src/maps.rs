//! Typed access to the pinned maps of one network namespace.
use std::{net::Ipv4Addr, path::Path};

use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, Map, MapData, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use dr_common::{map_names, Counter, DatapathConfig, PeerEntry, PeerTraffic, Traffic, MAX_PEERS};
use ipnet::Ipv4Net;

use crate::{
    error::{io_context, Error, Result},
    subnet::{from_map_addr, to_map_addr},
};

/// A peer as stored in `PEER_SUBNETS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub subnet: Ipv4Net,
    pub via: Ipv4Addr,
    pub slot: u32,
}

pub struct Maps {
    peers: LpmTrie<MapData, u32, PeerEntry>,
    peer_traffic: PerCpuArray<MapData, PeerTraffic>,
    config: Array<MapData, DatapathConfig>,
    counters: PerCpuArray<MapData, Traffic>,
}

/// Whether `dir` holds pinned maps at all.
pub fn pinned(dir: &Path) -> bool {
    dir.join(map_names::DATAPATH_CONFIG).exists()
}

fn open(dir: &Path, name: &str) -> Result<Map> {
    let data = MapData::from_pin(dir.join(name))?;
    Ok(Map::from_map_data(data)?)
}

fn key(subnet: Ipv4Net) -> Key<u32> {
    Key::new(subnet.prefix_len().into(), to_map_addr(subnet.network()))
}

fn cpus() -> Result<usize> {
    nr_cpus().map_err(|(what, source)| Error::Io {
        context: format!("reading {what}"),
        source,
    })
}

impl Maps {
    /// Opens the maps pinned in `dir`; `NotUp` if there are none.
    pub fn open(dir: &Path) -> Result<Self> {
        if !pinned(dir) {
            return Err(Error::NotUp);
        }
        Ok(Self {
            peers: open(dir, map_names::PEER_SUBNETS)?.try_into()?,
            peer_traffic: open(dir, map_names::PEER_TRAFFIC)?.try_into()?,
            config: open(dir, map_names::DATAPATH_CONFIG)?.try_into()?,
            counters: open(dir, map_names::COUNTERS)?.try_into()?,
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

    pub fn peers(&self) -> Result<Vec<Peer>> {
        let mut peers = Vec::new();
        for item in self.peers.iter() {
            let (k, v) = item?;
            let subnet = Ipv4Net::new(from_map_addr(k.data()), k.prefix_len() as u8)
                .map_err(|_| Error::Invalid(format!("corrupt peer key /{}", k.prefix_len())))?;
            peers.push(Peer {
                subnet,
                via: from_map_addr(v.via),
                slot: v.slot,
            });
        }
        peers.sort_by_key(|p| (p.subnet.network(), p.subnet.prefix_len()));
        Ok(peers)
    }

    /// Inserts or replaces a peer. A new peer gets the lowest free traffic
    /// slot, zeroed before the peer becomes visible to the datapath.
    pub fn upsert_peer(&mut self, subnet: Ipv4Net, via: Ipv4Addr) -> Result<()> {
        let existing = self.peers()?;
        let slot = match existing.iter().find(|p| p.subnet == subnet) {
            Some(p) => p.slot,
            None => {
                let mut used: Vec<u32> = existing.iter().map(|p| p.slot).collect();
                used.sort_unstable();
                let slot = used
                    .iter()
                    .enumerate()
                    .find(|(i, s)| *i as u32 != **s)
                    .map_or(used.len() as u32, |(i, _)| i as u32);
                if slot >= MAX_PEERS {
                    return Err(Error::Conflict(format!(
                        "peer table is full ({MAX_PEERS} peers)"
                    )));
                }
                let zero = PerCpuValues::try_from(vec![PeerTraffic::default(); cpus()?])
                    .map_err(io_context("building per-CPU values"))?;
                self.peer_traffic.set(slot, zero, 0)?;
                slot
            }
        };
        let entry = PeerEntry {
            via: to_map_addr(via),
            slot,
        };
        Ok(self.peers.insert(&key(subnet), entry, 0)?)
    }

    pub fn remove_peer(&mut self, subnet: Ipv4Net) -> Result<()> {
        Ok(self.peers.remove(&key(subnet))?)
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
}
