//! `dr-ctl sync`: refresh what dr learns from the kernel.
use dr_common::DatapathConfig;
use serde::Serialize;

use super::Report;
use crate::{
    error::Result,
    netlink::Netlink,
    node::{sync_endpoints, sync_published, xdp_mode_name, Node},
    published::PublishedPorts,
};

#[derive(Debug, Serialize)]
pub struct SyncReport {
    pub xdp: &'static str,
    pub endpoints: usize,
    /// Of the endpoints, those XDP delivers to (with native XDP, those
    /// whose container has GRO on); 0 without XDP.
    pub xdp_endpoints: usize,
    /// Learned containers' docker0 ports with dr's port program.
    pub port_hooks: usize,
    /// The uplink MTU the datapath checks container packets against.
    pub uplink_mtu: u32,
    /// Docker's published ports dr translates, and those left to the kernel.
    pub published: PublishedPorts,
}

impl Report for SyncReport {
    fn text(&self) -> String {
        let mut text = format!(
            "{} local endpoints ({} ports hooked); xdp {}{}; uplink mtu {}; {} published ports translated by dr\n",
            self.endpoints,
            self.port_hooks,
            self.xdp,
            if self.xdp == "off" {
                String::new()
            } else {
                format!(" ({} endpoints)", self.xdp_endpoints)
            },
            self.uplink_mtu,
            self.published.offloaded.len()
        );
        for port in &self.published.offloaded {
            text += &format!("  published {port}\n");
        }
        for left in &self.published.left_to_kernel {
            text += &format!("  left to the kernel: {}", left.reason);
            if !left.rule.is_empty() {
                text += &format!(" ({})", left.rule);
            }
            text += "\n";
        }
        text
    }
}

/// Refreshes what the datapath learns from the kernel: the local container
/// endpoints it delivers to directly (TC and XDP) and whose docker0 ports
/// get dr's port program, the uplink's MTU (which may change after `up`),
/// and Docker's published ports. Safe to run at any time (e.g. from a
/// timer).
pub async fn run() -> Result<SyncReport> {
    let mut node = Node::open()?;
    let config = node.config;
    let nl = Netlink::connect()?;
    let local = node.local_subnet()?;
    let learned = sync_endpoints(
        &nl,
        &mut node.maps,
        &node.dir.pins,
        config.bridge_ifindex,
        &local.net,
        false,
        node.state.xdp_mode,
    )
    .await?;
    node.resolve_peer_hosts(&nl, node.maps.peers()?.iter().map(|p| p.peer.via))
        .await;
    let uplink = nl.interface_by_index(config.uplink_ifindex).await?;
    let uplink_mtu = uplink
        .as_ref()
        .map_or(config.uplink_mtu, |uplink| uplink.mtu);
    let uplink_name = uplink.map(|uplink| uplink.name).unwrap_or_default();
    let published = sync_published(&mut node.maps, &config, &uplink_name)?;
    if uplink_mtu != config.uplink_mtu {
        node.maps.set_config(&DatapathConfig {
            uplink_mtu,
            ..config
        })?;
    }
    Ok(SyncReport {
        xdp: xdp_mode_name(node.state.xdp_mode),
        endpoints: learned.endpoints,
        xdp_endpoints: learned.xdp_ready,
        port_hooks: learned.port_hooks,
        uplink_mtu,
        published,
    })
}
