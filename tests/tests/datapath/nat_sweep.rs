//! `dr_nat_sweep`, as `nat gc` and `nat flush` drive it ([`Sweeper`]):
//!
//! ```text
//!   CONTAINER:2000 ──┐                    ┌── NAT_FLOWS    (key -> port, times)
//!   OTHER:2000 ──────┼── bridge_ingress ──┤
//!                    │   (SNAT, 1 port)   └── NAT_REVERSE  (remote, port -> origin)
//!   nat gc / flush ──┴── dr_nat_sweep (BPF_PROG_TEST_RUN, one entry per run)
//! ```
//!
//! The sweeper removes what is dead and only that: an expired translation
//! with its reverse half, a reverse half whose flow is gone; never a live
//! translation, never the reverse entry of a port reclaimed since gc listed
//! the table.
use aya::maps::{HashMap, MapData};
use dr_common::{
    map_names,
    nat::{Flow, FlowKey, Origin, Reverse, ReverseKey, Timeouts, IPPROTO_UDP},
};
use dr_ctl::datapath::Sweeper;

use super::*;

const PORT: u16 = 61000;

/// SNAT with one port, so a reclaim is certain.
fn one_port_datapath() -> Datapath {
    nat_datapath(
        DatapathConfig {
            nat_port_min: PORT.into(),
            nat_port_max: PORT.into(),
            ..nat_config()
        },
        DEFAULT_TABLE_SIZE,
    )
}

impl Datapath {
    fn sweeper(&self) -> Sweeper {
        Sweeper::open(&self.dir).expect("the sweeper is pinned")
    }

    fn flows(&self) -> HashMap<MapData, FlowKey, Flow> {
        self.raw_map(map_names::NAT_FLOWS)
    }

    fn reverse(&self) -> HashMap<MapData, ReverseKey, Reverse> {
        self.raw_map(map_names::NAT_REVERSE)
    }

    /// Whether a reply to `PORT` reaches `to` (translated back to it).
    fn reply_reaches(&mut self, to: [u8; 4]) -> bool {
        let answer = reply(EXTERNAL, UPLINK_ADDR, L4::Udp, PORT, 53, 50);
        let (verdict, out) = self.run(Hook::UplinkIngress, &answer);
        verdict == TC_ACT_REDIRECT && out == reply(EXTERNAL, to, L4::Udp, 2000, 53, 49)
    }
}

#[test]
fn gc_removes_expired_translations_and_keeps_live_ones() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, (2000, 53));
    let sweeper = dp.sweeper();
    assert_eq!(sweeper.gc(&dp.maps, &Timeouts::default()).unwrap(), 0);
    assert_eq!(
        (dp.flows().iter().count(), dp.reverse().iter().count()),
        (1, 1)
    );

    dp.age_translations();
    assert_eq!(sweeper.gc(&dp.maps, &Timeouts::default()).unwrap(), 1);
    assert_eq!(
        (dp.flows().iter().count(), dp.reverse().iter().count()),
        (0, 0)
    );
    assert_eq!(dp.counter(Counter::NatExpiredGc).packets, 1);
}

#[test]
fn gc_never_touches_a_port_reclaimed_since_it_listed_the_table() {
    let mut dp = one_port_datapath();
    dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, (2000, 53));
    dp.age_translations();
    // What gc listed: the expired translation of CONTAINER.
    let listed = dp.maps.nat_flows().unwrap();
    assert_eq!(listed.len(), 1);
    // Before gc acts on it, the datapath gives the port to another container.
    assert_eq!(
        dp.translate_out(OTHER_CONTAINER, EXTERNAL, L4::Udp, (2000, 53)),
        PORT
    );
    // gc's removal of what it listed removes nothing of the new holder's.
    let sweeper = dp.sweeper();
    assert!(!sweeper.remove_expired(&listed[0].0).unwrap());
    assert_eq!(sweeper.gc(&dp.maps, &Timeouts::default()).unwrap(), 0);
    assert!(dp.reply_reaches(OTHER_CONTAINER));
}

#[test]
fn gc_removes_reverse_halves_whose_flow_is_gone_and_only_those() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    let port = dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, (2000, 53));
    // An orphan: a reverse entry for a flow that no longer exists (evicted).
    let orphan = ReverseKey {
        remote_addr: to_map_addr([198, 51, 100, 1].into()),
        remote_port: 53u16.to_be(),
        nat_port: 20000u16.to_be(),
        proto: IPPROTO_UDP,
        _pad: 0,
        _pad2: 0,
    };
    let origin = Origin {
        addr: to_map_addr(CONTAINER.into()),
        port: 2001u16.to_be(),
        _pad: 0,
    };
    dp.reverse()
        .insert(orphan, Reverse::new(origin), 0)
        .unwrap();
    assert_eq!(dp.sweeper().gc(&dp.maps, &Timeouts::default()).unwrap(), 0);
    let left: Vec<ReverseKey> = dp.reverse().keys().map(Result::unwrap).collect();
    assert_eq!(left.len(), 1);
    assert_eq!(u16::from_be(left[0].nat_port), port);
}

#[test]
fn flush_removes_every_translation() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    dp.translate_out(CONTAINER, EXTERNAL, L4::Udp, (2000, 53));
    dp.translate_out(OTHER_CONTAINER, EXTERNAL, L4::Tcp, (2000, 80));
    assert_eq!(dp.sweeper().flush(&dp.maps).unwrap(), 2);
    assert_eq!(
        (dp.flows().iter().count(), dp.reverse().iter().count()),
        (0, 0)
    );
    assert_eq!(dp.counter(Counter::NatExpiredGc).packets, 0);
}
