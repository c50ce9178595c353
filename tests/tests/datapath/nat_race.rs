//! SNAT on two CPUs at once. BPF_PROG_TEST_RUN runs a program on the
//! calling thread's CPU: two threads released together by a barrier run
//! `dr_bridge_ingress` concurrently, as two CPUs receiving packets do.
//!
//! ```text
//!   thread 1: CONTAINER:p ───────┐
//!                                ├── bridge_ingress ── NAT_FLOWS / NAT_REVERSE
//!   thread 2: CONTAINER:p, or ───┘
//!             OTHER_CONTAINER:p
//! ```
//!
//! Each test fails when its race's fix is undone (checked by hand): the
//! first at round 0 with `BPF_ANY` for the flow entry in `allocate`; the
//! second failed at round 237 when the datapath still reclaimed orphans
//! (a fresh claim whose forward half was not yet inserted).
use std::{sync::Barrier, thread};

use aya::programs::SchedClassifier;

use super::*;

const ROUNDS: u16 = 3000;

/// Runs `dr_bridge_ingress` on both packets at once, one per thread.
fn race(dp: &mut Datapath, packets: [&[u8]; 2]) -> [(u32, Vec<u8>); 2] {
    let prog: &SchedClassifier = datapath::program(&mut dp.ebpf, Hook::BridgeIngress).unwrap();
    let barrier = Barrier::new(2);
    thread::scope(|s| {
        packets
            .map(|packet| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    test_run(prog, packet)
                })
            })
            .map(|t| t.join().unwrap())
    })
}

/// The source port a translated frame left with.
fn nat_port(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[34], frame[35]])
}

#[test]
fn a_flow_started_on_two_cpus_at_once_leaves_from_one_port() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    for round in 0..ROUNDS {
        let packet = frame_ports(CONTAINER, EXTERNAL, 64, L4::Udp, 1000 + round, 53);
        let [(v1, out1), (v2, out2)] = race(&mut dp, [&packet, &packet]);
        assert_eq!(
            (v1, v2),
            (TC_ACT_REDIRECT, TC_ACT_REDIRECT),
            "round {round}"
        );
        assert_eq!(
            nat_port(&out1),
            nat_port(&out2),
            "round {round}: one flow left from two ports"
        );
        let flow = dp
            .translation(CONTAINER, EXTERNAL, 17, (1000 + round, 53))
            .expect("translation recorded");
        assert_eq!(
            u16::from_be(flow.nat_port),
            nat_port(&out1),
            "round {round}"
        );
    }
    assert_eq!(dp.counter(Counter::NatCreated).packets, ROUNDS as u64);
}

#[test]
fn two_containers_reclaiming_the_one_dead_port_never_share_it() {
    let port = 61000;
    let mut dp = nat_datapath(
        DatapathConfig {
            nat_port_min: port.into(),
            nat_port_max: port.into(),
            ..nat_config()
        },
        DEFAULT_TABLE_SIZE,
    );
    let mut won = [0u32; 2];
    for round in 0..ROUNDS {
        // Whoever holds the port is dead: both may reclaim it.
        dp.age_translations();
        let src_port = 1000 + round;
        let a = frame_ports(CONTAINER, EXTERNAL, 64, L4::Udp, src_port, 53);
        let b = frame_ports(OTHER_CONTAINER, EXTERNAL, 64, L4::Udp, src_port, 53);
        let outs = race(&mut dp, [&a, &b]);
        let winners: Vec<usize> = (0..2).filter(|&i| outs[i].0 == TC_ACT_REDIRECT).collect();
        assert!(
            winners.len() <= 1,
            "round {round}: both containers left from port {port}"
        );
        if let [winner] = winners[..] {
            won[winner] += 1;
            assert_eq!(nat_port(&outs[winner].1), port);
            // The reply reaches the container that left from the port.
            let to = [CONTAINER, OTHER_CONTAINER][winner];
            let answer = reply(EXTERNAL, UPLINK_ADDR, L4::Udp, port, 53, 50);
            let (verdict, out) = dp.run(Hook::UplinkIngress, &answer);
            assert_eq!(verdict, TC_ACT_REDIRECT, "round {round}");
            assert_eq!(
                out,
                reply(EXTERNAL, to, L4::Udp, src_port, 53, 49),
                "round {round}"
            );
        }
    }
    eprintln!("rounds won: {won:?} of {ROUNDS}");
    assert!(won[0] + won[1] > 0, "no container ever got the port");
}
