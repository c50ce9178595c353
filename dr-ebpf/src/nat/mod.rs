//! SNAT for container traffic to external destinations, in place of
//! `iptables ... -j MASQUERADE`, split by concern as Cilium's
//! `bpf/lib/nat.h` keeps its table operations apart from its rewrites:
//! - `table.rs`: the connection table (lookup, port allocation, expiry,
//!   reclaiming), shared with `dr_nat_sweep`;
//! - `rewrite.rs`: where each protocol keeps its ports and checksum, and
//!   the address and port rewrite;
//! - `egress.rs`: container -> external (`snat_out`);
//! - `ingress.rs`: external -> container, replies (`to_uplink_address`);
//! - `published.rs`: published ports dr translates (DNAT) and their answers;
//! - `icmp_error.rs`: ICMP errors quoting a translated packet.
//!
//! Headers are read and written in place where they sit in the skb's
//! linear data (a helper call costs more than the access); TCP and UDP
//! checksums go through the `l4_csum_replace` helper, which keeps them right
//! for CHECKSUM_PARTIAL skbs (as veth produces) where direct arithmetic on
//! the field would not. ICMP errors are never CHECKSUM_PARTIAL: their
//! rewrite is all arithmetic (`icmp_error.rs`).
mod egress;
mod icmp_error;
mod ingress;
mod published;
mod rewrite;
mod table;

pub use egress::{excluded, snat_out};
pub use ingress::{live_reply, reply_key, to_uplink_address, touch_reply, LiveReply};
pub use published::published_target;
pub use rewrite::layout;
pub use table::{expired, release_dead, remove_translation};

pub const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;
