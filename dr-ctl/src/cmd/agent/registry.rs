//! What the agent reads from etcd, and how much of it it trusts: the
//! registrations (checked one by one, then overlaps resolved by the earliest
//! claim), the cluster config, and the registry the peer map follows.
use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{etcd_err, AgentConfig, Stop};
use crate::{
    error::{Error, Result},
    subnet::LocalSubnet,
};

/// One host's entry in etcd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub name: String,
    pub address: Ipv4Addr,
    /// docker0's address with the prefix (Docker's bip).
    pub subnet: String,
}

/// The cluster-wide settings, written once at `<prefix>config` by the first
/// agent (as flannel's network config): every later agent must agree.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ClusterConfig {
    cluster_cidr: Ipv4Net,
    subnet_prefix: u8,
}

/// A key under `<prefix>subnets/` as read, not yet trusted.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub(super) value: Vec<u8>,
    /// The revision that created the key: among overlapping registrations,
    /// the earliest claim wins.
    pub(super) created: i64,
    pub(super) lease: i64,
}

/// A registration that passed [`check_entry`].
#[derive(Debug)]
pub(super) struct Valid<'a> {
    pub(super) key: &'a str,
    pub(super) registration: Registration,
    pub(super) subnet: LocalSubnet,
    pub(super) lease: i64,
}

pub(super) fn subnet_key(prefix: &str, net: &Ipv4Net) -> String {
    format!("{prefix}subnets/{}-{}", net.network(), net.prefix_len())
}

/// Where a registration that vanished is remembered for the removal grace
/// period: `<prefix>released/<network>-<len>`, the subnet key's last part.
fn released_key(prefix: &str, subnet_key: &str) -> Option<String> {
    let name = subnet_key.strip_prefix(&format!("{prefix}subnets/"))?;
    Some(format!("{prefix}released/{name}"))
}

/// Records that the registration at `key` (whose last value was `value`)
/// vanished: for `grace`, peers still route its subnet to its host, and no
/// other host may claim it. Every agent that sees the deletion tries; the
/// first one's record stands, under a lease of its own that etcd expires
/// after the grace period.
pub(super) async fn record_release(
    client: &mut Client,
    prefix: &str,
    key: &str,
    value: &[u8],
    grace: Duration,
) -> Result<()> {
    let Some(released) = released_key(prefix, key) else {
        return Ok(());
    };
    let ttl = grace.as_secs().max(1) as i64;
    let lease = client.lease_grant(ttl, None).await.map_err(etcd_err)?.id();
    client
        .txn(
            Txn::new()
                .when([Compare::create_revision(
                    released.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::put(
                    released,
                    value.to_vec(),
                    Some(PutOptions::new().with_lease(lease)),
                )]),
        )
        .await
        .map_err(etcd_err)?;
    Ok(())
}

/// The subnets released less than the grace period ago, by subnet key,
/// with the registration that held each (unreadable ones as None).
pub(super) async fn releases(
    client: &mut Client,
    prefix: &str,
) -> Result<HashMap<String, Option<Registration>>> {
    let resp = get_prefix(client, format!("{prefix}released/")).await?;
    let mut out = HashMap::new();
    for kv in resp.kvs() {
        let Ok(key) = kv.key_str() else { continue };
        let Some(name) = key.strip_prefix(&format!("{prefix}released/")) else {
            continue;
        };
        out.insert(
            format!("{prefix}subnets/{name}"),
            serde_json::from_slice(kv.value()).ok(),
        );
    }
    Ok(out)
}

/// The condition, for a claim of `subnet_key`, that it was not released
/// within the grace period.
pub(super) fn not_released(prefix: &str, subnet_key: &str) -> Option<Compare> {
    released_key(prefix, subnet_key)
        .map(|released| Compare::create_revision(released, CompareOp::Equal, 0))
}

/// Stores the cluster config if there is none, else checks ours against it.
pub(super) async fn check_cluster_config(
    client: &mut Client,
    args: &AgentConfig,
) -> Result<(), Stop> {
    let key = format!("{}config", args.prefix);
    let ours = ClusterConfig {
        cluster_cidr: args.cluster,
        subnet_prefix: args.subnet_prefix,
    };
    let value = serde_json::to_string(&ours).expect("serializable");
    let stored = client
        .txn(
            Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), value, None)])
                .or_else([TxnOp::get(key.clone(), None)]),
        )
        .await
        .map_err(etcd_err)?;
    if stored.succeeded() {
        info!("stored the cluster config at {key}: {ours:?}");
        return Ok(());
    }
    let theirs = stored.op_responses().into_iter().find_map(|r| match r {
        etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
        _ => None,
    });
    match theirs.and_then(|v| serde_json::from_slice::<ClusterConfig>(&v).ok()) {
        Some(theirs) if theirs == ours => Ok(()),
        Some(theirs) => Err(Stop::Fatal(Error::Conflict(format!(
            "the cluster in etcd ({key}) is {} with /{} subnets; this agent has --cluster-cidr {} --subnet-prefix {}",
            theirs.cluster_cidr, theirs.subnet_prefix, ours.cluster_cidr, ours.subnet_prefix
        )))),
        None => Err(Stop::Fatal(Error::Conflict(format!(
            "{key} in etcd is not a cluster config; fix or delete it"
        )))),
    }
}

/// Every key under `prefix`.
async fn get_prefix(client: &mut Client, prefix: String) -> Result<etcd_client::GetResponse> {
    client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(etcd_err)
}

/// Every entry under the prefix, by key, and the store's revision.
pub(super) async fn registrations(
    client: &mut Client,
    prefix: &str,
) -> Result<(i64, HashMap<String, Entry>)> {
    let resp = get_prefix(client, format!("{prefix}subnets/")).await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut out = HashMap::new();
    for kv in resp.kvs() {
        match kv.key_str() {
            Ok(key) => {
                out.insert(
                    key.to_string(),
                    Entry {
                        value: kv.value().to_vec(),
                        created: kv.create_revision(),
                        lease: kv.lease(),
                    },
                );
            }
            Err(_) => warn!("ignoring a registration with a non-UTF-8 key"),
        }
    }
    Ok((revision, out))
}

/// Checks one entry on its own: readable, its subnet the one its key names,
/// inside the cluster CIDR. etcd's content is anyone's with write access.
pub(super) fn check_entry(
    prefix: &str,
    cluster: &Ipv4Net,
    key: &str,
    value: &[u8],
) -> Result<(Registration, LocalSubnet), String> {
    let registration: Registration =
        serde_json::from_slice(value).map_err(|e| format!("unreadable: {e}"))?;
    let subnet = LocalSubnet::parse(&registration.subnet).map_err(|e| e.to_string())?;
    if key != subnet_key(prefix, &subnet.net) {
        return Err(format!(
            "its subnet {} is not the one its key names",
            subnet.net
        ));
    }
    if !cluster.contains(&subnet.net) {
        return Err(format!(
            "its subnet {} is outside the cluster CIDR {cluster}",
            subnet.net
        ));
    }
    Ok((registration, subnet))
}

/// The entries that may be routed: each valid on its own, and of
/// overlapping ones (whatever their prefix lengths) only the earliest claim.
/// Also returns what was ignored and why, by key.
pub(super) fn validate<'a>(
    prefix: &str,
    cluster: &Ipv4Net,
    entries: impl IntoIterator<Item = (&'a String, &'a Entry)>,
) -> (Vec<Valid<'a>>, BTreeMap<String, String>) {
    let mut ignored = BTreeMap::new();
    let mut candidates = Vec::new();
    for (key, entry) in entries {
        match check_entry(prefix, cluster, key, &entry.value) {
            Ok((registration, subnet)) => candidates.push((
                entry.created,
                Valid {
                    key,
                    registration,
                    subnet,
                    lease: entry.lease,
                },
            )),
            Err(why) => {
                ignored.insert(key.clone(), why);
            }
        }
    }
    candidates.sort_by(|a, b| (a.0, a.1.key).cmp(&(b.0, b.1.key)));
    // Accepted ranges, disjoint: first address → last address. Only the one
    // starting last at or before a candidate's end can overlap it.
    let mut taken: BTreeMap<u32, (u32, &str)> = BTreeMap::new();
    let mut valid = Vec::new();
    for (_, v) in candidates {
        let (first, last) = (
            u32::from(v.subnet.net.network()),
            u32::from(v.subnet.net.broadcast()),
        );
        if let Some((_, (end, holder))) = taken.range(..=last).next_back() {
            if *end >= first {
                ignored.insert(
                    v.key.to_string(),
                    format!("its subnet {} overlaps the earlier {holder}", v.subnet.net),
                );
                continue;
            }
        }
        taken.insert(first, (last, v.key));
        valid.push(v);
    }
    (valid, ignored)
}

/// The subnets a leasing agent tries, in order: every `/len` of the cluster
/// CIDR; a fixed subnet only.
pub(super) fn candidates(args: &AgentConfig) -> Vec<LocalSubnet> {
    if let Some(fixed) = args.subnet {
        return vec![fixed];
    }
    args.cluster
        .subnets(args.subnet_prefix)
        .expect("checked at start")
        .map(|net| LocalSubnet {
            gateway: Ipv4Addr::from(u32::from(net.network()) + 1),
            net,
        })
        .collect()
}

/// The registrations the peer map follows: the live ones, and those gone
/// less than the grace period ago.
pub(super) struct Registry {
    pub(super) live: HashMap<String, Entry>,
    pub(super) gone: HashMap<String, (Instant, Entry)>,
    /// What the last reconcile ignored, by key: each is logged once.
    pub(super) ignored: BTreeMap<String, String>,
}

impl Registry {
    pub(super) fn put(&mut self, key: String, entry: Entry) {
        self.gone.remove(&key);
        self.live.insert(key, entry);
    }

    /// Starts the grace period of a live registration that vanished; returns it.
    pub(super) fn delete(&mut self, key: &str) -> Option<Entry> {
        let entry = self.live.remove(key)?;
        self.gone
            .insert(key.to_string(), (Instant::now(), entry.clone()));
        Some(entry)
    }

    /// Forgets what left more than `grace` ago; true if anything did.
    pub(super) fn expire(&mut self, grace: Duration) -> bool {
        let before = self.gone.len();
        self.gone.retain(|_, (since, _)| since.elapsed() < grace);
        self.gone.len() != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(subnet: &str, name: &str, created: i64) -> Entry {
        let value = serde_json::to_vec(&Registration {
            name: name.into(),
            address: "192.168.91.1".parse().unwrap(),
            subnet: subnet.into(),
        })
        .unwrap();
        Entry {
            value,
            created,
            lease: 1,
        }
    }

    #[test]
    fn validation_refuses_mismatched_keys_foreign_subnets_and_later_overlaps() {
        let cluster: Ipv4Net = "10.0.0.0/16".parse().unwrap();
        let entries: HashMap<String, Entry> = [
            ("/dr/subnets/10.0.1.0-24", entry("10.0.1.1/24", "a", 5)),
            // Value and key disagree.
            ("/dr/subnets/10.0.2.0-24", entry("10.0.9.1/24", "b", 6)),
            // Outside the cluster.
            ("/dr/subnets/10.1.0.0-24", entry("10.1.0.1/24", "c", 7)),
            // Overlaps a's /24 with another length, claimed later.
            ("/dr/subnets/10.0.0.0-23", entry("10.0.0.1/23", "d", 8)),
            // Overlaps e's later /25: e wins.
            ("/dr/subnets/10.0.4.0-22", entry("10.0.4.1/22", "e", 3)),
            ("/dr/subnets/10.0.5.0-25", entry("10.0.5.1/25", "f", 9)),
            ("/dr/subnets/10.0.3.0-24", entry("{", "g", 10)),
        ]
        .into_iter()
        .map(|(k, e)| (k.to_string(), e))
        .collect();
        let (valid, ignored) = validate("/dr/", &cluster, &entries);
        let mut names: Vec<&str> = valid.iter().map(|v| v.registration.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["a", "e"]);
        assert_eq!(
            ignored.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "/dr/subnets/10.0.0.0-23",
                "/dr/subnets/10.0.2.0-24",
                "/dr/subnets/10.0.3.0-24",
                "/dr/subnets/10.0.5.0-25",
                "/dr/subnets/10.1.0.0-24",
            ]
        );
    }
}
