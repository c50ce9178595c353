//! The clock flows are timed by: jiffies once `up` has measured them, the
//! kernel's clock before (`bpf_ktime_get_coarse_ns` where the kernel has it,
//! 5.11; `bpf_ktime_get_ns` on 5.10). All read as CLOCK_MONOTONIC, which
//! dr-ctl compares the tables' times with (`nat list`, `nat gc`).
//!
//! ```text
//!  CONTAINER:2000 ──> bridge_ingress ──> NAT_FLOWS {created_ns, last_seen_ns}   (the container's packet)
//!  EXTERNAL:53    ──> uplink_ingress ──> NAT_REVERSE {reply_seen_ns}            (the first reply)
//!  maps: DATAPATH_CONFIG (SNAT on; clock measured or not), COARSE_CLOCK 0 and 1
//! ```
use std::time::Duration;

use dr_common::{
    clock::JiffiesClock,
    map_names,
    nat::{Reverse, ReverseKey, IPPROTO_UDP},
};
use dr_ctl::maps::monotonic_ns;

use super::*;

/// One exchange through a datapath whose configuration has `clock`,
/// loaded with `coarse_clock`; the times it recorded, and CLOCK_MONOTONIC
/// before and after.
fn exchange(clock: JiffiesClock, coarse_clock: u8) -> ([u64; 3], (u64, u64)) {
    let config = DatapathConfig {
        clock,
        ..nat_config()
    };
    let mut dp = datapath_clocked(config, DEFAULT_TABLE_SIZE, coarse_clock);
    let before = monotonic_ns();
    let port = dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, (2000, 53));
    let (verdict, _) = dp.run(
        Hook::UplinkIngress,
        &reply(EXTERNAL, UPLINK_ADDR, L4::Udp, port, 53, 50),
    );
    let after = monotonic_ns();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let flow = dp
        .translation(CONTAINER, EXTERNAL, IPPROTO_UDP, (2000, 53))
        .unwrap();
    let reverse = dp.raw_map::<ReverseKey, Reverse>(map_names::NAT_REVERSE);
    let (_, entry) = reverse.iter().next().unwrap().unwrap();
    (
        [flow.created_ns, flow.last_seen_ns, entry.reply_seen_ns],
        (before, after),
    )
}

/// The jiffies clock measured here, as `up` measures it.
fn jiffies_clock() -> JiffiesClock {
    measured_clock(&mut datapath(nat_config()).ebpf)
}

#[test]
fn every_clock_times_flows_in_clock_monotonic() {
    // The coarse clock and jiffies are as of the last tick: up to a tick
    // (4 ms at HZ=250, 10 ms at HZ=100) behind.
    const TICK_NS: u64 = 10_000_000;
    let jiffies = jiffies_clock();
    for (name, clock, coarse_clock, behind) in [
        ("ktime", JiffiesClock::default(), 0u8, 0),
        ("coarse", JiffiesClock::default(), 1, TICK_NS),
        ("jiffies", jiffies, 1, TICK_NS),
    ] {
        let (times, (before, after)) = exchange(clock, coarse_clock);
        for time in times {
            assert!(
                before - behind <= time && time <= after,
                "{name} clock: {time} outside {before}..{after}"
            );
        }
    }
}

#[test]
fn the_jiffies_clock_keeps_pace_with_clock_monotonic() {
    let clock = jiffies_clock();
    // Linux builds with HZ 100, 250, 300 or 1000 on x86 and arm64.
    assert!(
        [100, 250, 300, 1000].contains(&clock.hz()),
        "HZ {} measured",
        clock.hz()
    );
    // A tick measured wrong drifts: by a millisecond a second if wrong by
    // a part in a thousand.
    let config = DatapathConfig {
        clock,
        ..nat_config()
    };
    let mut dp = datapath_clocked(config, DEFAULT_TABLE_SIZE, 1);
    std::thread::sleep(Duration::from_secs(1));
    let before = monotonic_ns();
    dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, (2000, 53));
    let after = monotonic_ns();
    let flow = dp
        .translation(CONTAINER, EXTERNAL, IPPROTO_UDP, (2000, 53))
        .unwrap();
    let tick_ns = clock.tick_ns as u64;
    assert!(
        before - tick_ns <= flow.created_ns && flow.created_ns <= after,
        "{} outside {}..{after}",
        flow.created_ns,
        before - tick_ns
    );
}
