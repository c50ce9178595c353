//! The header fields of a traced frame, and what a program rewrote in them.
use std::net::Ipv4Addr;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use serde::Serialize;

/// The IPv4 and L4 header fields trace reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Headers {
    pub src_mac: String,
    pub dst_mac: String,
    pub src_addr: Ipv4Addr,
    pub dst_addr: Ipv4Addr,
    pub ttl: u8,
    /// "tcp", "udp", "icmp" or the protocol number.
    pub protocol: String,
    /// TCP/UDP port, or the ICMP echo identifier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    /// ICMP type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
}

fn mac(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Headers {
    /// The headers of an Ethernet/IPv4 frame; None for anything else.
    pub(super) fn of(frame: &[u8]) -> Option<Self> {
        let packet = SlicedPacket::from_ethernet(frame).ok()?;
        let Some(NetSlice::Ipv4(ip)) = &packet.net else {
            return None;
        };
        let ip = ip.header();
        let (src_port, dst_port, icmp_type) = match &packet.transport {
            Some(TransportSlice::Tcp(t)) => {
                (Some(t.source_port()), Some(t.destination_port()), None)
            }
            Some(TransportSlice::Udp(u)) => {
                (Some(u.source_port()), Some(u.destination_port()), None)
            }
            Some(TransportSlice::Icmpv4(i)) => {
                let echo_id = match i.header().icmp_type {
                    etherparse::Icmpv4Type::EchoRequest(e)
                    | etherparse::Icmpv4Type::EchoReply(e) => Some(e.id),
                    _ => None,
                };
                (echo_id, None, Some(i.type_u8()))
            }
            _ => (None, None, None),
        };
        let protocol = match ip.protocol().0 {
            6 => "tcp".to_string(),
            17 => "udp".to_string(),
            1 => "icmp".to_string(),
            n => n.to_string(),
        };
        Some(Self {
            src_mac: mac(&frame[6..12]),
            dst_mac: mac(&frame[0..6]),
            src_addr: ip.source_addr(),
            dst_addr: ip.destination_addr(),
            ttl: ip.ttl(),
            protocol,
            src_port,
            dst_port,
            icmp_type,
        })
    }

    /// The fields that differ in `after`, as (field, before, after).
    pub(super) fn changes(&self, after: &Headers) -> Vec<Change> {
        let opt = |p: Option<u16>| p.map_or("-".into(), |p| p.to_string());
        let icmp = |t: Option<u8>| t.map_or("-".into(), |t| t.to_string());
        [
            ("src_mac", self.src_mac.clone(), after.src_mac.clone()),
            ("dst_mac", self.dst_mac.clone(), after.dst_mac.clone()),
            (
                "src_addr",
                self.src_addr.to_string(),
                after.src_addr.to_string(),
            ),
            (
                "dst_addr",
                self.dst_addr.to_string(),
                after.dst_addr.to_string(),
            ),
            ("ttl", self.ttl.to_string(), after.ttl.to_string()),
            ("protocol", self.protocol.clone(), after.protocol.clone()),
            ("src_port", opt(self.src_port), opt(after.src_port)),
            ("dst_port", opt(self.dst_port), opt(after.dst_port)),
            ("icmp_type", icmp(self.icmp_type), icmp(after.icmp_type)),
        ]
        .into_iter()
        .filter(|(_, before, after)| before != after)
        .map(|(field, before, after)| Change {
            field,
            before,
            after,
        })
        .collect()
    }
}

/// A header field the program rewrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub field: &'static str,
    pub before: String,
    pub after: String,
}
