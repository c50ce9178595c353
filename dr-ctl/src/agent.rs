//! `dr-ctl agent`: keeps this host's peers in step with the cluster through
//! etcd, in place of editing a plan by hand.
//!
//! Each host registers `<prefix>subnets/<network>-<len>` → `{name, address,
//! subnet}` under a lease that a task of its own renews; the key vanishes
//! when the host (or its agent) is gone for a whole TTL. A subnet is claimed
//! with a transaction that succeeds only if the key does not exist, so two
//! agents never get the same subnet. Nothing read from etcd is trusted:
//! every entry is validated, and of overlapping ones only the earliest claim
//! counts. The agent watches the prefix and reconciles the peer map on every
//! change (upserts before removals; removals after a grace period). Lost
//! connections, an expired lease or an etcd restart end the session; the
//! next one reconnects, keeps or renews its registration (keeping the same
//! subnet) and resynchronises. The datapath never waits on etcd: while it is
//! away, the peers last applied keep forwarding.
use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{
    cli::{AttachArg, DatapathLog},
    commands::{self, UpArgs},
    error::{io_context, Error, Result},
    nat_plan::NatPlan,
    netlink::Netlink,
    subnet::{check_peers, LocalSubnet},
};

/// `dr-ctl agent`'s command line.
#[derive(Clone, Debug, clap::Args)]
pub struct AgentArgs {
    /// etcd endpoints, comma-separated, e.g. http://10.1.0.5:2379.
    #[arg(long, value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// The cluster CIDR: subnets are leased from it, and SNAT leaves it untranslated.
    #[arg(long, value_name = "CIDR")]
    cluster_cidr: String,
    /// The interface toward the other hosts.
    #[arg(long)]
    uplink: String,
    /// Register this subnet (bip form, e.g. 10.0.128.1/24) instead of leasing one.
    #[arg(long)]
    subnet: Option<String>,
    /// Prefix length of leased subnets.
    #[arg(long, default_value_t = 24)]
    subnet_prefix: u8,
    /// This host's name in the registry [default: the uplink's address].
    #[arg(long)]
    name: Option<String>,
    #[arg(long, default_value = "docker0")]
    bridge: String,
    /// Seconds without contact to etcd after which this host's registration
    /// expires (it is renewed every third of that): long, so that an etcd
    /// outage or an agent restart never removes a live host, and a subnet is
    /// re-leased only after its holder was away this long.
    #[arg(long, default_value_t = 3600)]
    lease_ttl: i64,
    /// Seconds a host stays routed after its registration disappeared: a
    /// holder that re-registers within it (after an expiry while etcd was
    /// stalled) loses no traffic.
    #[arg(long, default_value_t = 60)]
    removal_grace: u64,
    /// Key prefix in etcd.
    #[arg(long, default_value = "/dr/")]
    etcd_prefix: String,
    /// Also attach the XDP fast path.
    #[arg(long)]
    xdp: bool,
    /// Level of the datapath's own events (read them with `dr-ctl monitor`).
    #[arg(long, value_enum, default_value_t = DatapathLog::Off)]
    datapath_log: DatapathLog,
    /// Destinations left untranslated besides the cluster (repeatable).
    #[arg(long, value_name = "CIDR")]
    no_masquerade: Vec<String>,
    #[command(flatten)]
    attach: AttachArg,
    /// CA certificate (PEM) that etcd's server certificate must chain to; with
    /// it, the endpoints are https://.
    #[arg(long, value_name = "FILE")]
    etcd_cafile: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's --client-cert-auth; needs --etcd-keyfile.
    #[arg(long, value_name = "FILE", requires = "etcd_keyfile")]
    etcd_certfile: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_certfile")]
    etcd_keyfile: Option<PathBuf>,
    /// etcd user (etcd's role-based authentication); needs --etcd-password.
    #[arg(long, requires = "etcd_password")]
    etcd_user: Option<String>,
    /// The etcd user's password; better given in the environment than on the
    /// command line, where every local user can read it.
    #[arg(
        long,
        env = "DR_ETCD_PASSWORD",
        hide_env_values = true,
        requires = "etcd_user"
    )]
    etcd_password: Option<String>,
}

/// The agent's settings, checked.
#[derive(Clone, Debug)]
struct AgentConfig {
    etcd: Vec<String>,
    /// TLS and credentials, read once at start.
    connect: ConnectOptions,
    /// Key prefix, ending in `/`.
    prefix: String,
    /// This host's name in the registry; None: the uplink's address.
    name: Option<String>,
    bridge: String,
    uplink: String,
    xdp: bool,
    /// Level of the datapath's aya-log events.
    datapath_log: u8,
    /// SNAT settings.
    nat: NatPlan,
    /// Where subnets are leased from; every registration must be inside.
    cluster: Ipv4Net,
    /// A fixed subnet to register; None leases a free one from the cluster CIDR.
    subnet: Option<LocalSubnet>,
    subnet_prefix: u8,
    lease_ttl: i64,
    removal_grace: Duration,
    /// How `up` attaches the TC programs; None: TCX where the kernel has it.
    attach: Option<crate::kernel::AttachMode>,
}

impl AgentArgs {
    /// TLS and authentication settings; the files are read now, so that a
    /// wrong path fails at start rather than at each reconnection.
    fn connect_options(&self) -> Result<ConnectOptions> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(io_context(format!("reading {}", path.display())))
        };
        let mut options = ConnectOptions::new();
        if let (Some(user), Some(password)) = (&self.etcd_user, &self.etcd_password) {
            options = options.with_user(user, password);
        }
        let identity = match (&self.etcd_certfile, &self.etcd_keyfile) {
            (Some(cert), Some(key)) => Some(Identity::from_pem(read(cert)?, read(key)?)),
            _ => None,
        };
        if self.etcd_cafile.is_some() || identity.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.etcd_cafile {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let Some(identity) = identity {
                tls = tls.identity(identity);
            }
            options = options.with_tls(tls);
        }
        Ok(options)
    }

    fn config(self) -> Result<AgentConfig> {
        let connect = self.connect_options()?;
        let nat = NatPlan::parse(
            Some(&self.cluster_cidr),
            &self.no_masquerade,
            None,
            None,
            &[],
        )?;
        let subnet = self.subnet.as_deref().map(LocalSubnet::parse).transpose()?;
        let cluster = nat.cluster_cidr.expect("given");
        if let Some(s) = subnet.filter(|s| !cluster.contains(&s.net)) {
            return Err(Error::Invalid(format!(
                "--subnet {} is outside --cluster-cidr {cluster}",
                s.net
            )));
        }
        if self.subnet_prefix < cluster.prefix_len() || self.subnet_prefix > 30 {
            return Err(Error::Invalid(format!(
                "--subnet-prefix {}: between the cluster's /{} and /30",
                self.subnet_prefix,
                cluster.prefix_len()
            )));
        }
        if self.lease_ttl < 1 {
            return Err(Error::Invalid(
                "--lease-ttl must be at least 1 second".into(),
            ));
        }
        let prefix = if self.etcd_prefix.ends_with('/') {
            self.etcd_prefix
        } else {
            format!("{}/", self.etcd_prefix)
        };
        Ok(AgentConfig {
            etcd: self.etcd,
            connect,
            prefix,
            name: self.name,
            bridge: self.bridge,
            uplink: self.uplink,
            xdp: self.xdp,
            datapath_log: self.datapath_log as u8,
            nat,
            cluster,
            subnet,
            subnet_prefix: self.subnet_prefix,
            lease_ttl: self.lease_ttl,
            removal_grace: Duration::from_secs(self.removal_grace),
            attach: self.attach.mode(),
        })
    }
}

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
struct ClusterConfig {
    cluster_cidr: Ipv4Net,
    subnet_prefix: u8,
}

/// A key under `<prefix>subnets/` as read, not yet trusted.
#[derive(Clone, Debug)]
struct Entry {
    value: Vec<u8>,
    /// The revision that created the key: among overlapping registrations,
    /// the earliest claim wins.
    created: i64,
    lease: i64,
}

/// A registration that passed [`check_entry`].
#[derive(Debug)]
struct Valid<'a> {
    key: &'a str,
    registration: Registration,
    subnet: LocalSubnet,
    lease: i64,
}

/// What this agent holds across sessions.
#[derive(Clone, Copy, Debug)]
struct Held {
    /// The subnet the local datapath is up with.
    subnet: LocalSubnet,
    /// The lease it is registered under; it may have expired.
    lease: i64,
}

/// Why a session ended.
enum Stop {
    /// Retrying cannot help (a conflict only an operator can solve).
    Fatal(Error),
    /// Reconnect and start a new session.
    Retry(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Retry(e)
    }
}

/// The error with its causes: tonic's transport errors say what went wrong
/// (an unknown certificate issuer, a refused connection) only in their sources.
fn etcd_err(e: etcd_client::Error) -> Error {
    let mut text = format!("etcd: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    Error::Invalid(text)
}

fn subnet_key(prefix: &str, net: &Ipv4Net) -> String {
    format!("{prefix}subnets/{}-{}", net.network(), net.prefix_len())
}

/// Runs dr-ctl work that may wait on the pin lock (a blocking flock) off the
/// runtime's only thread, so that the lease keepalive and the watch go on.
async fn off_thread<T: Send + 'static>(
    work: impl FnOnce(&tokio::runtime::Handle) -> Result<T> + Send + 'static,
) -> Result<T> {
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || work(&handle))
        .await
        .expect("dr-ctl work does not panic")
}

/// Stores the cluster config if there is none, else checks ours against it.
async fn check_cluster_config(client: &mut Client, args: &AgentConfig) -> Result<(), Stop> {
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

/// Every entry under the prefix, by key, and the store's revision.
async fn registrations(client: &mut Client, prefix: &str) -> Result<(i64, HashMap<String, Entry>)> {
    let resp = client
        .get(
            format!("{prefix}subnets/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .map_err(etcd_err)?;
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
fn check_entry(
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
fn validate<'a>(
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
fn candidates(args: &AgentConfig) -> Vec<LocalSubnet> {
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

/// Puts `record` at its subnet's key under `lease` if `when` holds.
async fn put_if(
    client: &mut Client,
    prefix: &str,
    record: &Registration,
    subnet: &LocalSubnet,
    lease: i64,
    when: Compare,
) -> Result<bool> {
    let key = subnet_key(prefix, &subnet.net);
    let value = serde_json::to_string(record).expect("serializable");
    let put = TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)));
    let resp = client
        .txn(Txn::new().when([when]).and_then([put]))
        .await
        .map_err(etcd_err)?;
    Ok(resp.succeeded())
}

/// Registers this host under `lease`: the key it holds if the lease still
/// lives, its previous incarnation's (same name and address) if there is
/// one, else a free subnet that overlaps no registration. Returns the subnet.
async fn claim(
    client: &mut Client,
    args: &AgentConfig,
    me: &Registration,
    lease: i64,
    held: Option<Held>,
) -> Result<LocalSubnet, Stop> {
    let (_, entries) = registrations(client, &args.prefix).await?;
    let (valid, _) = validate(&args.prefix, &args.cluster, &entries);
    let record = |subnet: &LocalSubnet| Registration {
        subnet: subnet.bip(),
        ..me.clone()
    };
    if let Some(v) = valid.iter().find(|v| v.lease == lease) {
        return Ok(v.subnet);
    }
    // Identity is the claimed key and its lease: a live entry with our name
    // is ours only if it is this host's (a restarted agent); another host
    // with our name is refused, never taken over.
    if let Some(v) = valid.iter().find(|v| v.registration.name == me.name) {
        if v.registration.address != me.address {
            return Err(Stop::Fatal(Error::Conflict(format!(
                "the name {:?} is held by {}'s live registration of {} (lease {:x}); give each agent its own --name",
                me.name, v.registration.address, v.subnet.net, v.lease
            ))));
        }
        if held.is_none_or(|h| h.subnet == v.subnet) {
            let current = entries[v.key].value.clone();
            let moved = put_if(
                client,
                &args.prefix,
                &record(&v.subnet),
                &v.subnet,
                lease,
                Compare::value(v.key, CompareOp::Equal, current),
            )
            .await?;
            if moved {
                return Ok(v.subnet);
            }
            return Err(Stop::Retry(Error::Conflict(format!(
                "{} changed while re-registering",
                v.key
            ))));
        }
    }
    // A host whose datapath is up keeps its subnet or stops: another host may
    // already route it, and the containers here still use it.
    let tries = match held {
        Some(h) => vec![h.subnet],
        None => candidates(args),
    };
    for subnet in tries {
        let key = subnet_key(&args.prefix, &subnet.net);
        if let Some(v) = valid
            .iter()
            .find(|v| crate::subnet::overlaps(&v.subnet.net, &subnet.net))
        {
            if held.is_some() || args.subnet.is_some() {
                return Err(Stop::Fatal(Error::Conflict(format!(
                    "subnet {} overlaps {} registered by host {:?} ({})",
                    subnet.net, v.subnet.net, v.registration.name, v.registration.address
                ))));
            }
            continue;
        }
        if entries.contains_key(&key) {
            // Taken by an entry that is not valid: never overwritten.
            continue;
        }
        let created = put_if(
            client,
            &args.prefix,
            &record(&subnet),
            &subnet,
            lease,
            Compare::create_revision(key.clone(), CompareOp::Equal, 0),
        )
        .await?;
        if !created {
            continue;
        }
        // Another agent may have claimed an overlapping subnet of another
        // length meanwhile: of the two, the earlier claim keeps it.
        let (_, now) = registrations(client, &args.prefix).await?;
        let (valid, _) = validate(&args.prefix, &args.cluster, &now);
        if valid.iter().any(|v| v.key == key) {
            return Ok(subnet);
        }
        client
            .txn(
                Txn::new()
                    .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
                    .and_then([TxnOp::delete(key, None)]),
            )
            .await
            .map_err(etcd_err)?;
        if held.is_some() || args.subnet.is_some() {
            return Err(Stop::Retry(Error::Conflict(format!(
                "subnet {} lost a race to an overlapping claim",
                subnet.net
            ))));
        }
    }
    Err(Stop::Fatal(Error::Conflict(
        "no free subnet left in the cluster CIDR".into(),
    )))
}

/// Renews `lease` every third of its TTL until etcd says it is gone, then
/// reports on `lost`. Runs on its own task: neither a stalled etcd nor a
/// reconcile waiting on the pin lock delays it. Each call is bounded, so a
/// stalled etcd is retried rather than waited on.
async fn keep_alive(
    mut client: Client,
    lease: i64,
    ttl: i64,
    lost: tokio::sync::oneshot::Sender<()>,
) {
    let period = Duration::from_millis((ttl as u64 * 1000 / 3).max(200));
    loop {
        // Opening the keepalive stream renews the lease once.
        match tokio::time::timeout(period, client.lease_keep_alive(lease)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                // "Gone" is an error like any other: ask etcd what it means.
                let left =
                    tokio::time::timeout(period, client.lease_time_to_live(lease, None)).await;
                if let Ok(Ok(left)) = left {
                    if left.ttl() <= 0 {
                        let _ = lost.send(());
                        return;
                    }
                }
                warn!("renewing the lease: {}", etcd_err(e));
            }
            Err(_) => warn!("renewing the lease: no answer from etcd in {period:?}"),
        }
        tokio::time::sleep(period).await;
    }
}

/// Aborts the keepalive when the session ends (the next one decides whether
/// the lease is still worth keeping).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The registrations the peer map follows: the live ones, and those gone
/// less than the grace period ago.
struct Registry {
    live: HashMap<String, Entry>,
    gone: HashMap<String, (Instant, Entry)>,
    /// What the last reconcile ignored, by key: each is logged once.
    ignored: BTreeMap<String, String>,
}

impl Registry {
    fn put(&mut self, key: String, entry: Entry) {
        self.gone.remove(&key);
        self.live.insert(key, entry);
    }

    fn delete(&mut self, key: &str) {
        if let Some(entry) = self.live.remove(key) {
            self.gone.insert(key.to_string(), (Instant::now(), entry));
        }
    }

    /// Forgets what left more than `grace` ago; true if anything did.
    fn expire(&mut self, grace: Duration) -> bool {
        let before = self.gone.len();
        self.gone.retain(|_, (since, _)| since.elapsed() < grace);
        self.gone.len() != before
    }
}

/// Makes the peer map match the other hosts' valid registrations. An entry
/// that does not fit this host (address off the uplink's network, overlap
/// with this host) is skipped with a warning rather than failing the rest.
async fn reconcile(
    nl: &Netlink,
    args: &AgentConfig,
    mine: &str,
    me: &LocalSubnet,
    registry: &mut Registry,
) -> Result<()> {
    let uplink = nl.require_interface(&args.uplink).await?;
    let uplink_nets = nl.ipv4_addresses(uplink.index).await?;
    let all = registry
        .live
        .iter()
        .chain(registry.gone.iter().map(|(k, (_, e))| (k, e)));
    let (valid, mut ignored) = validate(&args.prefix, &args.cluster, all);
    let mut wanted: Vec<(Ipv4Net, Ipv4Addr)> = Vec::new();
    for v in valid.iter().filter(|v| v.key != mine) {
        let peer = (v.subnet.net, v.registration.address);
        match check_peers(&[peer], me, &uplink_nets, &[]) {
            Ok(_) => wanted.push(peer),
            Err(e) => {
                ignored.insert(v.key.to_string(), e.to_string());
            }
        }
    }
    for (key, why) in &ignored {
        if registry.ignored.get(key) != Some(why) {
            warn!("ignoring the registration {key}: {why}");
        }
    }
    registry.ignored = ignored;
    let diff = off_thread(move |rt| rt.block_on(commands::reconcile_peers(&wanted))).await?;
    if !diff.is_empty() {
        info!(
            "peers: +{} ~{} -{} ({} registrations ignored)",
            diff.add.len(),
            diff.change.len(),
            diff.remove.len(),
            registry.ignored.len()
        );
    }
    Ok(())
}

/// One connection's worth of work: register, sync, then follow changes.
/// Returns (with the subnet and lease held) when the connection or the lease
/// is lost; the registry lives on, so that removals keep their grace.
async fn session(
    client: &mut Client,
    nl: &Netlink,
    args: &AgentConfig,
    held: &mut Option<Held>,
    registry: &mut Registry,
) -> Result<(), Stop> {
    let uplink = nl.require_interface(&args.uplink).await?;
    let address = nl
        .ipv4_addresses(uplink.index)
        .await?
        .first()
        .map(|n| n.addr())
        .ok_or_else(|| Error::Invalid(format!("uplink {} has no IPv4 address", args.uplink)))?;
    let me = Registration {
        name: args.name.clone().unwrap_or_else(|| address.to_string()),
        address,
        subnet: String::new(),
    };
    check_cluster_config(client, args).await?;
    let alive = match *held {
        Some(h) => {
            client
                .lease_time_to_live(h.lease, None)
                .await
                .map_err(etcd_err)?
                .ttl()
                > 0
        }
        None => false,
    };
    let lease = match *held {
        Some(h) if alive => h.lease,
        _ => client
            .lease_grant(args.lease_ttl, None)
            .await
            .map_err(etcd_err)?
            .id(),
    };
    let subnet = claim(client, args, &me, lease, *held).await?;
    if held.is_none_or(|h| h.subnet != subnet) {
        let up = UpArgs {
            xdp: args.xdp,
            datapath_log: args.datapath_log,
            bridge: args.bridge.clone(),
            subnet,
            uplink: args.uplink.clone(),
            docker_config: None,
            nat: args.nat.clone(),
            attach: args.attach,
        };
        off_thread(move |rt| rt.block_on(commands::up(&up))).await?;
    }
    if held.is_none_or(|h| h.lease != lease) {
        info!(
            "registered {} as {:?} (lease {lease:x}, ttl {} s)",
            subnet.bip(),
            me.name,
            args.lease_ttl
        );
    }
    *held = Some(Held { subnet, lease });
    let mine = subnet_key(&args.prefix, &subnet.net);
    let (lost_tx, mut lost) = tokio::sync::oneshot::channel();
    let _keeper = AbortOnDrop(tokio::spawn(keep_alive(
        client.clone(),
        lease,
        args.lease_ttl,
        lost_tx,
    )));
    let (revision, entries) = registrations(client, &args.prefix).await?;
    // Keys gone while we were away start their grace now.
    let vanished: Vec<String> = registry
        .live
        .keys()
        .filter(|k| !entries.contains_key(*k))
        .cloned()
        .collect();
    for key in vanished {
        registry.delete(&key);
    }
    for (key, entry) in entries {
        registry.put(key, entry);
    }
    reconcile(nl, args, &mine, &subnet, registry).await?;
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut watch = client
        .watch(format!("{}subnets/", args.prefix), Some(options))
        .await
        .map_err(etcd_err)?;
    let mut expiry = tokio::time::interval(Duration::from_secs(1));
    let mut housekeeping = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = &mut lost => return Err(Stop::Retry(Error::Conflict("lease expired".into()))),
            message = watch.message() => {
                let Some(resp) = message.map_err(etcd_err)? else {
                    return Err(Stop::Retry(Error::Conflict("watch closed".into())));
                };
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    let Ok(key) = kv.key_str() else { continue };
                    match event.event_type() {
                        EventType::Put => registry.put(key.to_string(), Entry {
                            value: kv.value().to_vec(),
                            created: kv.create_revision(),
                            lease: kv.lease(),
                        }),
                        EventType::Delete => registry.delete(key),
                    }
                }
                reconcile(nl, args, &mine, &subnet, registry).await?;
            }
            _ = expiry.tick() => {
                if registry.expire(args.removal_grace) {
                    reconcile(nl, args, &mine, &subnet, registry).await?;
                }
            }
            _ = housekeeping.tick() => {
                // The XDP path's endpoints and expired translations; failures
                // here never end the session.
                if let Err(e) = off_thread(|rt| rt.block_on(commands::sync())).await {
                    warn!("sync: {e}");
                }
                if let Err(e) = off_thread(|_| commands::nat_gc()).await {
                    warn!("nat gc: {e}");
                }
            }
        }
    }
}

/// Runs until killed, reconnecting to etcd as needed.
pub async fn run(args: AgentArgs) -> Result<()> {
    let args = &args.config()?;
    let nl = Netlink::connect()?;
    nl.require_interface(&args.uplink).await?;
    let mut held = None;
    let mut registry = Registry {
        live: HashMap::new(),
        gone: HashMap::new(),
        ignored: BTreeMap::new(),
    };
    loop {
        match Client::connect(&args.etcd, Some(args.connect.clone())).await {
            Ok(mut client) => {
                match session(&mut client, &nl, args, &mut held, &mut registry).await {
                    Err(Stop::Fatal(e)) => return Err(e),
                    Err(Stop::Retry(e)) => warn!("etcd session ended: {e}; reconnecting"),
                    Ok(()) => {}
                }
            }
            Err(e) => warn!("connecting to etcd {:?}: {}", args.etcd, etcd_err(e)),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
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
