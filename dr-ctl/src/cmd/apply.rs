//! `dr-ctl apply`: bring this host to what the cluster plan says.
use std::{fmt::Write as _, net::Ipv4Addr, path::PathBuf};

use serde::Serialize;

use super::{
    up::{self, AttachArg, MaxPeersArg, UpArgs},
    Report,
};
use crate::{
    error::{io_context, Error, Result},
    maps::{self, Maps},
    nat_plan::NatPlan,
    netlink::Netlink,
    node::{same_subnet, Node, NodeDir},
    peer::{check_peers, PeerDiff},
    plan::Plan,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The cluster plan (TOML), the same file on every host.
    #[arg(long, short = 'f', value_name = "PATH")]
    file: PathBuf,
    /// This host's entry in the plan [default: the entry whose address is local].
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
    /// Print the difference against what is live; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    attach: AttachArg,
    #[command(flatten)]
    max_peers: MaxPeersArg,
}

#[derive(Debug, Serialize)]
pub struct ApplyReport {
    pub host: String,
    pub address: Ipv4Addr,
    pub subnet: String,
    pub dry_run: bool,
    /// What `up` did (or, dry, whether dr is up with this host's subnet).
    pub up: &'static str,
    pub peers: PeerDiff,
}

impl Report for ApplyReport {
    fn text(&self) -> String {
        let mut out = format!(
            "host {} ({}): subnet {}\nup: {}\n",
            self.host, self.address, self.subnet, self.up
        );
        let d = &self.peers;
        for peer in &d.add {
            let _ = writeln!(out, "+ peer {peer}");
        }
        for s in &d.change {
            let _ = writeln!(
                out,
                "~ peer {} via {} -> {}",
                s.peer.subnet, s.old_via, s.peer.via
            );
        }
        for peer in &d.remove {
            let _ = writeln!(out, "- peer {peer}");
        }
        let _ = writeln!(out, "= {} peers unchanged", d.unchanged);
        if self.dry_run {
            out.push_str("(dry run: nothing changed)\n");
        }
        out
    }
}

/// Applies the cluster plan to this host: validates the whole file, finds
/// this host's entry, brings dr up with it, then writes new and switched
/// peers before removing stale ones, so no peer that stays is ever missing.
pub async fn run(args: Args) -> Result<ApplyReport> {
    let file = args.file.display().to_string();
    let text =
        std::fs::read_to_string(&args.file).map_err(io_context(format!("reading {file}")))?;
    let plan = Plan::parse(&file, &text)?;
    let nl = Netlink::connect()?;
    let me = plan
        .this_host(&file, args.host.as_deref(), &nl.all_ipv4_addresses().await?)
        .map_err(|e| match args.host {
            Some(_) => e,
            None => Error::Invalid(format!("{e} (pass --host NAME)")),
        })?;
    let wanted = plan.peers_of(me);
    let uplink = nl.require_interface(&me.uplink).await?;
    let uplink_nets = nl.ipv4_addresses(uplink.index).await?;
    check_peers(&wanted, &me.subnet, &uplink_nets, &[])
        .map_err(|e| Error::Invalid(format!("{file}: host {:?}: {e}", me.name)))?;
    let up_args = UpArgs {
        xdp: plan.xdp,
        datapath_log: 0,
        bridge: plan.bridge.clone(),
        subnet: me.subnet,
        uplink: me.uplink.clone(),
        docker_config: None,
        nat: NatPlan::masquerade_outside(plan.cluster_cidr, plan.no_masquerade.clone()),
        attach: args.attach.mode(),
        max_peers: args.max_peers.check()?,
    };
    let mut report = ApplyReport {
        host: me.name.clone(),
        address: me.address,
        subnet: me.subnet.bip(),
        dry_run: args.dry_run,
        up: "unchanged",
        peers: PeerDiff::default(),
    };
    if args.dry_run {
        let dir = NodeDir::unlocked()?;
        let pins = &dir.pins;
        let maps = if maps::pinned(pins.path()) {
            Some(Maps::open(pins.path())?)
        } else {
            None
        };
        let (config, live) = match &maps {
            Some(m) => (
                Some(m.config()?),
                m.peers()?.iter().map(|p| p.peer).collect(),
            ),
            None => (None, Vec::new()),
        };
        report.up = match config.filter(|c| c.enabled != 0) {
            Some(c) if same_subnet(&c, &me.subnet) => "up with this subnet",
            Some(_) => "up with ANOTHER subnet: apply would fail; run `dr-ctl down` first",
            None => "would be brought up",
        };
        report.peers = PeerDiff::between(&live, &wanted);
        return Ok(report);
    }
    report.up = if up::up(&up_args).await?.changed {
        "changed"
    } else {
        "unchanged"
    };
    report.peers = Node::open()?.reconcile_peers(&wanted).await?;
    Ok(report)
}
