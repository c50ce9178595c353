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
    /// The uplink MTU the datapath checks container packets against.
    pub uplink_mtu: u32,
}

impl Report for SyncReport {
    fn text(&self) -> String {
        format!(
            "{} local endpoints; xdp {}; uplink mtu {}\n",
            self.endpoints, self.xdp, self.uplink_mtu
        )
    }
}

/// Refreshes what the datapath learns from the kernel: the local container
/// endpoints it delivers to directly (TC and XDP), and the uplink's MTU (which may change
/// after `up`). Safe to run at any time (e.g. from a timer).
pub async fn run() -> Result<SyncReport> {
    let mut node = Node::open()?;
    let config = node.config;
    let nl = Netlink::connect()?;
    let local = node.local_subnet()?;
    let endpoints = sync_endpoints(&nl, &mut node.maps, config.bridge_ifindex, &local.net).await?;
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
        endpoints,
        uplink_mtu,
    })
}
