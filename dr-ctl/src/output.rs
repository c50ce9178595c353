//! Rendering command results for people (tables) and programs (`--json`).
use std::fmt::Write as _;

use serde::{ser::SerializeMap, Serialize, Serializer};

use crate::{
    commands::{
        ApplyReport, Counts, DownReport, NatEntry, PeerReport, PeerStatus, Status, Tuple, UpReport,
    },
    datapath::HookIds,
};

/// Serializes `[(name, value)]` as a JSON object, keeping the order.
pub fn pairs_as_map<S: Serializer, V: Serialize>(
    pairs: &[(&'static str, V)],
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(pairs.len()))?;
    for (k, v) in pairs {
        map.serialize_entry(k, v)?;
    }
    map.end()
}

pub fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("reports serialize")
}

fn counts(c: &Counts) -> String {
    format!("{} pkts {} bytes", c.packets, c.bytes)
}

pub fn up(r: &UpReport) -> String {
    let mut out = String::new();
    if !r.changed {
        let _ = writeln!(out, "dr is already up ({}); nothing changed", r.pin_dir);
        return out;
    }
    if r.created_bridge {
        out.push_str("created bridge\n");
    }
    if r.added_address {
        out.push_str("added bridge address\n");
    }
    if let Some(note) = &r.attach_note {
        let _ = writeln!(out, "note: {note}");
    }
    for (program, how) in &r.attached {
        let _ = writeln!(out, "{program}: {how:?} ({})", r.attach_mode.name());
    }
    if let Some(change) = r.docker_config.as_ref().filter(|c| c.written) {
        let _ = writeln!(
            out,
            "wrote bip{} to daemon.json{}",
            change
                .mtu
                .map_or(String::new(), |mtu| format!(" and mtu {mtu}")),
            change
                .backup
                .as_ref()
                .map_or(String::new(), |b| format!(" (previous file saved as {b})"))
        );
    }
    let _ = writeln!(out, "dr is up; state pinned in {}", r.pin_dir);
    out
}

pub fn down(r: &DownReport) -> String {
    if !r.was_up {
        return "dr was not up; nothing to do\n".into();
    }
    let mut out = String::new();
    if r.removed_bridge {
        out.push_str("removed the bridge created by up\n");
    } else if r.removed_address {
        out.push_str("removed the bridge address added by up\n");
    }
    let _ = writeln!(out, "dr is down; removed {}", r.pin_dir);
    out
}

pub fn peer(r: &PeerReport) -> String {
    match r.via {
        Some(via) => format!("peer {} via {}: {}\n", r.subnet, via, r.change),
        None => format!("peer {}: {}\n", r.subnet, r.change),
    }
}

/// What a `peer add --file` did, in numbers.
#[derive(Debug, Default, serde::Serialize)]
pub struct PeerBatch {
    pub added: usize,
    pub replaced: usize,
    pub unchanged: usize,
}

impl From<&[PeerReport]> for PeerBatch {
    fn from(reports: &[PeerReport]) -> Self {
        let mut b = Self::default();
        for r in reports {
            match r.change {
                "added" => b.added += 1,
                "replaced" => b.replaced += 1,
                _ => b.unchanged += 1,
            }
        }
        b
    }
}

pub fn peer_batch(b: &PeerBatch) -> String {
    format!(
        "peers: {} added, {} replaced, {} unchanged\n",
        b.added, b.replaced, b.unchanged
    )
}

pub fn apply(r: &ApplyReport) -> String {
    let mut out = format!(
        "host {} ({}): subnet {}\nup: {}\n",
        r.host, r.address, r.subnet, r.up
    );
    let d = &r.peers;
    for (net, via) in &d.add {
        let _ = writeln!(out, "+ peer {net} via {via}");
    }
    for (net, old, new) in &d.change {
        let _ = writeln!(out, "~ peer {net} via {old} -> {new}");
    }
    for (net, via) in &d.remove {
        let _ = writeln!(out, "- peer {net} via {via}");
    }
    let _ = writeln!(out, "= {} peers unchanged", d.unchanged);
    if r.dry_run {
        out.push_str("(dry run: nothing changed)\n");
    }
    out
}

pub fn peers(peers: &[PeerStatus]) -> String {
    let mut out = format!(
        "{:<20} {:<16} {:>28} {:>28}\n",
        "SUBNET", "VIA", "TO PEER", "FROM PEER"
    );
    for p in peers {
        let _ = writeln!(
            out,
            "{:<20} {:<16} {:>28} {:>28}",
            p.subnet.to_string(),
            p.via.to_string(),
            counts(&p.to_peer),
            counts(&p.from_peer)
        );
    }
    out
}

pub fn status(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "local subnet: {} (gateway {})",
        s.local_subnet, s.gateway
    );
    let _ = writeln!(
        out,
        "uplink address: {} (mtu {})",
        s.uplink_address, s.uplink_mtu
    );
    let _ = writeln!(out, "pins: {}", s.pin_dir);
    let _ = writeln!(
        out,
        "programs: attached with {}",
        s.attach_mode.map_or("nothing", |m| m.name())
    );
    for h in &s.hooks {
        let state = match &h.ids {
            Some(HookIds {
                link_id: Some(link),
                program_id,
                ..
            }) => format!("attached (tcx link {link}, prog {program_id})"),
            Some(HookIds {
                tc_handle: Some(handle),
                tc_priority,
                program_id,
                ..
            }) => format!(
                "attached (netlink filter pref {} handle {handle}, prog {program_id})",
                tc_priority.unwrap_or_default()
            ),
            _ => "NOT ATTACHED".to_string(),
        };
        let _ = writeln!(
            out,
            "  {:<18} {} {} (ifindex {}): {state}",
            h.program, h.interface, h.direction, h.ifindex
        );
    }
    let _ = writeln!(out, "peers: {}", s.peers.len());
    if !s.peers.is_empty() {
        for line in peers(&s.peers).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    let _ = writeln!(out, "xdp: {} ({} local endpoints)", s.xdp, s.endpoints);
    let n = &s.nat;
    if n.enabled {
        let excluded: Vec<String> = n.excluded.iter().map(|e| e.to_string()).collect();
        let _ = writeln!(
            out,
            "snat: on, ports {}, {} of {} translations, not translated: {}",
            n.ports,
            n.entries,
            n.table_size,
            excluded.join(", ")
        );
    } else {
        out.push_str("snat: off (up --cluster-cidr turns it on)\n");
    }
    out.push_str("counters:\n");
    for (name, c) in &s.counters {
        let _ = writeln!(out, "  {name:<26} {}", counts(c));
    }
    out
}

fn tuple(t: &Tuple, proto: &str) -> String {
    if proto == "icmp" {
        format!("{} id {} -> {}", t.src_addr, t.src_port, t.dst_addr)
    } else {
        format!(
            "{}:{} -> {}:{}",
            t.src_addr, t.src_port, t.dst_addr, t.dst_port
        )
    }
}

pub fn nat_entries(entries: &[NatEntry]) -> String {
    let mut out = format!(
        "{:<5} {:<44} {:<44} {:<12} {:>7} {:>7}\n",
        "PROTO", "ORIGINAL", "TRANSLATED", "STATE", "AGE", "IDLE"
    );
    for e in entries {
        let _ = writeln!(
            out,
            "{:<5} {:<44} {:<44} {:<12} {:>6}s {:>6}s",
            e.proto,
            tuple(&e.original, e.proto),
            tuple(&e.translated, e.proto),
            e.state,
            e.age_secs,
            e.idle_secs
        );
    }
    out
}
