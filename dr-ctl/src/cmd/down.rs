//! `dr-ctl down`: detach and unpin the datapath and remove what `up` created.
use std::fmt::Write as _;

use dr_common::{OWNED_ADDRESS, OWNED_BRIDGE};
use ipnet::Ipv4Net;
use serde::Serialize;

use super::Report;
use crate::{
    datapath::{self, Hook},
    error::Result,
    maps, migrate,
    netlink::Netlink,
    node::{self, local_subnet, side_ifindex, NodeDir},
};

#[derive(Debug, Serialize)]
pub struct DownReport {
    pub was_up: bool,
    pub pin_dir: String,
    pub removed_bridge: bool,
    pub removed_address: bool,
}

impl Report for DownReport {
    fn text(&self) -> String {
        if !self.was_up {
            return "dr was not up; nothing to do\n".into();
        }
        let mut out = String::new();
        if self.removed_bridge {
            out.push_str("removed the bridge created by up\n");
        } else if self.removed_address {
            out.push_str("removed the bridge address added by up\n");
        }
        let _ = writeln!(out, "dr is down; removed {}", self.pin_dir);
        out
    }
}

pub async fn run() -> Result<DownReport> {
    let dir = NodeDir::lock()?;
    let pins = &dir.pins;
    let mut report = DownReport {
        was_up: pins.exists(),
        pin_dir: pins.display().to_string(),
        removed_bridge: false,
        removed_address: false,
    };
    if !report.was_up {
        return Ok(report);
    }
    let (config, state) = if maps::pinned(pins.path()) {
        let config = migrate::pinned_config(pins.path())?;
        (config, node::state::pinned(pins.path(), &config)?)
    } else {
        Default::default()
    };
    let nl = Netlink::connect()?;
    // The ports first: their program sends to the uplink.
    let ports = match config.bridge_ifindex {
        0 => Vec::new(),
        bridge => nl.bridge_ports(bridge).await?,
    };
    datapath::unhook_ports(pins, &ports)?;
    // In reverse of `up`'s order: XDP first.
    for hook in Hook::ALL.into_iter().rev() {
        let iface = nl
            .interface_by_index(side_ifindex(&config, hook.side()))
            .await?;
        datapath::detach(pins, hook, iface.as_ref().map(|i| i.name.as_str()))?;
    }
    let bridge = nl.interface_by_index(config.bridge_ifindex).await?;
    if let Some(bridge) = bridge.filter(|_| config.enabled != 0) {
        if state.owned & OWNED_BRIDGE != 0 {
            nl.delete_interface(bridge.index).await?;
            report.removed_bridge = true;
        } else if state.owned & OWNED_ADDRESS != 0 {
            let local = local_subnet(&config)?;
            let bip =
                Ipv4Net::new(local.gateway, local.net.prefix_len()).expect("a valid prefix length");
            nl.delete_address(bridge.index, bip).await?;
            report.removed_address = true;
        }
    }
    datapath::remove_map_pins(pins)?;
    migrate::discard(pins.path())?;
    pins.remove()?;
    Ok(report)
}
