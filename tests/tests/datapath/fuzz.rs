//! Mutated frames through every program. Seeds are valid frames of every
//! path (peer, SNAT out and back, ICMP errors, peer hosts, path MTU); each
//! round mutates one (lengths, IHL and options, flags and fragments,
//! protocol, TCP flags, addresses, ports, quoted packets, random bytes),
//! usually repairs its checksums, and runs it through all five programs
//! against one datapath whose NAT and inbound tables fill up as it goes.
//!
//! Invariants, on every redirect:
//! - checksums: a frame whose IP and L4 checksums were right leaves with
//!   right ones (dr's own ICMP answers always);
//! - docker0 ingress only forwards what a local container sent, to a peer,
//!   a peer host or (translated to the uplink's address) outside the cluster
//!   and never to a multicast or broadcast address;
//! - uplink ingress and XDP only deliver to a container address of the local
//!   subnet, and a translated reply only to the container that owns the
//!   translation (its flow is in `NAT_FLOWS`);
//! - uplink egress only redirects to a peer subnet; docker0 egress never
//!   changes a verdict.
use std::net::Ipv4Addr;

use dr_common::nat::{IPPROTO_TCP, IPPROTO_UDP};
use etherparse::{icmpv4, Icmpv4Type};

use super::*;

const ROUNDS: usize = 100_000;
const IPPROTO_ICMP: u8 = 1;

/// Addresses a mutation picks from: every class the programs tell apart.
const ADDRESSES: [[u8; 4]; 14] = [
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
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn in_net(addr: [u8; 4], net: [u8; 3]) -> bool {
    addr[..3] == net
}

const LOCAL_NET: [u8; 3] = [10, 0, 128];
const PEER_NET: [u8; 3] = [10, 0, 129];

/// A container address of the local subnet (not network, gateway, broadcast).
fn local_container(addr: [u8; 4]) -> bool {
    in_net(addr, LOCAL_NET) && ![0, 1, 255].contains(&addr[3])
}

/// The IPv4 header of a frame, if it is one dr could have parsed.
struct Ip<'a> {
    header: &'a [u8],
    /// Header and payload, `total_len` long.
    packet: &'a [u8],
}

impl<'a> Ip<'a> {
    fn parse(frame: &'a [u8]) -> Option<Self> {
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

    fn src(&self) -> [u8; 4] {
        self.header[12..16].try_into().unwrap()
    }

    fn dst(&self) -> [u8; 4] {
        self.header[16..20].try_into().unwrap()
    }

    fn ttl(&self) -> u8 {
        self.header[8]
    }

    fn proto(&self) -> u8 {
        self.header[9]
    }

    fn fragment(&self) -> bool {
        u16::from_be_bytes([self.header[6], self.header[7]]) & 0x3fff != 0
    }

    fn l4(&self) -> &[u8] {
        &self.packet[self.header.len()..]
    }

    fn port(&self, at: usize) -> Option<u16> {
        self.l4()
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn header_checksum_ok(&self) -> bool {
        fold(sum(self.header)) == 0xffff
    }

    /// Whether the L4 checksum is right; None where it cannot be told (a
    /// fragment, a truncated header, UDP without checksum, another protocol).
    fn l4_checksum_ok(&self) -> Option<bool> {
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

    fn pseudo_header(&self, len: usize) -> u32 {
        sum(&self.header[12..20]) + u32::from(self.proto()) + len as u32
    }

    fn checksums_ok(&self) -> bool {
        self.header_checksum_ok() && self.l4_checksum_ok() != Some(false)
    }
}

fn sum(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Rewrites the IP and (where it can be computed) L4 checksums of `frame`.
fn repair_checksums(frame: &mut [u8]) {
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
fn mutate(rng: &mut Rng, frame: &mut Vec<u8>) {
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

/// An ICMP destination unreachable from `from` about `quoted` (an IP packet, from its header).
fn unreachable(
    from: [u8; 4],
    to: [u8; 4],
    quoted: &[u8],
    kind: icmpv4::DestUnreachableHeader,
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(from, to, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(kind))
        .write(&mut out, &quoted[..quoted.len().min(28 + 40)])
        .unwrap();
    out
}

/// Valid frames of every path; replies use the ports the datapath gave.
fn seeds(dp: &mut Datapath) -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for l4 in ALL_L4 {
        seeds.push(frame(CONTAINER, PEER_CONTAINER, 64, l4));
        seeds.push(frame(PEER_CONTAINER, CONTAINER, 63, l4));
        seeds.push(frame(PEER_HOST, CONTAINER, 64, l4));
        let out = frame(CONTAINER, EXTERNAL, 64, l4);
        let (verdict, translated) = dp.run(Hook::BridgeIngress, &out);
        assert_eq!(verdict, TC_ACT_REDIRECT, "setup: {l4:?} translated");
        let sent = Ip::parse(&translated).unwrap();
        let port = sent
            .port(if matches!(l4, L4::Icmp) { 4 } else { 0 })
            .unwrap();
        let (_, dport) = default_ports(l4);
        seeds.push(out);
        seeds.push(match l4 {
            L4::Icmp => {
                let mut reply = Vec::new();
                PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                    .ipv4(EXTERNAL, UPLINK_ADDR, 60)
                    .icmpv4_echo_reply(port, 7)
                    .write(&mut reply, PAYLOAD)
                    .unwrap();
                reply
            }
            _ => frame_ports(EXTERNAL, UPLINK_ADDR, 60, l4, dport, port),
        });
        seeds.push(unreachable(
            ROUTER,
            UPLINK_ADDR,
            sent.packet,
            icmpv4::DestUnreachableHeader::Port,
        ));
    }
    // Too big for the uplink (1400 bytes), with and without DF.
    let mut big = frame_ports(CONTAINER, PEER_CONTAINER, 64, L4::Udp, SRC_PORT, 53);
    big.resize(1460, 0x5a);
    let total = (big.len() - 14) as u16;
    big[16..18].copy_from_slice(&total.to_be_bytes());
    big[38..40].copy_from_slice(&(total - 20).to_be_bytes()); // UDP length
    big[20] = 0x40;
    repair_checksums(&mut big);
    let mut no_df = big.clone();
    no_df[20] = 0;
    repair_checksums(&mut no_df);
    seeds.extend([big, no_df]);
    seeds.extend(non_ipv4_frames());
    for seed in &mut seeds {
        let before = seed.clone();
        repair_checksums(seed);
        if Ip::parse(seed).is_some_and(|ip| ip.proto() != IPPROTO_UDP || ip.l4()[6..8] != [0, 0]) {
            assert_eq!(*seed, before, "seeds are built with right checksums");
        }
    }
    seeds
}

/// Checks one program's verdict on `input`; returns a description of the
/// broken invariant.
fn check(dp: &Datapath, hook: &str, verdict: u32, input: &[u8], out: &[u8]) -> Result<(), String> {
    let redirect = match hook {
        "xdp" => verdict == XDP_REDIRECT,
        _ => verdict == TC_ACT_REDIRECT,
    };
    if !redirect {
        if hook == "bridge_egress" && verdict != TC_ACT_OK {
            return Err(format!("docker0 egress returned {verdict}"));
        }
        return Ok(());
    }
    let inp = Ip::parse(input).ok_or("redirected a frame that is not sound IPv4")?;
    let outp = Ip::parse(out).ok_or("redirected frame is not sound IPv4")?;
    let answer = outp.proto() == IPPROTO_ICMP && outp.dst() == inp.src() && outp.src() == GATEWAY;
    if (answer || inp.checksums_ok()) && !outp.checksums_ok() {
        return Err(format!(
            "wrong checksum out (IP ok: {}, L4 ok: {:?})",
            outp.header_checksum_ok(),
            outp.l4_checksum_ok()
        ));
    }
    let (src, dst) = (inp.src(), inp.dst());
    match hook {
        "bridge_ingress" => {
            if !local_container(src) {
                return Err("forwarded a source outside the local subnet".into());
            }
            if answer {
                return (outp.l4()[0] == 3 && outp.l4()[1] == 4)
                    .then_some(())
                    .ok_or_else(|| "dr's answer is not frag-needed".into());
            }
            if outp.dst() != dst || outp.ttl() + 1 != inp.ttl() {
                return Err("forwarded with another destination or TTL".into());
            }
            let translated = outp.src() == UPLINK_ADDR;
            if !translated && outp.src() != src {
                return Err("source rewritten to something else than the uplink".into());
            }
            let to_cluster = in_net(dst, [10, 0, 129]) || dst == PEER_HOST;
            if !translated && !to_cluster {
                return Err("untranslated to a non-peer".into());
            }
            if dst[0] >= 224 || dst == [255; 4] || in_net(dst, LOCAL_NET) {
                return Err("forwarded to multicast, broadcast or the local subnet".into());
            }
            if translated && (dst[..2] == [10, 0] || (dst[0] == 172 && dst[1] & 0xf0 == 16)) {
                return Err("translated a destination the exclusions cover".into());
            }
        }
        "uplink_ingress" | "xdp" => {
            if !local_container(outp.dst()) {
                return Err(format!("delivered to {:?}", Ipv4Addr::from(outp.dst())));
            }
            if hook == "xdp" && (out[..6] != CONTAINER_MAC || outp.dst() != CONTAINER) {
                return Err("XDP redirect not to the endpoint's MAC".into());
            }
            if dst == UPLINK_ADDR {
                reply_owner_checked(dp, &inp, &outp)?;
            } else if dst != outp.dst() || !(in_net(src, PEER_NET) || src == PEER_HOST) {
                return Err("delivered from a source that is no peer".into());
            }
        }
        "uplink_egress" => {
            if !in_net(dst, PEER_NET) || outp.dst() != dst || outp.src() != src {
                return Err("host traffic redirected elsewhere than a peer".into());
            }
        }
        _ => return Err(format!("{hook} redirected")),
    }
    Ok(())
}

/// A translated TCP/UDP reply goes to the container whose flow owns its port.
fn reply_owner_checked(dp: &Datapath, inp: &Ip, outp: &Ip) -> Result<(), String> {
    if !matches!(inp.proto(), IPPROTO_TCP | IPPROTO_UDP) {
        return Ok(()); // echo replies and ICMP errors: checked by the NAT tests
    }
    let cut = || "redirected a reply whose ports lie past its total length".to_string();
    let (remote_port, nat_port) = (inp.port(0).ok_or_else(cut)?, inp.port(2).ok_or_else(cut)?);
    let container_port = outp.port(2).ok_or_else(cut)?;
    let owner = dp.maps.nat_flows().unwrap().into_iter().any(|(k, f)| {
        k.src_addr == to_map_addr(outp.dst().into())
            && k.dst_addr == to_map_addr(inp.src().into())
            && k.proto == inp.proto()
            && u16::from_be(k.dst_port) == remote_port
            && u16::from_be(f.nat_port) == nat_port
            && u16::from_be(k.src_port) == container_port
    });
    owner
        .then_some(())
        .ok_or_else(|| "reply delivered to a container that owns no such flow".into())
}

#[test]
fn mutated_frames_never_break_the_invariants() {
    let mut dp = nat_datapath(
        DatapathConfig {
            uplink_mtu: 1400,
            ..nat_config()
        },
        DEFAULT_TABLE_SIZE,
    );
    dp.maps.sync_peer_hosts().unwrap();
    add_endpoint(&mut dp, CONTAINER);
    let seeds = seeds(&mut dp);
    let mut rng = Rng(0x6472_6675_7a7a);
    let mut redirects = 0;
    for round in 0..ROUNDS {
        let mut packet = seeds[rng.below(seeds.len())].clone();
        if packet.len() >= 34 && packet[12..14] == [8, 0] {
            for _ in 0..1 + rng.below(3) {
                mutate(&mut rng, &mut packet);
            }
            if rng.below(4) != 0 {
                repair_checksums(&mut packet);
            }
        }
        for (name, hook) in [
            ("bridge_ingress", Some(Hook::BridgeIngress)),
            ("uplink_ingress", Some(Hook::UplinkIngress)),
            ("bridge_egress", Some(Hook::BridgeEgress)),
            ("uplink_egress", Some(Hook::UplinkEgress)),
            ("xdp", None),
        ] {
            let (verdict, out) = match hook {
                Some(hook) => dp.run(hook, &packet),
                None => dp.run_xdp(&packet),
            };
            let redirect = if hook.is_some() {
                TC_ACT_REDIRECT
            } else {
                XDP_REDIRECT
            };
            redirects += usize::from(verdict == redirect);
            if let Err(broken) = check(&dp, name, verdict, &packet, &out) {
                panic!(
                    "round {round}, {name}: {broken}\n in: {}\nout: {}",
                    hex(&packet),
                    hex(&out)
                );
            }
        }
    }
    // The seeds' paths stayed reachable: the fuzz exercised redirects.
    assert!(redirects > ROUNDS / 20, "only {redirects} redirects");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
