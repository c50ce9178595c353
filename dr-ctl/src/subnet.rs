//! Parsing and validation of the subnet plan: pure functions, no system access.
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::error::{Error, Result};

/// docker0's addressing, given as Docker's `bip`: the gateway address with the
/// subnet's prefix length (`10.0.128.1/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalSubnet {
    pub gateway: Ipv4Addr,
    pub net: Ipv4Net,
}

impl LocalSubnet {
    /// Parses a subnet given as `bip`.
    pub fn parse(s: &str) -> Result<Self> {
        Self::parse_as("subnet", s)
    }

    /// [`LocalSubnet::parse`], with `what` naming the value in errors (the
    /// caller's option or field).
    pub fn parse_as(what: &str, s: &str) -> Result<Self> {
        let with_prefix: Ipv4Net = s.parse().map_err(|_| {
            Error::Invalid(format!(
                "invalid {what} {s:?}: expected the bridge address with a prefix, like 10.0.128.1/24"
            ))
        })?;
        let net = with_prefix.trunc();
        let gateway = with_prefix.addr();
        if with_prefix.prefix_len() > 30 {
            return Err(Error::Invalid(format!(
                "invalid {what} {s}: a /{} leaves no room for containers",
                with_prefix.prefix_len()
            )));
        }
        if gateway == net.network() || gateway == net.broadcast() {
            return Err(Error::Invalid(format!(
                "invalid {what} {s}: {gateway} is the {} address of {net}; give the bridge's own address, like {}/{}",
                if gateway == net.network() { "network" } else { "broadcast" },
                Ipv4Addr::from(u32::from(net.network()) + 1),
                net.prefix_len()
            )));
        }
        Ok(Self { gateway, net })
    }

    /// The `bip` form: `10.0.128.1/24`.
    pub fn bip(&self) -> String {
        format!("{}/{}", self.gateway, self.net.prefix_len())
    }
}

/// Parses an IPv4 CIDR whose host bits must be clear; `what` names it in errors.
pub fn parse_cidr(what: &str, s: &str) -> Result<Ipv4Net> {
    let net: Ipv4Net = s.parse().map_err(|_| {
        Error::Invalid(format!(
            "invalid {what} {s:?}: expected an IPv4 CIDR like 10.0.129.0/24"
        ))
    })?;
    if net != net.trunc() {
        return Err(Error::Invalid(format!(
            "invalid {what} {s}: host bits are set (did you mean {}?)",
            net.trunc()
        )));
    }
    Ok(net)
}

/// Parses a peer's container subnet; host bits must be clear.
pub fn parse_peer_subnet(s: &str) -> Result<Ipv4Net> {
    parse_cidr("peer subnet", s)
}

pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// What `peer add` has to do for a subnet that passed validation.
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

/// Checks one new peer against the host: not the local subnet, not the
/// uplink's network, `via` a neighbour on the uplink's network.
fn check_against_host(
    subnet: Ipv4Net,
    via: Ipv4Addr,
    local: &LocalSubnet,
    uplink_nets: &[Ipv4Net],
) -> Result<()> {
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
    new: &[(Ipv4Net, Ipv4Addr)],
    local: &LocalSubnet,
    uplink_nets: &[Ipv4Net],
    existing: &[(Ipv4Net, Ipv4Addr)],
) -> Result<Vec<PeerChange>> {
    let current: std::collections::HashMap<Ipv4Net, Ipv4Addr> = existing.iter().copied().collect();
    let mut wanted: std::collections::HashMap<Ipv4Net, Ipv4Addr> = std::collections::HashMap::new();
    let mut changes = Vec::with_capacity(new.len());
    for &(subnet, via) in new {
        check_against_host(subnet, via, local, uplink_nets)?;
        if let Some(other) = wanted.insert(subnet, via).filter(|v| *v != via) {
            return Err(Error::Invalid(format!(
                "peer subnet {subnet} is given twice, via {other} and via {via}"
            )));
        }
        changes.push(match current.get(&subnet) {
            None => PeerChange::Add,
            Some(v) if *v == via => PeerChange::Unchanged,
            Some(v) => PeerChange::Replace { old_via: *v },
        });
    }
    // The resulting set of peers must not overlap. CIDR ranges either nest or
    // are disjoint, so after sorting by start (widest first) an overlap is a
    // range starting before the furthest end seen so far.
    let mut all: Vec<(Ipv4Net, Ipv4Addr, bool)> = existing
        .iter()
        .filter(|(n, _)| !wanted.contains_key(n))
        .map(|&(n, v)| (n, v, false))
        .chain(wanted.iter().map(|(&n, &v)| (n, v, true)))
        .collect();
    all.sort_by_key(|(n, _, _)| (n.network(), n.prefix_len()));
    let mut widest: Option<(Ipv4Net, Ipv4Addr, bool)> = None;
    for item in all {
        if let Some(w) = widest.filter(|w| w.0.contains(&item.0.network())) {
            let ((a, _, _), (b, b_via, _)) = if item.2 { (item, w) } else { (w, item) };
            return Err(Error::Invalid(format!(
                "peer subnet {a} overlaps peer {b} via {b_via}"
            )));
        }
        if widest.is_none_or(|w| u32::from(item.0.broadcast()) > u32::from(w.0.broadcast())) {
            widest = Some(item);
        }
    }
    Ok(changes)
}

/// [`check_peers`] for one peer.
pub fn check_peer(
    subnet: Ipv4Net,
    via: Ipv4Addr,
    local: &LocalSubnet,
    uplink_nets: &[Ipv4Net],
    existing: &[(Ipv4Net, Ipv4Addr)],
) -> Result<PeerChange> {
    Ok(check_peers(&[(subnet, via)], local, uplink_nets, existing)?[0])
}

/// Parses a peer list: one `SUBNET via ADDRESS` per line; blank lines and
/// `#` comments are skipped. Errors name the line.
pub fn parse_peer_list(text: &str) -> Result<Vec<(Ipv4Net, Ipv4Addr)>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let [subnet, "via", via] = words[..] else {
            return Err(Error::Invalid(format!(
                "line {}: expected `SUBNET via ADDRESS`, got {line:?}",
                n + 1
            )));
        };
        let subnet = parse_peer_subnet(subnet)
            .map_err(|e| Error::Invalid(format!("line {}: {e}", n + 1)))?;
        let via = via
            .parse()
            .map_err(|_| Error::Invalid(format!("line {}: invalid via address {via:?}", n + 1)))?;
        out.push((subnet, via));
    }
    Ok(out)
}

/// In-memory form of addresses in dr-common's maps (see its crate docs).
pub fn to_map_addr(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

pub fn from_map_addr(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
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

    fn err(r: Result<impl std::fmt::Debug>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn local_subnet_is_the_bip() {
        let l = local();
        assert_eq!(l.gateway, Ipv4Addr::new(10, 0, 128, 1));
        assert_eq!(l.net.to_string(), "10.0.128.0/24");
        assert_eq!(l.bip(), "10.0.128.1/24");
    }

    #[test]
    fn local_subnet_rejects_bad_forms() {
        assert!(err(LocalSubnet::parse("10.0.128.1")).contains("expected the bridge address"));
        assert!(err(LocalSubnet::parse("10.0.300.1/24")).contains("invalid subnet"));
        assert!(
            err(LocalSubnet::parse_as("--subnet", "10.0.300.1/24")).contains("invalid --subnet")
        );
        assert!(err(LocalSubnet::parse("10.0.128.0/24")).contains("network address"));
        assert!(err(LocalSubnet::parse("10.0.128.0/24")).contains("10.0.128.1/24"));
        assert!(err(LocalSubnet::parse("10.0.128.255/24")).contains("broadcast"));
        assert!(err(LocalSubnet::parse("10.0.128.1/31")).contains("no room"));
    }

    #[test]
    fn peer_subnet_needs_clear_host_bits() {
        assert_eq!(
            parse_peer_subnet("10.0.129.0/24").unwrap().to_string(),
            "10.0.129.0/24"
        );
        let e = err(parse_peer_subnet("10.0.129.7/24"));
        assert!(
            e.contains("host bits") && e.contains("10.0.129.0/24"),
            "{e}"
        );
        assert!(err(parse_peer_subnet("10.0.129/24")).contains("invalid peer subnet"));
        assert!(err(parse_peer_subnet("nonsense")).contains("invalid peer subnet"));
    }

    #[test]
    fn overlap_is_symmetric_and_exact() {
        let a: Ipv4Net = "10.0.0.0/16".parse().unwrap();
        let b: Ipv4Net = "10.0.129.0/24".parse().unwrap();
        let c: Ipv4Net = "10.1.0.0/24".parse().unwrap();
        assert!(overlaps(&a, &b) && overlaps(&b, &a));
        assert!(!overlaps(&a, &c) && !overlaps(&c, &a));
        assert!(overlaps(&b, &b));
    }

    fn check(subnet: &str, via: &str, existing: &[(&str, &str)]) -> Result<PeerChange> {
        let new = [(subnet.parse().unwrap(), via.parse().unwrap())];
        let existing: Vec<_> = existing
            .iter()
            .map(|(n, v)| (n.parse().unwrap(), v.parse().unwrap()))
            .collect();
        Ok(check_peers(&new, &local(), &uplink(), &existing)?[0])
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
        let new = |v: &[(&str, &str)]| -> Vec<(Ipv4Net, Ipv4Addr)> {
            v.iter()
                .map(|(n, a)| (n.parse().unwrap(), a.parse().unwrap()))
                .collect()
        };
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
        let batch: Vec<(Ipv4Net, Ipv4Addr)> = (0..100_000u32)
            .map(|i| {
                (
                    Ipv4Net::new(Ipv4Addr::from(0x6400_0000 + (i << 8)), 24).unwrap(),
                    "192.168.91.129".parse().unwrap(),
                )
            })
            .collect();
        let changes = check_peers(&batch, &local(), &uplink(), &[]).unwrap();
        assert!(changes.iter().all(|c| *c == PeerChange::Add));
    }

    #[test]
    fn peer_lists_parse_and_name_bad_lines() {
        let peers = parse_peer_list(
            "# cluster\n10.0.129.0/24 via 192.168.91.129\n\n10.0.130.0/24 via 192.168.91.130 # b\n",
        )
        .unwrap();
        assert_eq!(peers.len(), 2);
        assert!(parse_peer_list("10.0.129.0/24 192.168.91.129")
            .unwrap_err()
            .to_string()
            .starts_with("line 1:"));
        assert!(parse_peer_list("\n10.0.129.1/24 via 192.168.91.129")
            .unwrap_err()
            .to_string()
            .contains("line 2: invalid peer subnet"));
    }

    #[test]
    fn map_addresses_keep_network_byte_order_in_memory() {
        let raw = to_map_addr(Ipv4Addr::new(10, 0, 129, 2));
        assert_eq!(raw.to_ne_bytes(), [10, 0, 129, 2]);
        assert_eq!(from_map_addr(raw), Ipv4Addr::new(10, 0, 129, 2));
    }
}
