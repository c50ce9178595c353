//! What `trace` reports: each program's verdict, counters, redirect and
//! rewrites, as text and JSON.
use std::{fmt::Write as _, net::Ipv4Addr};

use serde::Serialize;

use super::headers::{Change, Headers};
use crate::cmd::Report;

/// Where a redirected packet would go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Redirect {
    pub interface: String,
    pub ifindex: u32,
    /// The neighbour it is sent to; None: the packet's destination, by the
    /// routing table.
    pub next_hop: Option<Ipv4Addr>,
    /// Handed to the container behind this docker0 port, not sent out of it.
    pub into_container: bool,
}

/// One program's part.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub program: &'static str,
    /// "pass", "drop", "redirect" (TC) or also "tx", "aborted" (XDP).
    pub verdict: String,
    /// The counters it would have bumped: the verdict's reason.
    pub counters: Vec<&'static str>,
    /// A new SNAT translation would have been made (the port shown is one
    /// free candidate: a real packet draws a random one).
    pub new_translation: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// The header fields it rewrote.
    pub rewritten: Vec<Change>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TraceReport {
    pub packet: Headers,
    pub steps: Vec<Step>,
}

impl Report for TraceReport {
    fn text(&self) -> String {
        let p = &self.packet;
        let (src, dst) = match (p.protocol.as_str(), p.src_port, p.dst_port) {
            ("icmp", Some(id), _) => (format!("{} id {id}", p.src_addr), p.dst_addr.to_string()),
            (_, Some(sport), Some(dport)) => (
                format!("{}:{sport}", p.src_addr),
                format!("{}:{dport}", p.dst_addr),
            ),
            _ => (p.src_addr.to_string(), p.dst_addr.to_string()),
        };
        let mut out = format!("packet: {} {src} -> {dst} ttl {}\n", p.protocol, p.ttl);
        for step in &self.steps {
            let _ = write!(out, "{}: {}", step.program, step.verdict);
            if !step.counters.is_empty() {
                let _ = write!(out, " ({})", step.counters.join(", "));
            }
            out.push('\n');
            match &step.redirect {
                Some(r) if r.into_container => {
                    let _ = writeln!(
                        out,
                        "  into the container behind {} (ifindex {})",
                        r.interface, r.ifindex
                    );
                }
                Some(r) => {
                    let next_hop = r
                        .next_hop
                        .map_or("the destination, by the routing table".into(), |a| {
                            a.to_string()
                        });
                    let _ = writeln!(
                        out,
                        "  out of {} (ifindex {}) toward {next_hop}",
                        r.interface, r.ifindex
                    );
                }
                None => {}
            }
            if step.new_translation {
                out.push_str(
                    "  would create a SNAT translation (its port here is one free \
                     candidate: a real packet draws its own)\n",
                );
            }
            for c in &step.rewritten {
                let _ = writeln!(out, "  {}: {} -> {}", c.field, c.before, c.after);
            }
        }
        out
    }
}
