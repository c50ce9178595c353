//! The clock flows are timed by: `bpf_ktime_get_coarse_ns` where the kernel
//! has it (5.11), `bpf_ktime_get_ns` on 5.10. Both are CLOCK_MONOTONIC,
//! which dr-ctl compares the tables' times with (`nat list`, `nat gc`).
//!
//! ```text
//!  CONTAINER:2000 ──> bridge_ingress ──> NAT_FLOWS {created_ns, last_seen_ns}   (the container's packet)
//!  EXTERNAL:53    ──> uplink_ingress ──> NAT_REVERSE {reply_seen_ns}            (the first reply)
//!  maps: DATAPATH_CONFIG (SNAT on), both loaded with COARSE_CLOCK 0 and 1
//! ```
use dr_common::{
    map_names,
    nat::{Reverse, ReverseKey, IPPROTO_UDP},
};
use dr_ctl::maps::monotonic_ns;

use super::*;

/// One exchange through a datapath loaded with `coarse_clock`; the times it
/// recorded, and CLOCK_MONOTONIC before and after.
fn exchange(coarse_clock: u8) -> ([u64; 3], (u64, u64)) {
    let mut dp = datapath_clocked(nat_config(), DEFAULT_TABLE_SIZE, coarse_clock);
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

#[test]
fn both_clocks_time_flows_in_clock_monotonic() {
    // The coarse clock is the last tick's time: up to a tick (4 ms at
    // HZ=250, 10 ms at HZ=100) behind.
    const TICK_NS: u64 = 10_000_000;
    for (coarse_clock, behind) in [(0u8, 0), (1, TICK_NS)] {
        let (times, (before, after)) = exchange(coarse_clock);
        for time in times {
            assert!(
                before - behind <= time && time <= after,
                "clock {coarse_clock}: {time} outside {before}..{after}"
            );
        }
    }
}
