//! The fuzzer's tools: a deterministic random source, the IPv4 view of a
//! frame it mutates, checksum repair and the mutations themselves.
use dr_common::nat::{IPPROTO_TCP, IPPROTO_UDP};

use super::super::*;

pub const IPPROTO_ICMP: u8 = 1;

/// Addresses a mutation picks from: every class the programs tell apart.
pub const ADDRESSES: [[u8; 4]; 14] = [
    CONTAINER,
    OTHER_CONTAINER,
    GATEWAY,
    BROADCAST,
    [10, 0, 128, 0],
    PEER_CONTAINER,
    [10, 0, 129, 255],
    PEER_HOST,
    UPLINK_ADDR,
    EXTERNAL,
    [172, 16, 3, 4],
    [224, 0, 0, 251],
    [255, 255, 255, 255],
    ROUTER,
];

/// xorshift64*: deterministic, so a failure reproduces.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// The IPv4 header of a frame, if it is one dr could have parsed.
pub struct Ip<'a> {
    pub header: &'a [u8],
    /// Header and payload, `total_len` long.
    pub packet: &'a [u8],
}

impl<'a> Ip<'a> {
    pub fn parse(frame: &'a [u8]) -> Option<Self> {
        let ip = frame.get(14..)?;
        if frame[12..14] != [8, 0] || ip.len() < 20 || ip[0] >> 4 != 4 {
            return None;
        }
        let ihl = usize::from(ip[0] & 0xf) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        (ihl >= 20 && ihl <= total && total <= ip.len()).then(|| Self {
            header: &ip[..ihl],
            packet: &ip[..total],
        })
    }

    pub fn src(&self) -> [u8; 4] {
        self.header[12..16].try_into().unwrap()
    }

    pub fn dst(&self) -> [u8; 4] {
        self.header[16..20].try_into().unwrap()
    }

    pub fn ttl(&self) -> u8 {
        self.header[8]
    }

    pub fn proto(&self) -> u8 {
        self.header[9]
    }

    pub fn fragment(&self) -> bool {
        u16::from_be_bytes([self.header[6], self.header[7]]) & 0x3fff != 0
    }

    pub fn l4(&self) -> &[u8] {
        &self.packet[self.header.len()..]
    }

    pub fn port(&self, at: usize) -> Option<u16> {
        self.l4()
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn header_checksum_ok(&self) -> bool {
        fold(sum(self.header)) == 0xffff
    }

    /// Whether the L4 checksum is right; None where it cannot be told (a
    /// fragment, a truncated header, UDP without checksum, another protocol).
    pub fn l4_checksum_ok(&self) -> Option<bool> {
        let l4 = self.l4();
        if self.fragment() {
            return None;
        }
        let total = match self.proto() {
            IPPROTO_ICMP if l4.len() >= 8 => sum(l4),
            IPPROTO_TCP if l4.len() >= 20 => sum(l4) + self.pseudo_header(l4.len()),
            IPPROTO_UDP if l4.len() >= 8 && l4[6..8] != [0, 0] => {
                sum(l4) + self.pseudo_header(l4.len())
            }
            _ => return None,
        };
        Some(fold(total) == 0xffff)
    }

    pub fn pseudo_header(&self, len: usize) -> u32 {
        sum(&self.header[12..20]) + u32::from(self.proto()) + len as u32
    }

    pub fn checksums_ok(&self) -> bool {
        self.header_checksum_ok() && self.l4_checksum_ok() != Some(false)
    }
}

pub fn sum(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

pub fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Rewrites the IP and (where it can be computed) L4 checksums of `frame`.
pub fn repair_checksums(frame: &mut [u8]) {
    let Some((ihl, total, proto, fragment)) =
        Ip::parse(frame).map(|ip| (ip.header.len(), ip.packet.len(), ip.proto(), ip.fragment()))
    else {
        return;
    };
    let ip = &mut frame[14..14 + total];
    ip[10..12].fill(0);
    let check = !fold(sum(&ip[..ihl]));
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    let at = match proto {
        IPPROTO_ICMP => 2,
        IPPROTO_TCP => 16,
        IPPROTO_UDP => 6,
        _ => return,
    };
    let len = total - ihl;
    if fragment || len < at + 2 || (proto == IPPROTO_TCP && len < 20) {
        return;
    }
    ip[ihl + at..ihl + at + 2].fill(0);
    let mut total_sum = sum(&ip[ihl..]);
    if proto != IPPROTO_ICMP {
        total_sum += sum(&ip[12..20]) + u32::from(proto) + len as u32;
    }
    let mut check = !fold(total_sum);
    if proto == IPPROTO_UDP && check == 0 {
        check = 0xffff;
    }
    ip[ihl + at..ihl + at + 2].copy_from_slice(&check.to_be_bytes());
}

/// One random change to a frame.
pub fn mutate(rng: &mut Rng, frame: &mut Vec<u8>) {
    let ip = 14;
    let ihl = usize::from(frame[ip] & 0xf) * 4;
    let l4 = ip + ihl.max(20);
    match rng.below(12) {
        0 => {
            // Any byte after the Ethernet header.
            let at = ip + rng.below(frame.len() - ip);
            frame[at] = rng.byte();
        }
        1 => frame.truncate(34 + rng.below(frame.len() - 33)),
        2 => {
            // Options: grow the header, keeping the total length honest.
            let words = 1 + rng.below(10);
            let options: Vec<u8> = (0..words * 4)
                .map(|_| [1, 0, rng.byte()][rng.below(3)])
                .collect();
            frame.splice(ip + 20..ip + 20, options);
            frame[ip] = 0x40 | (5 + words) as u8;
            let total = u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]) + words as u16 * 4;
            frame[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
        }
        3 => frame[ip] = 0x40 | rng.byte() & 0xf,
        4 => {
            // DF, MF and the fragment offset.
            let flags = [0x4000u16, 0x2000, 0, 0x2000 | 1, 0x0003, 0x1fff][rng.below(6)];
            frame[ip + 6..ip + 8].copy_from_slice(&flags.to_be_bytes());
        }
        5 => frame[ip + 9] = [IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, rng.byte()][rng.below(4)],
        6 => {
            let at = ip + [12, 16][rng.below(2)];
            frame[at..at + 4].copy_from_slice(&ADDRESSES[rng.below(ADDRESSES.len())]);
        }
        7 => {
            // TCP flags (where TCP's would be).
            if let Some(b) = frame.get_mut(l4 + 13) {
                *b = rng.byte();
            }
        }
        8 => {
            let at = l4 + 2 * rng.below(2);
            if frame.len() >= at + 2 {
                let port = [rng.next() as u16, 53, 80, 10000, 32767][rng.below(5)];
                frame[at..at + 2].copy_from_slice(&port.to_be_bytes());
            }
        }
        9 => {
            let total = (rng.next() % 1600) as u16;
            frame[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
        }
        10 => frame[ip + 8] = [0, 1, 2, rng.byte()][rng.below(4)],
        _ => {
            // Inside an ICMP error's quote (or the L4 payload).
            if frame.len() > l4 + 8 {
                let at = l4 + 8 + rng.below(frame.len() - l4 - 8);
                frame[at] = rng.byte();
            }
        }
    }
}
