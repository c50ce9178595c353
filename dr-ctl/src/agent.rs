//! `dr-ctl agent`: keeps this host's peers in step with the cluster through
//! etcd, in place of editing a plan by hand.
//!
//! Each host registers `<prefix>subnets/<network>-<len>` → `{name, address,
//! subnet}` under a lease that it keeps alive; the key vanishes when the host
//! (or its agent) dies. A subnet is claimed with a transaction that succeeds
//! only if the key does not exist, so two agents never get the same subnet.
//! The agent watches the prefix and reconciles the peer map on every change
//! (upserts before removals). Lost connections, an expired lease or an etcd
//! restart end the session; the next one reconnects, re-registers (keeping
//! the same subnet) and resynchronises. The datapath never waits on etcd:
//! while it is away, the peers last applied keep forwarding.
use std::{collections::HashMap, net::Ipv4Addr, path::PathBuf, time::Duration};

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
    /// Seconds after which a dead host's entry disappears.
    #[arg(long, default_value_t = 5)]
    lease_ttl: i64,
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
    /// SNAT settings; the cluster CIDR is also where subnets are leased from.
    nat: NatPlan,
    /// A fixed subnet to register; None leases a free one from the cluster CIDR.
    subnet: Option<LocalSubnet>,
    subnet_prefix: u8,
    lease_ttl: i64,
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
            subnet,
            subnet_prefix: self.subnet_prefix,
            lease_ttl: self.lease_ttl,
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

/// The subnets a leasing agent tries, in order: its previous one, then every
/// `/len` of the cluster CIDR.
fn candidates(args: &AgentConfig, previous: Option<LocalSubnet>) -> Result<Vec<LocalSubnet>> {
    if let Some(fixed) = args.subnet {
        return Ok(vec![fixed]);
    }
    let cluster = args
        .nat
        .cluster_cidr
        .ok_or_else(|| Error::Invalid("the agent needs --cluster-cidr".into()))?;
    let mut out: Vec<LocalSubnet> = previous.into_iter().collect();
    let subnets = cluster.subnets(args.subnet_prefix).map_err(|_| {
        Error::Invalid(format!(
            "--subnet-prefix {} is shorter than the cluster CIDR",
            args.subnet_prefix
        ))
    })?;
    for net in subnets {
        let gateway = Ipv4Addr::from(u32::from(net.network()) + 1);
        out.push(LocalSubnet { gateway, net });
    }
    Ok(out)
}

/// Registers this host under `lease`, on its previous subnet if it still
/// can. Returns the subnet.
async fn claim(
    client: &mut Client,
    args: &AgentConfig,
    name: &str,
    address: Ipv4Addr,
    lease: i64,
    previous: Option<LocalSubnet>,
) -> Result<LocalSubnet> {
    let registered = registrations(client, &args.prefix).await?.1;
    // After a restart of ours, our own entry (if its lease still lives) wins.
    let mine = registered
        .values()
        .find(|r| r.name == name)
        .and_then(|r| LocalSubnet::parse(&r.subnet).ok());
    for subnet in mine.into_iter().chain(candidates(args, previous)?) {
        let key = subnet_key(&args.prefix, &subnet.net);
        let record = Registration {
            name: name.to_string(),
            address,
            subnet: subnet.bip(),
        };
        let value = serde_json::to_string(&record).expect("serializable");
        let put = TxnOp::put(
            key.clone(),
            value.clone(),
            Some(PutOptions::new().with_lease(lease)),
        );
        let created = client
            .txn(
                Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([put.clone()]),
            )
            .await
            .map_err(etcd_err)?;
        if created.succeeded() {
            return Ok(subnet);
        }
        // Taken: ours (re-registration under a new lease) or another host's.
        let current = client.get(key.clone(), None).await.map_err(etcd_err)?;
        let owner: Option<Registration> = current
            .kvs()
            .first()
            .and_then(|kv| serde_json::from_slice(kv.value()).ok());
        if owner.as_ref().is_some_and(|o| o.name == name) {
            let old = current.kvs()[0].value().to_vec();
            let moved = client
                .txn(
                    Txn::new()
                        .when([Compare::value(key.clone(), CompareOp::Equal, old)])
                        .and_then([put]),
                )
                .await
                .map_err(etcd_err)?;
            if moved.succeeded() {
                return Ok(subnet);
            }
        } else if args.subnet.is_some() {
            return Err(Error::Conflict(format!(
                "subnet {} is registered by host {:?}",
                subnet.net,
                owner.map_or_else(|| "?".to_string(), |o| o.name)
            )));
        }
    }
    Err(Error::Conflict(
        "no free subnet left in the cluster CIDR".into(),
    ))
}

/// Every registration under the prefix, by key, and the store's revision.
async fn registrations(
    client: &mut Client,
    prefix: &str,
) -> Result<(i64, HashMap<String, Registration>)> {
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
        match (
            kv.key_str(),
            serde_json::from_slice::<Registration>(kv.value()),
        ) {
            (Ok(k), Ok(r)) => {
                out.insert(k.to_string(), r);
            }
            _ => warn!("ignoring an unreadable registration"),
        }
    }
    Ok((revision, out))
}

/// Makes the peer map match the registrations of the other hosts. An entry
/// that does not fit this host (bad subnet, address off the uplink's
/// network, overlap) is skipped with a warning rather than failing the rest.
async fn reconcile(
    nl: &Netlink,
    args: &AgentConfig,
    name: &str,
    me: &LocalSubnet,
    regs: &HashMap<String, Registration>,
) -> Result<()> {
    let uplink = nl.require_interface(&args.uplink).await?;
    let uplink_nets = nl.ipv4_addresses(uplink.index).await?;
    let mut wanted: Vec<(Ipv4Net, Ipv4Addr)> = Vec::new();
    let mut others: Vec<&Registration> = regs.values().filter(|r| r.name != name).collect();
    others.sort_by(|a, b| a.subnet.cmp(&b.subnet));
    // Each entry against this host first, then the set as a whole; only if
    // entries overlap each other is the set built one by one (quadratic, rare).
    let mut fitting: Vec<(&Registration, (Ipv4Net, Ipv4Addr))> = Vec::new();
    for r in others {
        let Ok(s) = LocalSubnet::parse(&r.subnet) else {
            warn!("host {:?}: bad subnet {:?}", r.name, r.subnet);
            continue;
        };
        match check_peers(&[(s.net, r.address)], me, &uplink_nets, &[]) {
            Ok(_) => fitting.push((r, (s.net, r.address))),
            Err(e) => warn!("host {:?}: {e}", r.name),
        }
    }
    let all: Vec<_> = fitting.iter().map(|(_, p)| *p).collect();
    if check_peers(&all, me, &uplink_nets, &[]).is_ok() {
        wanted = all;
    } else {
        for (r, peer) in fitting {
            let mut next = wanted.clone();
            next.push(peer);
            match check_peers(&next, me, &uplink_nets, &[]) {
                Ok(_) => wanted = next,
                Err(e) => warn!("host {:?}: {e}", r.name),
            }
        }
    }
    let diff = commands::reconcile_peers(&wanted).await?;
    if !diff.is_empty() {
        info!(
            "peers: +{} ~{} -{}",
            diff.add.len(),
            diff.change.len(),
            diff.remove.len()
        );
    }
    Ok(())
}

/// One connection's worth of work: register, sync, then follow changes.
/// Returns (with the subnet held) when the connection or the lease is lost.
async fn session(
    client: &mut Client,
    nl: &Netlink,
    args: &AgentConfig,
    held: &mut Option<LocalSubnet>,
) -> Result<()> {
    let uplink = nl.require_interface(&args.uplink).await?;
    let address = nl
        .ipv4_addresses(uplink.index)
        .await?
        .first()
        .map(|n| n.addr())
        .ok_or_else(|| Error::Invalid(format!("uplink {} has no IPv4 address", args.uplink)))?;
    let name = args.name.clone().unwrap_or_else(|| address.to_string());
    let lease = client
        .lease_grant(args.lease_ttl, None)
        .await
        .map_err(etcd_err)?
        .id();
    let subnet = claim(client, args, &name, address, lease, *held).await?;
    if *held != Some(subnet) {
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
        commands::up(&up).await?;
        info!(
            "registered {} as {name:?} (lease ttl {} s)",
            subnet.bip(),
            args.lease_ttl
        );
        *held = Some(subnet);
    }
    let (mut keeper, mut keep_alive) = client.lease_keep_alive(lease).await.map_err(etcd_err)?;
    let (revision, mut regs) = registrations(client, &args.prefix).await?;
    reconcile(nl, args, &name, &subnet, &regs).await?;
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut watch = client
        .watch(format!("{}subnets/", args.prefix), Some(options))
        .await
        .map_err(etcd_err)?;
    let mut refresh = tokio::time::interval(Duration::from_millis(
        (args.lease_ttl as u64 * 1000 / 3).max(200),
    ));
    let mut housekeeping = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = refresh.tick() => {
                keeper.keep_alive().await.map_err(etcd_err)?;
                match keep_alive.message().await.map_err(etcd_err)? {
                    Some(r) if r.ttl() > 0 => {}
                    _ => return Err(Error::Conflict("lease lost".into())),
                }
            }
            message = watch.message() => {
                let Some(resp) = message.map_err(etcd_err)? else {
                    return Err(Error::Conflict("watch closed".into()));
                };
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    let Ok(key) = kv.key_str() else { continue };
                    match event.event_type() {
                        EventType::Put => match serde_json::from_slice(kv.value()) {
                            Ok(r) => { regs.insert(key.to_string(), r); }
                            Err(_) => warn!("ignoring an unreadable registration at {key}"),
                        },
                        EventType::Delete => { regs.remove(key); }
                    }
                }
                                reconcile(nl, args, &name, &subnet, &regs).await?;
            }
            _ = housekeeping.tick() => {
                // The XDP path's endpoints and expired translations; failures
                // here never end the session.
                if let Err(e) = commands::sync().await { warn!("sync: {e}"); }
                if let Err(e) = commands::nat_gc() { warn!("nat gc: {e}"); }
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
    loop {
        match Client::connect(&args.etcd, Some(args.connect.clone())).await {
            Ok(mut client) => {
                if let Err(e) = session(&mut client, &nl, args, &mut held).await {
                    if matches!(e, Error::Conflict(ref m) if m.starts_with("subnet ")) {
                        return Err(e);
                    }
                    warn!("etcd session ended: {e}; reconnecting");
                }
            }
            Err(e) => warn!("connecting to etcd {:?}: {}", args.etcd, etcd_err(e)),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
