//! The declarative cluster plan (`dr-ctl apply -f cluster.toml`): one file
//! for the whole cluster, the same on every host. Parsing, validation of the
//! whole plan, finding this host's entry and the peers it must have are pure
//! functions here; `cmd::apply` acts on them.
//!
//! ```toml
//! cluster_cidr = "10.0.0.0/16"
//! uplink = "eth0"            # default for hosts that do not name theirs
//! # bridge = "docker0"  xdp = false  no_masquerade = ["172.16.0.0/12"]
//!
//! [[host]]
//! name = "node-128"
//! address = "192.168.91.128" # the host's address on the uplink
//! subnet = "10.0.128.1/24"   # docker0's address (Docker's bip)
//! # uplink = "ens3"
//! ```
use std::{collections::HashMap, net::Ipv4Addr};

use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::{
    error::{Error, Result},
    peer::Peer,
    subnet::{overlaps, parse_cidr, LocalSubnet},
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    cluster_cidr: String,
    #[serde(default = "default_bridge")]
    bridge: String,
    #[serde(default = "default_uplink")]
    uplink: String,
    #[serde(default)]
    xdp: bool,
    #[serde(default)]
    no_masquerade: Vec<String>,
    #[serde(default, rename = "host")]
    hosts: Vec<HostFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostFile {
    name: String,
    address: String,
    subnet: String,
    uplink: Option<String>,
}

fn default_bridge() -> String {
    "docker0".into()
}

fn default_uplink() -> String {
    "eth0".into()
}

/// A validated plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub cluster_cidr: Ipv4Net,
    pub no_masquerade: Vec<Ipv4Net>,
    pub bridge: String,
    pub xdp: bool,
    pub hosts: Vec<PlanHost>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanHost {
    pub name: String,
    pub address: Ipv4Addr,
    pub subnet: LocalSubnet,
    pub uplink: String,
}

impl Plan {
    /// Parses and validates the whole plan; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self> {
        let raw: PlanFile = toml::from_str(text).map_err(|e| {
            Error::Invalid(format!(
                "{file}: {}",
                e.to_string().replace('\n', " ").trim()
            ))
        })?;
        let at = |what: String| Error::Invalid(format!("{file}: {what}"));
        let cluster_cidr =
            parse_cidr("cluster_cidr", &raw.cluster_cidr).map_err(|e| at(e.to_string()))?;
        let no_masquerade = raw
            .no_masquerade
            .iter()
            .map(|c| parse_cidr("no_masquerade", c).map_err(|e| at(e.to_string())))
            .collect::<Result<Vec<_>>>()?;
        if raw.hosts.is_empty() {
            return Err(at("no [[host]] entries".into()));
        }
        let mut hosts: Vec<PlanHost> = Vec::with_capacity(raw.hosts.len());
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        let mut by_address: HashMap<Ipv4Addr, usize> = HashMap::new();
        for (i, h) in raw.hosts.iter().enumerate() {
            let entry = |field: &str, what: String| {
                Error::Invalid(format!("{file}: host {:?}: {field}: {what}", h.name))
            };
            if h.name.is_empty() {
                return Err(Error::Invalid(format!(
                    "{file}: host #{}: name: empty",
                    i + 1
                )));
            }
            if let Some(j) = by_name.insert(&h.name, i) {
                return Err(entry(
                    "name",
                    format!("given twice (entries #{} and #{})", j + 1, i + 1),
                ));
            }
            let address: Ipv4Addr = h
                .address
                .parse()
                .map_err(|_| entry("address", format!("{:?} is not an IPv4 address", h.address)))?;
            if let Some(j) = by_address.insert(address, i) {
                return Err(entry(
                    "address",
                    format!("{address} is also host {:?}'s", raw.hosts[j].name),
                ));
            }
            let subnet =
                LocalSubnet::parse(&h.subnet).map_err(|e| entry("subnet", e.to_string()))?;
            if !cluster_cidr.contains(&subnet.net) {
                return Err(entry(
                    "subnet",
                    format!("{} is outside cluster_cidr {cluster_cidr}", subnet.net),
                ));
            }
            if cluster_cidr.contains(&address) {
                return Err(entry(
                    "address",
                    format!("{address} is inside cluster_cidr {cluster_cidr}"),
                ));
            }
            hosts.push(PlanHost {
                name: h.name.clone(),
                address,
                subnet,
                uplink: h.uplink.clone().unwrap_or_else(|| raw.uplink.clone()),
            });
        }
        // Subnets must be pairwise disjoint: sort by start, compare neighbours
        // (CIDR ranges nest or are disjoint).
        let mut order: Vec<&PlanHost> = hosts.iter().collect();
        order.sort_by_key(|h| (h.subnet.net.network(), h.subnet.net.prefix_len()));
        for pair in order.windows(2) {
            if overlaps(&pair[0].subnet.net, &pair[1].subnet.net) {
                return Err(Error::Invalid(format!(
                    "{file}: host {:?}: subnet: {} overlaps host {:?}'s {}",
                    pair[1].name, pair[1].subnet.net, pair[0].name, pair[0].subnet.net
                )));
            }
        }
        Ok(Self {
            cluster_cidr,
            no_masquerade,
            bridge: raw.bridge,
            xdp: raw.xdp,
            hosts,
        })
    }

    /// This machine's entry: the one named `name`, whose address must be
    /// among `local_addrs`; or, unnamed, the one whose address is local
    /// (an error when none or several are: the caller says how to name one).
    pub fn this_host(
        &self,
        file: &str,
        name: Option<&str>,
        local_addrs: &[Ipv4Addr],
    ) -> Result<&PlanHost> {
        match name {
            Some(name) => {
                let h = self.hosts.iter().find(|h| h.name == name).ok_or_else(|| {
                    Error::Invalid(format!("{file}: no host {name:?} in the plan"))
                })?;
                if !local_addrs.contains(&h.address) {
                    return Err(Error::Invalid(format!(
                        "{file}: host {name:?}: address: {} is not an address of this machine",
                        h.address
                    )));
                }
                Ok(h)
            }
            None => {
                let mine: Vec<&PlanHost> = self
                    .hosts
                    .iter()
                    .filter(|h| local_addrs.contains(&h.address))
                    .collect();
                match mine[..] {
                    [h] => Ok(h),
                    [] => Err(Error::Invalid(format!(
                        "{file}: no host entry has an address of this machine"
                    ))),
                    _ => Err(Error::Invalid(format!(
                        "{file}: several host entries match this machine"
                    ))),
                }
            }
        }
    }

    /// The peers `me` must have: every other host's subnet via its address.
    pub fn peers_of(&self, me: &PlanHost) -> Vec<Peer> {
        self.hosts
            .iter()
            .filter(|h| h.name != me.name)
            .map(|h| Peer {
                subnet: h.subnet.net,
                via: h.address,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = r#"
cluster_cidr = "10.0.0.0/16"

[[host]]
name = "a"
address = "192.168.91.128"
subnet = "10.0.128.1/24"

[[host]]
name = "b"
address = "192.168.91.129"
subnet = "10.0.129.1/24"
uplink = "ens3"
"#;

    fn err(text: &str) -> String {
        Plan::parse("cluster.toml", text).unwrap_err().to_string()
    }

    fn with_host(extra: &str) -> String {
        format!("{PLAN}\n[[host]]\n{extra}")
    }

    #[test]
    fn parses_hosts_with_defaults() {
        let p = Plan::parse("cluster.toml", PLAN).unwrap();
        assert_eq!(p.cluster_cidr.to_string(), "10.0.0.0/16");
        assert_eq!(p.bridge, "docker0");
        assert_eq!(p.hosts[0].uplink, "eth0");
        assert_eq!(p.hosts[1].uplink, "ens3");
        assert_eq!(p.hosts[1].subnet.bip(), "10.0.129.1/24");
        let peers = p.peers_of(&p.hosts[0]);
        assert_eq!(
            peers,
            vec![Peer::parse("10.0.129.0/24", "192.168.91.129").unwrap()]
        );
    }

    #[test]
    fn errors_name_file_host_and_field() {
        let e = err(&with_host(
            "name = \"a\"\naddress = \"192.168.91.130\"\nsubnet = \"10.0.130.1/24\"",
        ));
        assert!(
            e.starts_with("cluster.toml: host \"a\": name: given twice"),
            "{e}"
        );
        let e = err(&with_host(
            "name = \"c\"\naddress = \"192.168.91.129\"\nsubnet = \"10.0.130.1/24\"",
        ));
        assert!(
            e.contains("host \"c\": address: 192.168.91.129 is also host \"b\"'s"),
            "{e}"
        );
        let e = err(&with_host(
            "name = \"c\"\naddress = \"192.168.91.130\"\nsubnet = \"10.0.128.129/25\"",
        ));
        assert!(
            e.contains("subnet: 10.0.128.128/25 overlaps host \"a\"'s 10.0.128.0/24"),
            "{e}"
        );
        let e = err(&with_host(
            "name = \"c\"\naddress = \"192.168.91.130\"\nsubnet = \"10.1.0.1/24\"",
        ));
        assert!(
            e.contains("host \"c\": subnet: 10.1.0.0/24 is outside cluster_cidr"),
            "{e}"
        );
        let e = err(&with_host(
            "name = \"c\"\naddress = \"192.168.91.130\"\nsubnet = \"10.0.130.0/24\"",
        ));
        assert!(
            e.contains("host \"c\": subnet: ") && e.contains("network address"),
            "{e}"
        );
        let e = err(&with_host(
            "name = \"c\"\naddress = \"nope\"\nsubnet = \"10.0.130.1/24\"",
        ));
        assert!(e.contains("host \"c\": address: \"nope\""), "{e}");
        let e = err("cluster_cidr = \"10.0.0.1/16\"\n[[host]]\nname=\"a\"\naddress=\"1.2.3.4\"\nsubnet=\"10.0.1.1/24\"");
        assert!(
            e.contains("cluster.toml: invalid cluster_cidr 10.0.0.1/16: host bits"),
            "{e}"
        );
        assert!(err("cluster_cidr = \"10.0.0.0/16\"").contains("no [[host]]"));
        let e = err(&with_host(
            "name = \"c\"\naddress = \"192.168.91.130\"\nsubnet = \"10.0.130.1/24\"\ncolour = 1",
        ));
        assert!(
            e.starts_with("cluster.toml: ") && e.contains("colour"),
            "{e}"
        );
    }

    #[test]
    fn finds_this_host_by_name_or_address() {
        let p = Plan::parse("cluster.toml", PLAN).unwrap();
        let mine = ["192.168.91.129".parse().unwrap()];
        assert_eq!(p.this_host("f", None, &mine).unwrap().name, "b");
        assert_eq!(p.this_host("f", Some("b"), &mine).unwrap().name, "b");
        assert!(p
            .this_host("f", Some("a"), &mine)
            .unwrap_err()
            .to_string()
            .contains("not an address of this machine"));
        assert!(p
            .this_host("f", Some("z"), &mine)
            .unwrap_err()
            .to_string()
            .contains("no host \"z\""));
        assert!(p
            .this_host("f", None, &[])
            .unwrap_err()
            .to_string()
            .ends_with("no host entry has an address of this machine"));
    }

    #[test]
    fn a_thousand_host_plan_validates() {
        let mut text = String::from("cluster_cidr = \"10.0.0.0/8\"\n");
        for i in 0..1000u32 {
            text += &format!(
                "[[host]]\nname = \"n{i}\"\naddress = \"172.16.{}.{}\"\nsubnet = \"10.{}.{}.1/24\"\n",
                i / 250,
                i % 250 + 1,
                i / 256,
                i % 256
            );
        }
        let p = Plan::parse("big.toml", &text).unwrap();
        assert_eq!(p.hosts.len(), 1000);
        assert_eq!(p.peers_of(&p.hosts[0]).len(), 999);
    }
}
