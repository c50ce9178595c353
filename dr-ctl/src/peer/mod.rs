//! Peers: another host's container subnet and the host it is reached via.
//! Input becomes a [`Peer`] here (parsing) and is checked against this host
//! in [`check`]; the rest of dr-ctl passes checked `Peer`s around.
mod check;
mod diff;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Serialize, Serializer};

pub use self::{
    check::{check_peers, PeerChange},
    diff::{PeerDiff, Switch},
};
use crate::{
    error::{Error, Result},
    subnet::parse_cidr,
};

/// A peer host's container subnet, routed via that host's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    pub subnet: Ipv4Net,
    pub via: Ipv4Addr,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} via {}", self.subnet, self.via)
    }
}

/// A `[subnet, via]` pair in JSON, as `apply` has always reported peers.
impl Serialize for Peer {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        (self.subnet, self.via).serialize(s)
    }
}

/// Parses a peer's container subnet; host bits must be clear.
pub fn parse_subnet(s: &str) -> Result<Ipv4Net> {
    parse_cidr("peer subnet", s)
}

/// Parses a peer host's address.
pub fn parse_via(via: &str) -> Result<Ipv4Addr> {
    via.parse().map_err(|_| {
        Error::Invalid(format!(
            "invalid via address {via:?}: expected an IPv4 address"
        ))
    })
}

impl Peer {
    /// Parses `SUBNET via ADDRESS`, given as its two values.
    pub fn parse(subnet: &str, via: &str) -> Result<Self> {
        Ok(Self {
            subnet: parse_subnet(subnet)?,
            via: parse_via(via)?,
        })
    }
}

/// Parses a peer list: one `SUBNET via ADDRESS` per line; blank lines and
/// `#` comments are skipped. Errors name the line.
pub fn parse_list(text: &str) -> Result<Vec<Peer>> {
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
        let subnet =
            parse_subnet(subnet).map_err(|e| Error::Invalid(format!("line {}: {e}", n + 1)))?;
        let via = parse_via(via)
            .map_err(|_| Error::Invalid(format!("line {}: invalid via address {via:?}", n + 1)))?;
        out.push(Peer { subnet, via });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<impl std::fmt::Debug>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn peer_subnet_needs_clear_host_bits() {
        assert_eq!(
            parse_subnet("10.0.129.0/24").unwrap().to_string(),
            "10.0.129.0/24"
        );
        let e = err(parse_subnet("10.0.129.7/24"));
        assert!(
            e.contains("host bits") && e.contains("10.0.129.0/24"),
            "{e}"
        );
        assert!(err(parse_subnet("10.0.129/24")).contains("invalid peer subnet"));
        assert!(err(parse_subnet("nonsense")).contains("invalid peer subnet"));
    }

    #[test]
    fn peers_parse_from_their_two_values() {
        let p = Peer::parse("10.0.129.0/24", "192.168.91.129").unwrap();
        assert_eq!(p.to_string(), "10.0.129.0/24 via 192.168.91.129");
        assert!(err(Peer::parse("10.0.129.0/24", "nope")).contains("invalid via address"));
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"["10.0.129.0/24","192.168.91.129"]"#
        );
    }

    #[test]
    fn peer_lists_parse_and_name_bad_lines() {
        let peers = parse_list(
            "# cluster\n10.0.129.0/24 via 192.168.91.129\n\n10.0.130.0/24 via 192.168.91.130 # b\n",
        )
        .unwrap();
        assert_eq!(peers.len(), 2);
        assert!(parse_list("10.0.129.0/24 192.168.91.129")
            .unwrap_err()
            .to_string()
            .starts_with("line 1:"));
        assert!(parse_list("\n10.0.129.1/24 via 192.168.91.129")
            .unwrap_err()
            .to_string()
            .contains("line 2: invalid peer subnet"));
    }
}
