//! What each program costs per packet on each of its paths, warm, measured
//! by the kernel (BPF_PROG_TEST_RUN's run time, one run per call so every
//! run sees a fresh copy of its frame). Not a test of speed: `cargo xtask
//! bench` runs it (ignored here) and tabulates its lines; it asserts only
//! that each path takes the verdict it is meant to measure.
//!
//!   container 10.0.128.2 ── docker0 (1001) ─[bridge_ingress]─ host ─ uplink (1000) ─ 203.0.113.7
//!                                                            [uplink_ingress / uplink_xdp]
//!   peer container 10.0.129.2 behind peer host 192.168.91.129; SNAT to 192.168.91.128.
use etherparse::{icmpv4, Icmpv4Type, TcpOptionElement};

use super::*;

/// Runs per path; the first few warm the tables and caches and are not kept.
const RUNS: usize = 20_000;
const WARMUP: usize = 200;

/// Where a path's packets enter.
#[derive(Clone, Copy)]
enum Entry {
    Tc(Hook),
    Xdp,
}

impl Datapath {
    /// Runs `packet(i)` through `entry` RUNS times, each expected to end in
    /// `verdict`; prints the path's run-time median and spread as one line
    /// `program-cost {json}` for the benchmark.
    fn cost(&mut self, path: &str, entry: Entry, verdict: u32, packet: impl Fn(usize) -> Vec<u8>) {
        let mut ns = Vec::with_capacity(RUNS);
        for i in 0..WARMUP + RUNS {
            let frame = packet(i);
            let (got, _, _, took) = match entry {
                Entry::Tc(hook) => test_run_ctx(
                    datapath::program(&mut self.ebpf, hook).unwrap(),
                    &frame,
                    None,
                ),
                Entry::Xdp => test_run_ctx(self.xdp_program(), &frame, None),
            };
            assert_eq!(got, verdict, "{path}: run {i}");
            if i >= WARMUP {
                ns.push(took.as_nanos() as f64);
            }
        }
        ns.sort_by(f64::total_cmp);
        let at = |q: f64| ns[((ns.len() - 1) as f64 * q) as usize];
        println!(
            "program-cost {}",
            serde_json::json!({"path": path, "median_ns": at(0.5), "p10_ns": at(0.1), "p90_ns": at(0.9), "runs": RUNS})
        );
    }
}

/// A TCP segment of an established connection: ACK (and PSH) with data.
fn tcp_segment(src: [u8; 4], dst: [u8; 4], ttl: u8, ports: (u16, u16)) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, ttl)
        .tcp(ports.0, ports.1, 1001, 502)
        .ack(5000)
        .psh()
        .write(&mut out, PAYLOAD)
        .unwrap();
    out
}

/// A SYN with the options Linux sends (MSS, SACK permitted, timestamps,
/// window scale): what a new connection's first packet looks like.
fn linux_syn(src: [u8; 4], dst: [u8; 4], ports: (u16, u16)) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, 64)
        .tcp(ports.0, ports.1, 1000, 64240)
        .syn()
        .options(&[
            TcpOptionElement::MaximumSegmentSize(1460),
            TcpOptionElement::SelectiveAcknowledgementPermitted,
            TcpOptionElement::Timestamp(1, 0),
            TcpOptionElement::Noop,
            TcpOptionElement::WindowScale(7),
        ])
        .unwrap()
        .write(&mut out, &[])
        .unwrap();
    out
}

/// The ports of a new flow on every run, each to another remote port, so
/// that the NAT port range (22,768 ports here) never runs out.
fn new_ports(i: usize) -> (u16, u16) {
    (20_000 + (i % 40_000) as u16, 1024 + (i % 60_000) as u16)
}

#[test]
#[ignore = "a measurement: cargo xtask bench runs it"]
fn program_cost_per_path() {
    let mut dp = nat_datapath(nat_config(), 1 << 17);
    add_endpoint(&mut dp, CONTAINER);
    let udp = default_ports(L4::Udp);
    let tcp = default_ports(L4::Tcp);
    let peer_in = frame(PEER_CONTAINER, CONTAINER, 64, L4::Udp);

    // What every run here costs besides a path's own work (the kernel's
    // timing and call, the frame's parse): the uplink's egress program
    // passing a packet that is not the host's own.
    dp.cost(
        "floor: uplink egress, not the host's",
        Entry::Tc(Hook::UplinkEgress),
        TC_ACT_OK,
        |_| frame(EXTERNAL, CONTAINER, 64, L4::Udp),
    );
    dp.cost(
        "peer out",
        Entry::Tc(Hook::BridgeIngress),
        TC_ACT_REDIRECT,
        |_| frame(CONTAINER, PEER_CONTAINER, 64, L4::Udp),
    );
    dp.cost(
        "peer in",
        Entry::Tc(Hook::UplinkIngress),
        TC_ACT_REDIRECT,
        |_| peer_in.clone(),
    );
    dp.cost("peer in (xdp)", Entry::Xdp, XDP_REDIRECT, |_| {
        peer_in.clone()
    });

    dp.cost(
        "snat out, new udp flow",
        Entry::Tc(Hook::BridgeIngress),
        TC_ACT_REDIRECT,
        |i| {
            let (src, dst) = new_ports(i);
            frame_ports(CONTAINER, EXTERNAL, 64, L4::Udp, src, dst)
        },
    );
    dp.cost(
        "snat out, new tcp flow (syn)",
        Entry::Tc(Hook::BridgeIngress),
        TC_ACT_REDIRECT,
        |i| linux_syn(CONTAINER, EXTERNAL, new_ports(i)),
    );

    let udp_port = dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, udp);
    let tcp_port = dp.translate_out(CONTAINER, EXTERNAL, L4::Tcp, tcp);
    dp.cost(
        "snat out, udp",
        Entry::Tc(Hook::BridgeIngress),
        TC_ACT_REDIRECT,
        |_| frame(CONTAINER, EXTERNAL, 64, L4::Udp),
    );
    dp.cost(
        "snat out, tcp",
        Entry::Tc(Hook::BridgeIngress),
        TC_ACT_REDIRECT,
        |_| tcp_segment(CONTAINER, EXTERNAL, 64, tcp),
    );
    let udp_reply = reply(EXTERNAL, UPLINK_ADDR, L4::Udp, udp_port, udp.1, 50);
    let tcp_reply = reply(EXTERNAL, UPLINK_ADDR, L4::Tcp, tcp_port, tcp.1, 50);
    dp.cost(
        "snat reply, udp",
        Entry::Tc(Hook::UplinkIngress),
        TC_ACT_REDIRECT,
        |_| udp_reply.clone(),
    );
    dp.cost(
        "snat reply, tcp",
        Entry::Tc(Hook::UplinkIngress),
        TC_ACT_REDIRECT,
        |_| tcp_reply.clone(),
    );
    dp.cost("snat reply, udp (xdp)", Entry::Xdp, XDP_REDIRECT, |_| {
        udp_reply.clone()
    });

    let (_, translated) = dp.run(
        Hook::BridgeIngress,
        &frame(CONTAINER, EXTERNAL, 64, L4::Udp),
    );
    let frag_needed = icmp_error(
        UPLINK_ADDR,
        Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: 1280,
        }),
        &translated[14..],
        60,
    );
    dp.cost(
        "snat icmp error in",
        Entry::Tc(Hook::UplinkIngress),
        TC_ACT_REDIRECT,
        |_| frag_needed.clone(),
    );
}
