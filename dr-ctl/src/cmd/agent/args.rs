//! `dr-ctl agent`'s arguments: as given on the command line, and checked
//! into [`AgentConfig`].
use std::{path::PathBuf, time::Duration};

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

use super::AgentConfig;
use crate::{
    cmd::up::{nat_from_flags, AttachArg, DatapathLog, MaxPeersArg, NatFlags},
    error::{io_context, Error, Result},
    subnet::LocalSubnet,
};

#[derive(Clone, Debug, clap::Args)]
pub struct Args {
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
    #[command(flatten)]
    max_peers: MaxPeersArg,
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

impl Args {
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

    /// The checked form of the command line.
    pub(super) fn check(self) -> Result<AgentConfig> {
        let connect = self.connect_options()?;
        let nat = nat_from_flags(NatFlags {
            cluster_cidr: Some(&self.cluster_cidr),
            no_masquerade: &self.no_masquerade,
            ..NatFlags::default()
        })?;
        let subnet = self
            .subnet
            .as_deref()
            .map(|s| LocalSubnet::parse_as("--subnet", s))
            .transpose()?;
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
            max_peers: self.max_peers.check()?,
        })
    }
}
