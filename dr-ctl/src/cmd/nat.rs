//! `dr-ctl nat`: inspect and manage SNAT translations.
use std::{fmt::Write as _, net::Ipv4Addr};

use dr_common::{
    nat::{State, IPPROTO_TCP, IPPROTO_UDP},
    DatapathConfig,
};
use serde::Serialize;

use super::{render, Report};
use crate::{
    datapath::Sweeper,
    error::Result,
    maps::{self, Maps},
    node::Node,
    subnet::from_map_addr,
};

#[derive(Debug, clap::Subcommand)]
pub enum NatCommand {
    /// List live translations: protocol, original and translated tuples, state, age.
    #[command(alias = "show")]
    List,
    /// Remove every translation (their flows break; new ones start afresh).
    Flush,
    /// Remove expired translations now (the datapath ignores them anyway).
    Gc,
}

/// One side of a translation.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Tuple {
    pub src_addr: Ipv4Addr,
    /// For ICMP echo: the identifier.
    pub src_port: u16,
    pub dst_addr: Ipv4Addr,
    pub dst_port: u16,
}

impl Tuple {
    fn text(&self, proto: &str) -> String {
        if proto == "icmp" {
            format!(
                "{} id {} -> {}",
                self.src_addr, self.src_port, self.dst_addr
            )
        } else {
            format!(
                "{}:{} -> {}:{}",
                self.src_addr, self.src_port, self.dst_addr, self.dst_port
            )
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct NatEntry {
    pub proto: &'static str,
    pub original: Tuple,
    pub translated: Tuple,
    pub state: &'static str,
    /// Where its packets go beyond the uplink, as the FIB last said (at
    /// most a route period ago); none when the kernel routes them.
    pub next_hop: Option<Ipv4Addr>,
    pub age_secs: u64,
    pub idle_secs: u64,
    pub expires_in_secs: u64,
}

#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct NatTable(pub Vec<NatEntry>);

impl Report for NatTable {
    fn text(&self) -> String {
        let mut out = format!(
            "{:<5} {:<44} {:<44} {:<12} {:<15} {:>7} {:>7}\n",
            "PROTO", "ORIGINAL", "TRANSLATED", "STATE", "VIA", "AGE", "IDLE"
        );
        for e in &self.0 {
            let _ = writeln!(
                out,
                "{:<5} {:<44} {:<44} {:<12} {:<15} {:>6}s {:>6}s",
                e.proto,
                e.original.text(e.proto),
                e.translated.text(e.proto),
                e.state,
                e.next_hop.map_or("-".to_string(), |a| a.to_string()),
                e.age_secs,
                e.idle_secs
            );
        }
        out
    }
}

#[derive(Debug, Serialize)]
pub struct NatRemoved {
    pub removed: u64,
    /// "" or "expired ", for the text.
    #[serde(skip)]
    which: &'static str,
}

impl Report for NatRemoved {
    fn text(&self) -> String {
        format!("removed {} {}translations\n", self.removed, self.which)
    }
}

pub fn run(command: NatCommand, json: bool) -> Result<String> {
    Ok(match command {
        NatCommand::List => {
            let node = Node::open()?;
            render(
                &NatTable(live_translations(&node.maps, &node.config)?),
                json,
            )
        }
        NatCommand::Flush => {
            let node = Node::open()?;
            let removed = NatRemoved {
                removed: Sweeper::open(node.pins().path())?.flush(&node.maps)?,
                which: "",
            };
            render(&removed, json)
        }
        NatCommand::Gc => render(&gc()?, json),
    })
}

/// Removes expired translations.
pub fn gc() -> Result<NatRemoved> {
    let node = Node::open()?;
    Ok(NatRemoved {
        removed: Sweeper::open(node.pins().path())?.gc(&node.maps, &node.config.nat_timeouts)?,
        which: "expired ",
    })
}

/// Translations that have not expired, oldest first.
pub fn live_translations(maps: &Maps, config: &DatapathConfig) -> Result<Vec<NatEntry>> {
    let now = maps::monotonic_ns();
    let secs = |ns: u64| ns / 1_000_000_000;
    let mut out = Vec::new();
    for translation in maps.nat_translations()? {
        if translation.expired(now, &config.nat_timeouts) {
            continue;
        }
        let (key, flow) = (translation.key, translation.flow);
        let state = flow.current_state();
        let timeout = state.map_or(0, |s| s.timeout_secs(&config.nat_timeouts)) as u64;
        let idle = now.saturating_sub(translation.last_seen_ns());
        let dst = (from_map_addr(key.dst_addr), u16::from_be(key.dst_port));
        out.push(NatEntry {
            proto: match key.proto {
                IPPROTO_TCP => "tcp",
                IPPROTO_UDP => "udp",
                _ => "icmp",
            },
            original: Tuple {
                src_addr: from_map_addr(key.src_addr),
                src_port: u16::from_be(key.src_port),
                dst_addr: dst.0,
                dst_port: dst.1,
            },
            translated: Tuple {
                src_addr: from_map_addr(config.uplink_addr),
                src_port: u16::from_be(flow.nat_port),
                dst_addr: dst.0,
                dst_port: dst.1,
            },
            state: state.map_or("unknown", State::name),
            next_hop: (flow.next_hop != 0).then(|| from_map_addr(flow.next_hop)),
            age_secs: secs(now.saturating_sub(flow.created_ns)),
            idle_secs: secs(idle),
            expires_in_secs: (timeout * 1_000_000_000)
                .saturating_sub(idle)
                .div_ceil(1_000_000_000),
        });
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.age_secs));
    Ok(out)
}
