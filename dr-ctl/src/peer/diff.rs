//! The peer changes that take a host from the peers it has to the ones it
//! should have (`apply`, the agent).
use std::{collections::HashMap, net::Ipv4Addr};

use ipnet::Ipv4Net;
use serde::{Serialize, Serializer};

use super::{Peer, PeerChange};

/// A peer whose subnet stays but moves to another host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switch {
    pub peer: Peer,
    pub old_via: Ipv4Addr,
}

/// A `[subnet, old via, new via]` triple in JSON, as `apply` has always
/// reported switches.
impl Serialize for Switch {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        (self.peer.subnet, self.old_via, self.peer.via).serialize(s)
    }
}

/// The peer changes that take a host from `live` to `wanted`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PeerDiff {
    pub add: Vec<Peer>,
    pub change: Vec<Switch>,
    pub remove: Vec<Peer>,
    pub unchanged: usize,
}

impl PeerDiff {
    pub fn between(live: &[Peer], wanted: &[Peer]) -> Self {
        let live_map: HashMap<Ipv4Net, Ipv4Addr> = live.iter().map(|p| (p.subnet, p.via)).collect();
        let mut d = Self::default();
        for &peer in wanted {
            match PeerChange::of(peer, &live_map) {
                PeerChange::Add => d.add.push(peer),
                PeerChange::Replace { old_via } => d.change.push(Switch { peer, old_via }),
                PeerChange::Unchanged => d.unchanged += 1,
            }
        }
        let wanted_subnets: std::collections::HashSet<Ipv4Net> =
            wanted.iter().map(|p| p.subnet).collect();
        d.remove = live
            .iter()
            .filter(|p| !wanted_subnets.contains(&p.subnet))
            .copied()
            .collect();
        d.add.sort();
        d.change
            .sort_by_key(|s| (s.peer.subnet, s.old_via, s.peer.via));
        d.remove.sort();
        d
    }

    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.change.is_empty() && self.remove.is_empty()
    }

    /// What to write before removing anything: added and switched peers.
    pub fn upserts(&self) -> Vec<Peer> {
        let mut out = self.add.clone();
        out.extend(self.change.iter().map(|s| s.peer));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_adds_and_switches_before_it_removes() {
        let p = |n: &str, a: &str| Peer::parse(n, a).unwrap();
        let live = [
            p("10.0.1.0/24", "192.168.0.1"),
            p("10.0.2.0/24", "192.168.0.2"),
            p("10.0.3.0/24", "192.168.0.3"),
        ];
        let wanted = [
            p("10.0.1.0/24", "192.168.0.1"),
            p("10.0.2.0/24", "192.168.0.9"),
            p("10.0.4.0/24", "192.168.0.4"),
        ];
        let d = PeerDiff::between(&live, &wanted);
        assert_eq!(d.add, vec![p("10.0.4.0/24", "192.168.0.4")]);
        assert_eq!(
            d.change,
            vec![Switch {
                peer: p("10.0.2.0/24", "192.168.0.9"),
                old_via: "192.168.0.2".parse().unwrap()
            }]
        );
        assert_eq!(d.remove, vec![p("10.0.3.0/24", "192.168.0.3")]);
        assert_eq!(d.unchanged, 1);
        assert_eq!(d.upserts().len(), 2);
        assert!(PeerDiff::between(&wanted, &wanted).is_empty());
        // As `apply --json` has always printed it.
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            serde_json::json!({
                "add": [["10.0.4.0/24", "192.168.0.4"]],
                "change": [["10.0.2.0/24", "192.168.0.2", "192.168.0.9"]],
                "remove": [["10.0.3.0/24", "192.168.0.3"]],
                "unchanged": 1
            })
        );
    }
}
