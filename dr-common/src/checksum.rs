//! Internet checksum arithmetic (RFC 1071, incremental update per RFC 1624).
//!
//! Pure functions, so the datapath and the tests compute checksums the same way
//! and the arithmetic is unit-tested on the host.

/// Folds a 32-bit one's-complement sum to 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Updates checksum `check` (as stored, i.e. complemented) for a 16-bit field
/// changing from `old` to `new`: HC' = ~(~HC + ~m + m') (RFC 1624, eqn. 3).
/// All values are in the same byte order as the packet (read with `from_ne_bytes`).
#[inline(always)]
pub fn replace_u16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check as u32) + (!old as u32) + new as u32;
    !fold(sum)
}

/// Like [`replace_u16`] for a 32-bit field (an IPv4 address).
#[inline(always)]
pub fn replace_u32(check: u16, old: u32, new: u32) -> u16 {
    let sum = (!check as u32) + (!old & 0xffff) + (!old >> 16) + (new & 0xffff) + (new >> 16);
    !fold(sum)
}

/// One's-complement sum of `data` as native-order 16-bit words (an odd last
/// byte padded with zero), not yet folded, so that the sums of adjacent
/// pieces add up before [`fold`]. Fixed-size: the datapath's loop has a
/// constant bound the verifier accepts.
#[inline(always)]
pub fn sum<const N: usize>(data: &[u8; N]) -> u32 {
    let mut total = 0u32;
    let mut i = 0;
    while i + 1 < N {
        total += u16::from_ne_bytes([data[i], data[i + 1]]) as u32;
        i += 2;
    }
    if N % 2 == 1 {
        total += u16::from_ne_bytes([data[N - 1], 0]) as u32;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full RFC 1071 checksum over `data`, read as native-order 16-bit words
    /// (the same convention the incremental helpers use).
    fn full(data: &[u8]) -> u16 {
        let mut sum = 0u32;
        for chunk in data.chunks(2) {
            let word = [chunk[0], *chunk.get(1).unwrap_or(&0)];
            sum += u16::from_ne_bytes(word) as u32;
        }
        !fold(sum)
    }

    fn header() -> [u8; 20] {
        let mut h = [
            0x45, 0, 0, 84, 0x12, 0x34, 0x40, 0, 64, 1, 0, 0, 10, 0, 128, 2, 10, 0, 129, 2,
        ];
        let c = full(&h).to_ne_bytes();
        h[10] = c[0];
        h[11] = c[1];
        h
    }

    #[test]
    fn full_checksum_of_valid_header_is_zero() {
        assert_eq!(full(&header()), 0);
    }

    #[test]
    fn ttl_decrement_matches_recomputation() {
        for ttl in 1..=255u8 {
            let mut h = header();
            h[8] = ttl;
            h[10] = 0;
            h[11] = 0;
            let c = full(&h).to_ne_bytes();
            h[10] = c[0];
            h[11] = c[1];
            let old = u16::from_ne_bytes([h[8], h[9]]);
            h[8] = ttl - 1;
            let new = u16::from_ne_bytes([h[8], h[9]]);
            let check = replace_u16(u16::from_ne_bytes([h[10], h[11]]), old, new);
            h[10..12].copy_from_slice(&check.to_ne_bytes());
            assert_eq!(full(&h), 0, "ttl {ttl}");
        }
    }

    #[test]
    fn address_rewrite_matches_recomputation() {
        let addrs = [
            [0u8, 0, 0, 0],
            [255, 255, 255, 255],
            [192, 168, 91, 128],
            [10, 0, 129, 77],
        ];
        for new in addrs {
            let mut h = header();
            let old = u32::from_ne_bytes([h[12], h[13], h[14], h[15]]);
            h[12..16].copy_from_slice(&new);
            let check = replace_u32(
                u16::from_ne_bytes([h[10], h[11]]),
                old,
                u32::from_ne_bytes(new),
            );
            h[10..12].copy_from_slice(&check.to_ne_bytes());
            assert_eq!(full(&h), 0, "{new:?}");
            let mut again = h;
            again[10] = 0;
            again[11] = 0;
            assert_eq!(full(&again).to_ne_bytes(), [h[10], h[11]]);
        }
    }

    #[test]
    fn sum_of_pieces_folds_to_the_full_checksum() {
        let h = header();
        assert_eq!(!fold(sum(&h)), 0);
        let (a, b): ([u8; 8], [u8; 12]) = (h[..8].try_into().unwrap(), h[8..].try_into().unwrap());
        assert_eq!(!fold(sum(&a) + sum(&b)), 0);
        let odd = [0x12u8, 0x34, 0x56];
        assert_eq!(!fold(sum(&odd)), full(&odd));
    }
}
