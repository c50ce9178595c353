//! `dr_uplink_ingress` with SNAT on, ICMP errors: an error (types 3, 11,
//! 12) about a translated packet is translated back with its quote (outer
//! destination, quoted source address and port, quoted IP and L4
//! checksums, folded into the ICMP checksum) and redirected to the
//! container; one about a packet never translated goes to the host.
//!
//! ```text
//!  CONTAINER:40000 ──[dr_bridge_ingress, SNAT]──> UPLINK_ADDR:port ──> ROUTER 192.168.91.254 (TTL exceeded, frag needed, port unreachable)
//!  CONTAINER <──TC_ACT_REDIRECT── docker0 <── [dr_uplink_ingress] <── ICMP error to UPLINK_ADDR quoting UPLINK_ADDR:port -> EXTERNAL
//!    quoting CONTAINER:40000 -> EXTERNAL, as the container sent it (TTL 63)
//!  maps: DATAPATH_CONFIG (nat_enabled), NAT_EXCLUDE, NAT_FLOWS/NAT_REVERSE (filled by the packet out)
//! ```
use etherparse::{icmpv4, Icmpv4Type};

use super::*;

#[test]
fn icmp_errors_about_translated_packets_are_translated_with_their_quote() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    let kinds = [
        Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit),
        Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: 1280,
        }),
        Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port),
    ];
    for l4 in ALL_L4 {
        // What the container sent, and what left the host after SNAT.
        let sent = frame(CONTAINER, EXTERNAL, 64, l4);
        let (_, translated) = dp.run(Hook::BridgeIngress, &sent);
        // The container's packet as the router saw it: TTL 63, original addresses.
        let original = frame(CONTAINER, EXTERNAL, 63, l4);
        // Whole quotes, and quotes cut after 8 bytes of L4 (the TCP checksum is then absent).
        for quote_len in [translated.len() - 14, 20 + 8] {
            for kind in &kinds {
                let error = icmp_error(
                    UPLINK_ADDR,
                    kind.clone(),
                    &translated[14..14 + quote_len],
                    60,
                );
                let (verdict, out) = dp.run(Hook::UplinkIngress, &error);
                assert_eq!(verdict, TC_ACT_REDIRECT, "{l4:?} {kind:?}");
                let expected =
                    icmp_error(CONTAINER, kind.clone(), &original[14..14 + quote_len], 59);
                assert_eq!(out, expected, "{l4:?} {kind:?} quote {quote_len}");
            }
        }
    }
    assert_eq!(dp.counter(Counter::NatIcmpErrorIn).packets, 3 * 2 * 3);
    // An error about a packet that was never translated goes to the host.
    let stranger = frame(UPLINK_ADDR, [203, 0, 113, 99], 63, L4::Udp);
    let error = icmp_error(UPLINK_ADDR, kinds[0].clone(), &stranger[14..], 60);
    assert_eq!(
        dp.run(Hook::UplinkIngress, &error),
        (TC_ACT_OK, error.clone())
    );
}
