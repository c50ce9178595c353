//! The SNAT part of `dr-ctl up`: parsing and validation, no system access.
use dr_common::nat::{Timeouts, DEFAULT_PORT_MAX, DEFAULT_PORT_MIN, DEFAULT_TABLE_SIZE};
use ipnet::Ipv4Net;

use crate::{
    error::{Error, Result},
    subnet::{overlaps, LocalSubnet},
};

/// What to translate and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatPlan {
    /// SNAT is on when set: container traffic to anything outside it (and
    /// outside `no_masquerade` and the peer subnets) leaves with the uplink's address.
    pub cluster_cidr: Option<Ipv4Net>,
    pub no_masquerade: Vec<Ipv4Net>,
    /// Inclusive source-port range for translations.
    pub ports: (u16, u16),
    /// Entries in each of the two translation maps.
    pub table_size: u32,
    pub timeouts: Timeouts,
}

impl Default for NatPlan {
    fn default() -> Self {
        Self {
            cluster_cidr: None,
            no_masquerade: Vec::new(),
            ports: (DEFAULT_PORT_MIN, DEFAULT_PORT_MAX),
            table_size: DEFAULT_TABLE_SIZE,
            timeouts: Timeouts::default(),
        }
    }
}

/// `10000-32767`; `what` names the setting in the error.
pub fn parse_port_range(what: &str, s: &str) -> Result<(u16, u16)> {
    let bad = || {
        Error::Invalid(format!(
            "invalid {what} {s:?}: expected LOW-HIGH, like 10000-32767"
        ))
    };
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo < 1024 || lo > hi {
        return Err(Error::Invalid(format!(
            "invalid {what} {s}: need 1024 <= LOW <= HIGH"
        )));
    }
    Ok((lo, hi))
}

/// `udp=30`: sets one timeout (seconds). Kinds: tcp-syn, tcp-established,
/// tcp-closing, tcp-closed, tcp-time-wait, udp, icmp.
pub fn parse_timeout(what: &str, s: &str, t: &mut Timeouts) -> Result<()> {
    let bad = |why: &str| Error::Invalid(format!("invalid {what} {s:?}: {why}"));
    let (kind, secs) = s
        .split_once('=')
        .ok_or_else(|| bad("expected KIND=SECONDS"))?;
    let secs: u32 = secs
        .parse()
        .map_err(|_| bad("seconds must be a whole number"))?;
    if secs == 0 {
        return Err(bad("must be at least 1 second"));
    }
    let slot = match kind {
        "tcp-syn" => &mut t.tcp_syn,
        "tcp-established" => &mut t.tcp_established,
        "tcp-closing" => &mut t.tcp_closing,
        "tcp-closed" => &mut t.tcp_closed,
        "tcp-time-wait" => &mut t.tcp_time_wait,
        "udp" => &mut t.udp,
        "icmp" => &mut t.icmp,
        _ => return Err(bad(TIMEOUT_KINDS)),
    };
    *slot = secs;
    Ok(())
}

const TIMEOUT_KINDS: &str =
    "KIND is one of tcp-syn, tcp-established, tcp-closing, tcp-closed, tcp-time-wait, udp, icmp";

/// Entries in each translation map: 1024 ..= 2^24.
pub fn check_table_size(what: &str, size: u32) -> Result<u32> {
    if !(1024..=(1 << 24)).contains(&size) {
        return Err(Error::Invalid(format!(
            "invalid {what} {size}: between 1024 and 16777216"
        )));
    }
    Ok(size)
}

impl NatPlan {
    /// SNAT on for traffic leaving `cluster_cidr` (and `no_masquerade`),
    /// with the default ports, table size and timeouts.
    pub fn masquerade_outside(cluster_cidr: Ipv4Net, no_masquerade: Vec<Ipv4Net>) -> Self {
        Self {
            cluster_cidr: Some(cluster_cidr),
            no_masquerade,
            ..Self::default()
        }
    }

    /// Checks the plan against this host: the local subnet must be inside the
    /// cluster, and translated ports must not collide with the host's own
    /// ephemeral ports (`ephemeral`, from net.ipv4.ip_local_port_range).
    pub fn check(&self, local: &LocalSubnet, ephemeral: (u16, u16)) -> Result<()> {
        let Some(cluster) = self.cluster_cidr else {
            return Ok(());
        };
        if !cluster.contains(&local.net) {
            return Err(Error::Invalid(format!(
                "local subnet {} is not inside the cluster CIDR {cluster}",
                local.net
            )));
        }
        let (lo, hi) = self.ports;
        if lo <= ephemeral.1 && ephemeral.0 <= hi {
            return Err(Error::Invalid(format!(
                "the SNAT port range {lo}-{hi} overlaps the host's ephemeral ports {}-{} (net.ipv4.ip_local_port_range); translated flows could collide with the host's own connections",
                ephemeral.0, ephemeral.1
            )));
        }
        Ok(())
    }

    /// What `NAT_EXCLUDE` must hold: empty when SNAT is off.
    pub fn exclusions(&self) -> Vec<Ipv4Net> {
        let Some(cluster) = self.cluster_cidr else {
            return Vec::new();
        };
        let mut out = vec![cluster];
        out.extend(self.no_masquerade.iter().copied());
        out.sort();
        out.dedup();
        // A range inside another adds nothing to an LPM "is excluded" lookup.
        let all = out.clone();
        out.retain(|n| {
            !all.iter()
                .any(|m| m != n && overlaps(m, n) && m.contains(n))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalSubnet {
        LocalSubnet::parse("10.0.128.1/24").unwrap()
    }

    fn plan(cluster: &str, extra: &[&str]) -> NatPlan {
        NatPlan::masquerade_outside(
            cluster.parse().unwrap(),
            extra.iter().map(|s| s.parse().unwrap()).collect(),
        )
    }

    #[test]
    fn defaults_avoid_linux_ephemeral_ports() {
        let p = plan("10.0.0.0/16", &[]);
        assert_eq!(p.ports, (10000, 32767));
        p.check(&local(), (32768, 60999)).unwrap();
        let e = p.check(&local(), (30000, 60999)).unwrap_err().to_string();
        assert!(e.contains("ephemeral"), "{e}");
    }

    #[test]
    fn exclusions_are_cluster_plus_extra_without_redundancy() {
        let p = plan(
            "10.0.0.0/16",
            &["172.16.0.0/12", "10.0.5.0/24", "172.16.0.0/12"],
        );
        let got: Vec<String> = p.exclusions().iter().map(|n| n.to_string()).collect();
        assert_eq!(got, ["10.0.0.0/16", "172.16.0.0/12"]);
        assert!(NatPlan::default().exclusions().is_empty());
    }

    #[test]
    fn checks_name_the_problem() {
        let e = plan("10.1.0.0/16", &[])
            .check(&local(), (32768, 60999))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not inside the cluster CIDR 10.1.0.0/16"), "{e}");
        NatPlan::default().check(&local(), (10000, 60999)).unwrap();
    }

    #[test]
    fn port_ranges_timeouts_and_sizes_parse() {
        assert_eq!(
            parse_port_range("ports", "61000-61003").unwrap(),
            (61000, 61003)
        );
        for bad in ["61000", "5-10", "62000-61000", "a-b", "61000-70000"] {
            let e = parse_port_range("ports", bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid ports"), "{e}");
        }
        let mut t = Timeouts::default();
        parse_timeout("timeout", "udp=2", &mut t).unwrap();
        parse_timeout("timeout", "tcp-established=100", &mut t).unwrap();
        assert_eq!((t.udp, t.tcp_established), (2, 100));
        for bad in ["udp", "udp=0", "udp=x", "sctp=3"] {
            assert!(parse_timeout("timeout", bad, &mut t).is_err(), "{bad}");
        }
        assert_eq!(check_table_size("size", 1024).unwrap(), 1024);
        for bad in [5, 1023, (1 << 24) + 1] {
            assert!(check_table_size("size", bad).is_err(), "{bad}");
        }
    }
}
