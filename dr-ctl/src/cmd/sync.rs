//! `dr-ctl sync`: refresh what dr learns from the kernel.
use dr_common::DatapathConfig;
use serde::Serialize;

use super::Report;
use crate::{
    error::Result,
    netlink::Netlink,
    node::{sync_endpoints, xdp_mode_name, Node},
};

#[derive(Debug, Serialize)]
pub struct SyncReport {
    pub xdp: &'static str,
    pub endpoints: usize,
    /// Learned containers' docker0 ports with dr's port program.
    pub port_hooks: usize,
    /// The uplink MTU the datapath checks container packets against.
    pub uplink_mtu: u32,
}

impl Report for SyncReport {
    fn text(&self) -> String {
        format!(
            "{} local endpoints ({} ports hooked); xdp {}; uplink mtu {}\n",
            self.endpoints, self.port_hooks, self.xdp, self.uplink_mtu
        )
    }
}

/// Refreshes what the datapath learns from the kernel: the local container
/// endpoints it delivers to directly (TC and XDP) and whose docker0 ports
/// get dr's port program, and the uplink's MTU (which may change after
/// `up`). Safe to run at any time (e.g. from a timer).
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
    )
    .await?;
    node.resolve_peer_hosts(&nl, node.maps.peers()?.iter().map(|p| p.peer.via))
        .await;
    let uplink_mtu = nl
        .interface_by_index(config.uplink_ifindex)
        .await?
        .map_or(config.uplink_mtu, |uplink| uplink.mtu);
    if uplink_mtu != config.uplink_mtu {
        node.maps.set_config(&DatapathConfig {
            uplink_mtu,
            ..config
        })?;
    }
    Ok(SyncReport {
        xdp: xdp_mode_name(node.state.xdp_mode),
        endpoints: learned.endpoints,
        port_hooks: learned.port_hooks,
        uplink_mtu,
    })
}
