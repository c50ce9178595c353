//! The counters in the Prometheus text exposition format, printed once or
//! served over HTTP (`http.rs`). This part reads the pinned maps and names
//! the series; every family is declared in [`FAMILIES`], which the tests
//! hold the served output, the Grafana dashboard and the alert rules to.
use std::fmt::Write as _;

use dr_common::Counter;

use crate::{
    datapath::{hook_ids, Hook},
    error::Result,
    maps,
    node::{xdp_mode_name, NodeDir},
};

mod http;

pub use http::{serve, MAX_CONNECTIONS};

/// A metric family: its name, Prometheus type and help text.
pub struct Family {
    pub name: &'static str,
    pub kind: &'static str,
    pub help: &'static str,
}

const fn family(name: &'static str, kind: &'static str, help: &'static str) -> Family {
    Family { name, kind, help }
}

pub const BUILD_INFO: Family = family("dr_build_info", "gauge", "dr-ctl's version (value 1).");
pub const DATAPATH_UP: Family = family(
    "dr_datapath_up",
    "gauge",
    "1 when dr's maps are pinned in this network namespace (dr is up).",
);
pub const HOOK_ATTACHED: Family = family(
    "dr_datapath_hook_attached",
    "gauge",
    "1 when the TC program of this hook is attached.",
);
pub const FORWARDED_PACKETS: Family = family(
    "dr_forwarded_packets_total",
    "counter",
    "Packets the datapath forwarded, by direction.",
);
pub const FORWARDED_BYTES: Family = family(
    "dr_forwarded_bytes_total",
    "counter",
    "Bytes the datapath forwarded, by direction.",
);
pub const PASSED_PACKETS: Family = family(
    "dr_passed_packets_total",
    "counter",
    "Packets left to the kernel stack, by reason.",
);
pub const DROPPED_PACKETS: Family = family(
    "dr_dropped_packets_total",
    "counter",
    "Packets the datapath dropped, by reason.",
);
pub const DROPPED_BYTES: Family = family(
    "dr_dropped_bytes_total",
    "counter",
    "Bytes the datapath dropped, by reason.",
);
pub const FRAG_NEEDED: Family = family(
    "dr_icmp_frag_needed_total",
    "counter",
    "Container packets too big for the uplink, answered with ICMP fragmentation needed, by the DF bit.",
);
pub const NAT_EVENTS: Family = family(
    "dr_nat_events_total",
    "counter",
    "SNAT table events: translations created, expired, collected by gc, evicted; remote RSTs/FINs ignored as out of window.",
);
pub const NAT_ENTRIES: Family = family(
    "dr_nat_table_entries",
    "gauge",
    "Entries in the SNAT table, live or expired (both occupy it until reclaimed).",
);
pub const NAT_LIVE: Family = family("dr_nat_translations", "gauge", "Live SNAT translations.");
pub const NAT_CAPACITY: Family = family(
    "dr_nat_table_capacity",
    "gauge",
    "Capacity of the SNAT table.",
);
pub const XDP_PACKETS: Family = family(
    "dr_xdp_packets_total",
    "counter",
    "Frames the XDP fast path redirected to a container or left to TC.",
);
pub const XDP_ENDPOINTS: Family = family(
    "dr_xdp_endpoints",
    "gauge",
    "Local containers dr delivers to directly (TC and XDP; the name is older than TC's use).",
);
pub const XDP_INFO: Family = family(
    "dr_xdp_info",
    "gauge",
    "The XDP fast path's attach mode (value 1).",
);
pub const PEERS: Family = family("dr_peers", "gauge", "Peer subnets in the map.");
pub const PEER_PACKETS: Family = family(
    "dr_peer_packets_total",
    "counter",
    "Packets to and from each peer subnet (see --peer-series).",
);
pub const PEER_BYTES: Family = family(
    "dr_peer_bytes_total",
    "counter",
    "Bytes to and from each peer subnet (see --peer-series).",
);
pub const PEER_OMITTED: Family = family(
    "dr_peer_series_omitted",
    "gauge",
    "Peer subnets left without series by --peer-series.",
);

/// Every family dr-ctl serves while dr is up.
pub const FAMILIES: [&Family; 20] = [
    &BUILD_INFO,
    &DATAPATH_UP,
    &HOOK_ATTACHED,
    &FORWARDED_PACKETS,
    &FORWARDED_BYTES,
    &PASSED_PACKETS,
    &DROPPED_PACKETS,
    &DROPPED_BYTES,
    &FRAG_NEEDED,
    &NAT_EVENTS,
    &NAT_ENTRIES,
    &NAT_LIVE,
    &NAT_CAPACITY,
    &XDP_PACKETS,
    &XDP_ENDPOINTS,
    &XDP_INFO,
    &PEERS,
    &PEER_PACKETS,
    &PEER_BYTES,
    &PEER_OMITTED,
];

/// Where a datapath counter goes: its families (packets, and bytes where
/// they mean something) and label.
struct Placement {
    packets: &'static Family,
    bytes: Option<&'static Family>,
    label: (&'static str, &'static str),
}

fn placement(c: Counter) -> Placement {
    let forwarded = |direction| Placement {
        packets: &FORWARDED_PACKETS,
        bytes: Some(&FORWARDED_BYTES),
        label: ("direction", direction),
    };
    let dropped = |reason| Placement {
        packets: &DROPPED_PACKETS,
        bytes: Some(&DROPPED_BYTES),
        label: ("reason", reason),
    };
    let only = |packets, label| Placement {
        packets,
        bytes: None,
        label,
    };
    match c {
        Counter::ToPeer => forwarded("to_peer"),
        Counter::FromPeer => forwarded("from_peer"),
        Counter::HostToPeer => forwarded("host_to_peer"),
        Counter::NatOut => forwarded("nat_out"),
        Counter::NatIn => forwarded("nat_in"),
        Counter::NatIcmpErrorIn => forwarded("nat_icmp_error_in"),
        Counter::PublishedIn => forwarded("published_in"),
        Counter::PublishedOut => forwarded("published_out"),
        Counter::DropSpoofed => dropped("spoofed_source"),
        Counter::DropTtlExceeded => dropped("ttl_exceeded"),
        Counter::DropRedirectFailed => dropped("redirect_failed"),
        Counter::DropNatPortsExhausted => dropped("nat_ports_exhausted"),
        Counter::DropNatTableFull => dropped("nat_table_full"),
        Counter::DropNatFragment => dropped("nat_fragment"),
        Counter::Passed => only(&PASSED_PACKETS, ("reason", "not_dr_traffic")),
        Counter::Malformed => only(&PASSED_PACKETS, ("reason", "malformed")),
        Counter::InboundReply => only(&PASSED_PACKETS, ("reason", "inbound_reply")),
        Counter::NatFragmentIn => only(&PASSED_PACKETS, ("reason", "nat_fragment_in")),
        Counter::IcmpFragNeeded => only(&FRAG_NEEDED, ("df", "set")),
        Counter::IcmpFragNeededNoDf => only(&FRAG_NEEDED, ("df", "unset")),
        Counter::NatCreated => only(&NAT_EVENTS, ("event", "created")),
        Counter::NatExpired => only(&NAT_EVENTS, ("event", "expired")),
        Counter::NatExpiredGc => only(&NAT_EVENTS, ("event", "expired_gc")),
        Counter::NatEvicted => only(&NAT_EVENTS, ("event", "evicted")),
        Counter::NatTeardownOutOfWindow => only(&NAT_EVENTS, ("event", "teardown_out_of_window")),
        Counter::XdpRedirect => only(&XDP_PACKETS, ("action", "redirect")),
        Counter::XdpPass => only(&XDP_PACKETS, ("action", "pass")),
    }
}

/// The exposition being written: samples grouped under their family's
/// HELP and TYPE, in [`FAMILIES`] order.
struct Exposition {
    samples: [Vec<String>; FAMILIES.len()],
}

impl Exposition {
    fn new() -> Self {
        Self {
            samples: std::array::from_fn(|_| Vec::new()),
        }
    }

    fn sample(&mut self, family: &Family, labels: &[(&str, &str)], value: u64) {
        let mut line = family.name.to_string();
        if !labels.is_empty() {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            let _ = write!(line, "{{{}}}", labels.join(","));
        }
        let _ = write!(line, " {value}");
        let index = FAMILIES
            .iter()
            .position(|f| f.name == family.name)
            .expect("every family is listed in FAMILIES");
        self.samples[index].push(line);
    }

    fn finish(self) -> String {
        let mut out = String::new();
        for (family, lines) in FAMILIES.iter().zip(self.samples) {
            if lines.is_empty() {
                continue;
            }
            let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
            let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
            for line in lines {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }
}

/// The current metrics: read from the pinned maps when dr is up; only
/// `dr_build_info` and `dr_datapath_up 0` when it is not.
pub fn render(peer_series: usize) -> Result<String> {
    let mut out = Exposition::new();
    out.sample(&BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))], 1);
    // Never waits behind a long `up`: a scrape reads without the node lock.
    let dir = NodeDir::unlocked()?;
    if !dir.pins.exists() {
        out.sample(&DATAPATH_UP, &[], 0);
        return Ok(out.finish());
    }
    out.sample(&DATAPATH_UP, &[], 1);
    for hook in Hook::TC {
        let attached = hook_ids(&dir.pins, hook)?.is_some();
        out.sample(&HOOK_ATTACHED, &[("hook", hook.name())], attached.into());
    }
    let node = dir.open()?;
    let (maps, config) = (&node.maps, &node.config);
    for (counter, traffic) in maps.counters()? {
        let p = placement(counter);
        out.sample(p.packets, &[p.label], traffic.packets);
        if let Some(bytes) = p.bytes {
            out.sample(bytes, &[p.label], traffic.bytes);
        }
    }
    let peers = maps.peers()?;
    out.sample(&PEERS, &[], peers.len() as u64);
    for p in peers.iter().take(peer_series) {
        let t = maps.peer_traffic(p.slot)?;
        let (subnet, via) = (p.peer.subnet.to_string(), p.peer.via.to_string());
        for (direction, tr) in [("to_peer", t.to_peer), ("from_peer", t.from_peer)] {
            let labels = [
                ("subnet", &*subnet),
                ("via", &*via),
                ("direction", direction),
            ];
            out.sample(&PEER_PACKETS, &labels, tr.packets);
            out.sample(&PEER_BYTES, &labels, tr.bytes);
        }
    }
    out.sample(
        &PEER_OMITTED,
        &[],
        peers.len().saturating_sub(peer_series) as u64,
    );
    let now = maps::monotonic_ns();
    let flows = maps.nat_translations()?;
    let live = flows
        .iter()
        .filter(|t| !t.expired(now, &config.nat_timeouts))
        .count();
    out.sample(&NAT_ENTRIES, &[], flows.len() as u64);
    out.sample(&NAT_LIVE, &[], live as u64);
    out.sample(
        &NAT_CAPACITY,
        &[],
        maps::nat_table_size(node.pins().path())?.into(),
    );
    out.sample(&XDP_ENDPOINTS, &[], maps.endpoints()?.len() as u64);
    out.sample(
        &XDP_INFO,
        &[("mode", xdp_mode_name(node.state.xdp_mode))],
        1,
    );
    Ok(out.finish())
}
