//! Checks new peers against this host and the peers it has: pure
//! functions, no system access.
use std::{collections::HashMap, net::Ipv4Addr};

use ipnet::Ipv4Net;

use super::Peer;
use crate::{
    error::{Error, Result},
    subnet::{overlaps, LocalSubnet},
};

/// What a wanted peer asks of a host, given the peers it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerChange {
    /// The same subnet is already there via the same host.
    Unchanged,
    Add,
    /// The same subnet is there via another host: switch it atomically.
    Replace {
        old_via: Ipv4Addr,
    },
}

impl PeerChange {
    /// The change `peer` makes to `current` (subnet → via).
    pub fn of(peer: Peer, current: &HashMap<Ipv4Net, Ipv4Addr>) -> Self {
        match current.get(&peer.subnet) {
            None => Self::Add,
            Some(&via) if via == peer.via => Self::Unchanged,
            Some(&old_via) => Self::Replace { old_via },
        }
    }
}

/// Checks one new peer against the host: not the local subnet, not the
/// uplink's network, `via` a neighbour on the uplink's network.
fn check_against_host(peer: Peer, local: &LocalSubnet, uplink_nets: &[Ipv4Net]) -> Result<()> {
    let Peer { subnet, via } = peer;
    if overlaps(&subnet, &local.net) {
        let what = if subnet == local.net {
            "is"
        } else {
            "overlaps"
        };
        return Err(Error::Invalid(format!(
            "peer subnet {subnet} {what} this host's local subnet {}",
            local.net
        )));
    }
    if uplink_nets.iter().any(|n| n.addr() == via) {
        return Err(Error::Invalid(format!(
            "via {via} is this host's own uplink address"
        )));
    }
    if !uplink_nets.iter().any(|n| n.contains(&via)) {
        let nets: Vec<String> = uplink_nets.iter().map(|n| n.trunc().to_string()).collect();
        return Err(Error::Invalid(format!(
            "via {via} is not on the uplink's network ({})",
            if nets.is_empty() {
                "the uplink has no IPv4 address".to_string()
            } else {
                nets.join(", ")
            }
        )));
    }
    if let Some(net) = uplink_nets.iter().find(|n| overlaps(&subnet, &n.trunc())) {
        return Err(Error::Invalid(format!(
            "peer subnet {subnet} overlaps the uplink's network {}",
            net.trunc()
        )));
    }
    Ok(())
}

/// Checks new peers against this host's plan and against each other and the
/// existing peers, all before anything changes. Returns what to do for each
/// new peer, in input order. `uplink_nets` are the uplink's IPv4 addresses
/// with their prefixes. Sorting makes it O(n log n), so 100,000 peers are fine.
pub fn check_peers(
    new: &[Peer],
    local: &LocalSubnet,
    uplink_nets: &[Ipv4Net],
    existing: &[Peer],
) -> Result<Vec<PeerChange>> {
    let current: HashMap<Ipv4Net, Ipv4Addr> = existing.iter().map(|p| (p.subnet, p.via)).collect();
    let mut wanted: HashMap<Ipv4Net, Ipv4Addr> = HashMap::new();
    let mut changes = Vec::with_capacity(new.len());
    for &peer in new {
        let Peer { subnet, via } = peer;
        check_against_host(peer, local, uplink_nets)?;
        if let Some(other) = wanted.insert(subnet, via).filter(|v| *v != via) {
            return Err(Error::Invalid(format!(
                "peer subnet {subnet} is given twice, via {other} and via {via}"
            )));
        }
        changes.push(PeerChange::of(peer, &current));
    }
    // The resulting set of peers must not overlap. CIDR ranges either nest or
    // are disjoint, so after sorting by start (widest first) an overlap is a
    // range starting before the furthest end seen so far. The flag marks the
    // new peers, which errors name first.
    let mut all: Vec<(Peer, bool)> = existing
        .iter()
        .filter(|p| !wanted.contains_key(&p.subnet))
        .map(|&p| (p, false))
        .chain(
            wanted
                .iter()
                .map(|(&subnet, &via)| (Peer { subnet, via }, true)),
        )
        .collect();
    all.sort_by_key(|(p, _)| (p.subnet.network(), p.subnet.prefix_len()));
    let mut widest: Option<(Peer, bool)> = None;
    for item in all {
        if let Some(w) = widest.filter(|(w, _)| w.subnet.contains(&item.0.subnet.network())) {
            let ((a, _), (b, _)) = if item.1 { (item, w) } else { (w, item) };
            return Err(Error::Invalid(format!(
                "peer subnet {} overlaps peer {b}",
                a.subnet
            )));
        }
        if widest.is_none_or(|(w, _)| {
            u32::from(item.0.subnet.broadcast()) > u32::from(w.subnet.broadcast())
        }) {
            widest = Some(item);
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalSubnet {
        LocalSubnet::parse("10.0.128.1/24").unwrap()
    }

    fn uplink() -> Vec<Ipv4Net> {
        vec!["192.168.91.128/24".parse().unwrap()]
    }

    fn peers(v: &[(&str, &str)]) -> Vec<Peer> {
        v.iter().map(|(n, a)| Peer::parse(n, a).unwrap()).collect()
    }

    fn check(subnet: &str, via: &str, existing: &[(&str, &str)]) -> Result<PeerChange> {
        let new = peers(&[(subnet, via)]);
        Ok(check_peers(&new, &local(), &uplink(), &peers(existing))?[0])
    }

    fn err(r: Result<PeerChange>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn peer_checks() {
        assert_eq!(
            check("10.0.129.0/24", "192.168.91.129", &[]).unwrap(),
            PeerChange::Add
        );
        assert_eq!(
            check(
                "10.0.129.0/24",
                "192.168.91.129",
                &[("10.0.129.0/24", "192.168.91.129")]
            )
            .unwrap(),
            PeerChange::Unchanged
        );
        assert_eq!(
            check(
                "10.0.129.0/24",
                "192.168.91.130",
                &[("10.0.129.0/24", "192.168.91.129")]
            )
            .unwrap(),
            PeerChange::Replace {
                old_via: "192.168.91.129".parse().unwrap()
            }
        );
        assert!(err(check("10.0.128.0/24", "192.168.91.129", &[]))
            .contains("is this host's local subnet"));
        assert!(err(check("10.0.0.0/16", "192.168.91.129", &[]))
            .contains("overlaps this host's local subnet"));
        assert!(err(check("10.0.129.0/24", "192.168.92.1", &[]))
            .contains("not on the uplink's network"));
        assert!(err(check("10.0.129.0/24", "192.168.91.128", &[])).contains("own uplink address"));
        assert!(
            err(check("192.168.91.0/25", "192.168.91.129", &[])).contains("overlaps the uplink")
        );
        assert!(err(check(
            "10.0.129.128/25",
            "192.168.91.130",
            &[("10.0.129.0/24", "192.168.91.129")]
        ))
        .contains("overlaps peer 10.0.129.0/24"));
    }

    #[test]
    fn batches_are_checked_as_a_whole() {
        let new = peers;
        let existing = new(&[
            ("10.0.129.0/24", "192.168.91.129"),
            ("10.0.140.0/22", "192.168.91.140"),
        ]);
        let batch = new(&[
            ("10.0.129.0/24", "192.168.91.129"),
            ("10.0.130.0/24", "192.168.91.130"),
            ("10.0.140.0/22", "192.168.91.141"),
        ]);
        assert_eq!(
            check_peers(&batch, &local(), &uplink(), &existing).unwrap(),
            [
                PeerChange::Unchanged,
                PeerChange::Add,
                PeerChange::Replace {
                    old_via: "192.168.91.140".parse().unwrap()
                }
            ]
        );
        let e = |b: &[(&str, &str)]| {
            check_peers(&new(b), &local(), &uplink(), &existing)
                .unwrap_err()
                .to_string()
        };
        assert!(e(&[
            ("10.0.131.0/24", "192.168.91.131"),
            ("10.0.131.0/24", "192.168.91.132")
        ])
        .contains("given twice"));
        assert!(e(&[
            ("10.0.131.0/24", "192.168.91.131"),
            ("10.0.131.128/25", "192.168.91.132")
        ])
        .contains("overlaps peer"));
        assert!(e(&[("10.0.142.0/24", "192.168.91.131")]).contains("overlaps peer 10.0.140.0/22"));
        assert!(e(&[("10.0.0.0/8", "192.168.91.131")]).contains("local subnet"));
        assert!(e(&[
            ("10.1.0.0/16", "192.168.91.131"),
            ("10.1.200.0/24", "192.168.91.132")
        ])
        .contains("overlaps peer"));
    }

    #[test]
    fn many_disjoint_peers_pass_quickly() {
        let batch: Vec<Peer> = (0..100_000u32)
            .map(|i| Peer {
                subnet: Ipv4Net::new(Ipv4Addr::from(0x6400_0000 + (i << 8)), 24).unwrap(),
                via: "192.168.91.129".parse().unwrap(),
            })
            .collect();
        let changes = check_peers(&batch, &local(), &uplink(), &[]).unwrap();
        assert!(changes.iter().all(|c| *c == PeerChange::Add));
    }
}
