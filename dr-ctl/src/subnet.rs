//! This host's subnet and IPv4 CIDRs: parsing and validation, pure
//! functions, no system access (peers are in `peer`).
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

pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
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
    fn overlap_is_symmetric_and_exact() {
        let a: Ipv4Net = "10.0.0.0/16".parse().unwrap();
        let b: Ipv4Net = "10.0.129.0/24".parse().unwrap();
        let c: Ipv4Net = "10.1.0.0/24".parse().unwrap();
        assert!(overlaps(&a, &b) && overlaps(&b, &a));
        assert!(!overlaps(&a, &c) && !overlaps(&c, &a));
        assert!(overlaps(&b, &b));
    }

    #[test]
    fn map_addresses_keep_network_byte_order_in_memory() {
        let raw = to_map_addr(Ipv4Addr::new(10, 0, 129, 2));
        assert_eq!(raw.to_ne_bytes(), [10, 0, 129, 2]);
        assert_eq!(from_map_addr(raw), Ipv4Addr::new(10, 0, 129, 2));
    }
}
