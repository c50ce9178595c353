//! The SNAT part of `dr-ctl up`: parsing and validation, no system access.
use dr_common::nat::{Timeouts, DEFAULT_PORT_MAX, DEFAULT_PORT_MIN, DEFAULT_TABLE_SIZE};
use ipnet::Ipv4Net;

use crate::{
    error::{Error, Result},
    subnet::{overlaps, parse_cidr, LocalSubnet},
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

/// `10000-32767`
pub fn parse_port_range(s: &str) -> Result<(u16, u16)> {
    let bad = || {
        Error::Invalid(format!(
            "invalid --nat-ports {s:?}: expected LOW-HIGH, like 10000-32767"
        ))
    };
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo < 1024 || lo > hi {
        return Err(Error::Invalid(format!(
            "invalid --nat-ports {s}: need 1024 <= LOW <= HIGH"
        )));
    }
    Ok((lo, hi))
}

/// `udp=30`: sets one timeout (seconds). Kinds: tcp-syn, tcp-established,
/// tcp-closing, tcp-closed, tcp-time-wait, udp, icmp.
pub fn parse_timeout(s: &str, t: &mut Timeouts) -> Result<()> {
    let bad = |why: &str| Error::Invalid(format!("invalid --nat-timeout {s:?}: {why}"));
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
        _ => {
            return Err(bad(
                "KIND is one of tcp-syn, tcp-established, tcp-closing, tcp-closed, tcp-time-wait, udp, icmp",
            ))
        }
    };
    *slot = secs;
    Ok(())
}

impl NatPlan {
    pub fn parse(
        cluster_cidr: Option<&str>,
        no_masquerade: &[String],
        ports: Option<&str>,
        table_size: Option<u32>,
        timeouts: &[String],
    ) -> Result<Self> {
        let mut plan = Self {
            cluster_cidr: cluster_cidr
                .map(|c| parse_cidr("--cluster-cidr", c))
                .transpose()?,
            no_masquerade: no_masquerade
                .iter()
                .map(|c| parse_cidr("--no-masquerade", c))
                .collect::<Result<_>>()?,
            ..Self::default()
        };
        if let Some(p) = ports {
            plan.ports = parse_port_range(p)?;
        }
        if let Some(size) = table_size {
            if !(1024..=(1 << 24)).contains(&size) {
                return Err(Error::Invalid(format!(
                    "invalid --nat-table-size {size}: between 1024 and 16777216"
                )));
            }
            plan.table_size = size;
        }
        for t in timeouts {
            parse_timeout(t, &mut plan.timeouts)?;
        }
        Ok(plan)
    }

    /// Checks the plan against this host: the local subnet must be inside the
    /// cluster, and translated ports must not collide with the host's own
    /// ephemeral ports (`ephemeral`, from net.ipv4.ip_local_port_range).
    pub fn check(&self, local: &LocalSubnet, ephemeral: (u16, u16)) -> Result<()> {
        let Some(cluster) = self.cluster_cidr else {
            if !self.no_masquerade.is_empty() {
                return Err(Error::Invalid(
                    "--no-masquerade needs --cluster-cidr".into(),
                ));
            }
            return Ok(());
        };
        if !cluster.contains(&local.net) {
            return Err(Error::Invalid(format!(
                "local subnet {} is not inside --cluster-cidr {cluster}",
                local.net
            )));
        }
        let (lo, hi) = self.ports;
        if lo <= ephemeral.1 && ephemeral.0 <= hi {
            return Err(Error::Invalid(format!(
                "--nat-ports {lo}-{hi} overlaps the host's ephemeral ports {}-{} (net.ipv4.ip_local_port_range); translated flows could collide with the host's own connections",
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

    fn plan(cluster: Option<&str>, extra: &[&str]) -> NatPlan {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        NatPlan::parse(cluster, &extra, None, None, &[]).unwrap()
    }

    #[test]
    fn defaults_avoid_linux_ephemeral_ports() {
        let p = plan(Some("10.0.0.0/16"), &[]);
        assert_eq!(p.ports, (10000, 32767));
        p.check(&local(), (32768, 60999)).unwrap();
        let e = p.check(&local(), (30000, 60999)).unwrap_err().to_string();
        assert!(e.contains("ephemeral"), "{e}");
    }

    #[test]
    fn exclusions_are_cluster_plus_extra_without_redundancy() {
        let p = plan(
            Some("10.0.0.0/16"),
            &["172.16.0.0/12", "10.0.5.0/24", "172.16.0.0/12"],
        );
        let got: Vec<String> = p.exclusions().iter().map(|n| n.to_string()).collect();
        assert_eq!(got, ["10.0.0.0/16", "172.16.0.0/12"]);
        assert!(plan(None, &[]).exclusions().is_empty());
    }

    #[test]
    fn checks_name_the_problem() {
        let e = |p: NatPlan| p.check(&local(), (32768, 60999)).unwrap_err().to_string();
        assert!(e(plan(Some("10.1.0.0/16"), &[])).contains("not inside --cluster-cidr"));
        assert!(e(plan(None, &["10.9.0.0/16"])).contains("needs --cluster-cidr"));
        let parse = |c: &str| {
            NatPlan::parse(Some(c), &[], None, None, &[])
                .unwrap_err()
                .to_string()
        };
        assert!(parse("10.0.0.1/16").contains("host bits"));
        assert!(parse("10.0.0.0").contains("--cluster-cidr"));
    }

    #[test]
    fn port_ranges_and_timeouts_parse() {
        assert_eq!(parse_port_range("61000-61003").unwrap(), (61000, 61003));
        for bad in ["61000", "5-10", "62000-61000", "a-b", "61000-70000"] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
        let mut t = Timeouts::default();
        parse_timeout("udp=2", &mut t).unwrap();
        parse_timeout("tcp-established=100", &mut t).unwrap();
        assert_eq!((t.udp, t.tcp_established), (2, 100));
        for bad in ["udp", "udp=0", "udp=x", "sctp=3"] {
            assert!(parse_timeout(bad, &mut t).is_err(), "{bad}");
        }
    }
}
