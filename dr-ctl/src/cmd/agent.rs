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
//! change (upserts before removals; removals after a grace period, during
//! which `<prefix>released/` keeps other hosts from claiming the subnet). Lost
//! connections, an expired lease or an etcd restart end the session; the
//! next one reconnects, keeps or renews its registration (keeping the same
//! subnet) and resynchronises. The datapath never waits on etcd: while it is
//! away, the peers last applied keep forwarding.
mod args;
mod claim;
mod lease;
mod registry;

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use etcd_client::{Client, ConnectOptions, EventType, WatchOptions};
use ipnet::Ipv4Net;
use tracing::{info, warn};

pub use self::args::Args;
use self::{
    claim::claim,
    lease::{keep_alive, AbortOnDrop},
    registry::{
        check_cluster_config, record_release, registrations, subnet_key, validate, Entry,
        Registration, Registry,
    },
};
use crate::{
    cmd::{
        nat, sync,
        up::{self, UpArgs},
    },
    error::{Error, Result},
    nat_plan::NatPlan,
    netlink::Netlink,
    node::Node,
    peer::{check_peers, Peer},
    service,
    subnet::LocalSubnet,
};

/// The agent's settings, checked (`Args::check` builds them).
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub etcd: Vec<String>,
    /// TLS and credentials, read once at start.
    pub connect: ConnectOptions,
    /// Key prefix, ending in `/`.
    pub prefix: String,
    /// This host's name in the registry; None: the uplink's address.
    pub name: Option<String>,
    pub bridge: String,
    pub uplink: String,
    pub xdp: bool,
    /// Level of the datapath's aya-log events.
    pub datapath_log: u8,
    /// SNAT settings.
    pub nat: NatPlan,
    /// Where subnets are leased from; every registration must be inside.
    pub cluster: Ipv4Net,
    /// A fixed subnet to register; None leases a free one from the cluster CIDR.
    pub subnet: Option<LocalSubnet>,
    pub subnet_prefix: u8,
    pub lease_ttl: i64,
    pub removal_grace: Duration,
    /// How `up` attaches the TC programs; None: TCX where the kernel has it.
    pub attach: Option<crate::kernel::AttachMode>,
    /// `up --max-peers`.
    pub max_peers: Option<u32>,
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
/// Internal, not `Invalid`: etcd failing is not the input's fault.
fn etcd_err(e: etcd_client::Error) -> Error {
    let mut text = format!("etcd: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    Error::Internal(text)
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
    let mut wanted: Vec<Peer> = Vec::new();
    for v in valid.iter().filter(|v| v.key != mine) {
        let peer = Peer {
            subnet: v.subnet.net,
            via: v.registration.address,
        };
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
    let diff =
        off_thread(move |rt| rt.block_on(async { Node::open()?.reconcile_peers(&wanted).await }))
            .await?;
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
    // Kept alive from now on: bringing the datapath up below can take
    // longer than a short lease (verifying the programs on a busy host), and
    // a lease that lapses meanwhile takes the registration with it.
    let (lost_tx, mut lost) = tokio::sync::oneshot::channel();
    let _keeper = AbortOnDrop(tokio::spawn(keep_alive(
        client.clone(),
        lease,
        args.lease_ttl,
        lost_tx,
    )));
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
            max_peers: args.max_peers,
        };
        off_thread(move |rt| rt.block_on(up::up(&up))).await?;
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
    // The datapath is up and its peers match etcd: a Type=notify unit is
    // started (again after a reconnection, which systemd ignores).
    crate::service::ready("the agent");
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
                        EventType::Delete => {
                            if let Some(gone) = registry.delete(key) {
                                if let Err(e) = record_release(
                                    client, &args.prefix, key, &gone.value, args.removal_grace,
                                ).await {
                                    warn!("recording the release of {key}: {e}");
                                }
                            }
                        }
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
                // The endpoints of direct delivery and expired translations; failures
                // here never end the session.
                if let Err(e) = off_thread(|rt| rt.block_on(sync::run())).await {
                    warn!("sync: {e}");
                }
                if let Err(e) = off_thread(|_| nat::gc()).await {
                    warn!("nat gc: {e}");
                }
            }
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT (or a fatal conflict).
pub async fn run(args: Args) -> Result<()> {
    let config = args.check()?;
    service::until_terminated(serve(&config)).await.map(|_| ())
}

/// Runs until stopped, reconnecting to etcd as needed.
async fn serve(args: &AgentConfig) -> Result<()> {
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
