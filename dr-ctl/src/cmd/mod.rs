//! One module per dr-ctl command: its arguments, what it does, and its
//! report as text (for people) and JSON (`--json`, for programs).
pub mod agent;
pub mod apply;
pub mod down;
pub mod metrics;
pub mod monitor;
pub mod nat;
pub mod peer;
pub mod status;
pub mod sync;
pub mod trace;
pub mod up;

use dr_common::Traffic;
use serde::{ser::SerializeMap, Serialize, Serializer};

/// What a command prints.
pub trait Report: Serialize {
    /// The text form, ending in a newline.
    fn text(&self) -> String;
}

/// `report` as text, or as JSON with `json`.
pub fn render(report: &impl Report, json: bool) -> String {
    if json {
        serde_json::to_string_pretty(report).expect("reports serialize") + "\n"
    } else {
        report.text()
    }
}

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

/// Packet and byte counts, as reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub packets: u64,
    pub bytes: u64,
}

impl From<Traffic> for Counts {
    fn from(t: Traffic) -> Self {
        Self {
            packets: t.packets,
            bytes: t.bytes,
        }
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} pkts {} bytes", self.packets, self.bytes)
    }
}
