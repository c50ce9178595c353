//! The peer span: the smallest IPv4 prefix that holds every peer subnet,
//! kept in `DatapathConfig::peer_span` by dr-ctl. An address outside it
//! belongs to no peer, and the programs skip the `PEER_SUBNETS` lookup (an
//! LPM trie walk, the dearest step of a SNAT packet's way after the NAT
//! table) for it: external destinations, the host's own traffic to the
//! world.
//!
//! Encoded in the config's one spare `u32`, so that the pinned layout does
//! not change: the prefix's network as a number (host order, not network
//! order), with the bit just past the prefix length set as a marker. The
//! lowest set bit thus gives the length. A `/32` is widened to its `/31`
//! (a wider span only costs a lookup). 0, what an older dr-ctl wrote, has
//! no marker and holds every address: such a datapath looks every address
//! up, as before.

/// Holds every address (an older dr-ctl's config, or a peer `0.0.0.0/0`).
pub const EVERY_ADDRESS: u32 = 0;

/// No peers: holds only `0.0.0.0/31`, which no packet dr forwards carries.
pub const NO_PEERS: u32 = encode(0, 31);

/// The mask of the prefix `span` encodes (0 for [`EVERY_ADDRESS`]).
#[inline(always)]
const fn mask(span: u32) -> u32 {
    let marker = span & span.wrapping_neg();
    !(marker.wrapping_shl(1).wrapping_sub(1))
}

/// The span for the prefix `net/len` (host-order address); lengths past 31
/// are taken as 31.
pub const fn encode(net: u32, len: u8) -> u32 {
    let len = if len > 31 { 31 } else { len };
    let marker = 1u32 << (31 - len);
    (net & mask(marker)) | marker
}

/// Whether `addr` (network order, as packets and maps hold it) lies in
/// `span`: only then may it belong to a peer subnet.
#[inline(always)]
pub fn holds(span: u32, addr: u32) -> bool {
    let mask = mask(span);
    u32::from_be(addr) & mask == span & mask
}

/// The smallest span holding every subnet `(network, prefix length)`
/// (host-order networks); [`NO_PEERS`] for none.
pub fn of(subnets: impl IntoIterator<Item = (u32, u8)>) -> u32 {
    let mut subnets = subnets.into_iter();
    let Some((first, first_len)) = subnets.next() else {
        return NO_PEERS;
    };
    let mut len = first_len.min(32);
    for (net, prefix_len) in subnets {
        len = len.min(prefix_len).min((first ^ net).leading_zeros() as u8);
    }
    encode(first, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    fn net(a: [u8; 4], len: u8) -> (u32, u8) {
        (u32::from_be_bytes(a), len)
    }

    #[test]
    fn a_span_holds_its_subnets_and_nothing_past_its_prefix() {
        let span = of([net([10, 0, 129, 0], 24), net([10, 0, 130, 0], 24)]);
        // 10.0.128.0/22: the first 22 bits both share.
        assert_eq!(span, encode(u32::from_be_bytes([10, 0, 128, 0]), 22));
        for inside in [[10, 0, 129, 7], [10, 0, 130, 255], [10, 0, 128, 0]] {
            assert!(holds(span, addr(inside)), "{inside:?}");
        }
        for outside in [
            [10, 0, 132, 1],
            [203, 0, 113, 7],
            [10, 1, 129, 7],
            [0, 0, 0, 0],
        ] {
            assert!(!holds(span, addr(outside)), "{outside:?}");
        }
    }

    #[test]
    fn the_span_is_no_longer_than_the_shortest_subnet() {
        let span = of([net([10, 0, 0, 0], 8), net([10, 0, 129, 0], 24)]);
        assert!(holds(span, addr([10, 200, 1, 1])));
        assert!(!holds(span, addr([11, 0, 0, 1])));
    }

    #[test]
    fn a_single_address_peer_widens_to_its_pair() {
        let span = of([net([192, 168, 7, 9], 32)]);
        assert!(holds(span, addr([192, 168, 7, 9])));
        assert!(holds(span, addr([192, 168, 7, 8])));
        assert!(!holds(span, addr([192, 168, 7, 10])));
    }

    #[test]
    fn zero_and_a_default_route_peer_hold_every_address() {
        let default_route = of([net([0, 0, 0, 0], 0)]);
        for span in [EVERY_ADDRESS, default_route] {
            for a in [[0, 0, 0, 0], [10, 0, 0, 1], [255, 255, 255, 255]] {
                assert!(holds(span, addr(a)), "{span:#x} {a:?}");
            }
        }
        // Subnets on both halves of the address space share no bit.
        let halves = of([net([10, 0, 0, 0], 24), net([200, 0, 0, 0], 24)]);
        assert!(holds(halves, addr([150, 1, 2, 3])));
    }

    #[test]
    fn no_peers_hold_nothing_a_packet_carries() {
        assert_eq!(of([]), NO_PEERS);
        assert!(!holds(NO_PEERS, addr([10, 0, 129, 1])));
        assert!(!holds(NO_PEERS, addr([0, 0, 0, 2])));
    }
}
