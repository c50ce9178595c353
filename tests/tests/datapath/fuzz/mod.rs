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

mod mutate;

use mutate::{mutate, repair_checksums, Ip, Rng, IPPROTO_ICMP};

use super::*;

const ROUNDS: usize = 100_000;

fn in_net(addr: [u8; 4], net: [u8; 3]) -> bool {
    addr[..3] == net
}

const LOCAL_NET: [u8; 3] = [10, 0, 128];
const PEER_NET: [u8; 3] = [10, 0, 129];

/// A container address of the local subnet (not network, gateway, broadcast).
fn local_container(addr: [u8; 4]) -> bool {
    in_net(addr, LOCAL_NET) && ![0, 1, 255].contains(&addr[3])
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
