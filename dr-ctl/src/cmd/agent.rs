//! `dr-ctl agent`: its arguments, checked, handed to [`crate::agent`].
use super::up::{AttachArg, DatapathLog};
use crate::{
    agent::{self, AgentArgs},
    error::{Error, Result},
    nat_plan::NatPlan,
    subnet::LocalSubnet,
};

#[derive(Debug, clap::Args)]
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
}

impl Args {
    /// The checked form of the command line.
    fn check(self) -> Result<AgentArgs> {
        let nat = NatPlan::parse(
            Some(&self.cluster_cidr),
            &self.no_masquerade,
            None,
            None,
            &[],
        )?;
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
        let subnet_prefix = self.subnet_prefix;
        if subnet_prefix < cluster.prefix_len() || subnet_prefix > 30 {
            return Err(Error::Invalid(format!(
                "--subnet-prefix {subnet_prefix}: between the cluster's /{} and /30",
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
        Ok(AgentArgs {
            etcd: self.etcd,
            prefix,
            name: self.name,
            bridge: self.bridge,
            uplink: self.uplink,
            xdp: self.xdp,
            datapath_log: self.datapath_log as u8,
            nat,
            subnet,
            subnet_prefix,
            lease_ttl: self.lease_ttl,
            attach: self.attach.mode(),
        })
    }
}

/// Runs the agent until killed.
pub async fn run(args: Args) -> Result<()> {
    agent::run(&args.check()?).await
}
