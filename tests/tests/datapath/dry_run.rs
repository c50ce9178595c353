//! The dry-run copy behind `dr-ctl trace`: the verdict and frame of the
//! attached programs, what they would have counted and where the packet
//! would have gone, and no table touched.
//!
//! ```text
//!  frame ──> attached program (test run) ──> verdict, frame, COUNTERS/PEER_TRAFFIC/NAT_* changed
//!  frame ──> DryRun copy (DRY_RUN = 1, same pinned maps) ──> the same verdict and frame,
//!                                                           TRACE {counters, redirect ifindex, next hop, new translation},
//!                                                           COUNTERS, PEER_TRAFFIC, NAT_FLOWS, NAT_REVERSE as they were
//!  hooks: bridge_ingress, uplink_ingress, uplink_egress, uplink_xdp; maps as in `harness.rs` (SNAT on where a test translates)
//! ```
use dr_common::{Counter, PeerTraffic, Trace};
use dr_ctl::datapath::{DryRun, Run};

use super::*;

/// Everything a packet may write: counters, per-peer traffic, the SNAT and
/// inbound tables (with their entries' last-seen times).
#[derive(Debug, PartialEq)]
struct Tables {
    counters: Vec<(Counter, Traffic)>,
    peer: PeerTraffic,
    nat_flows: Vec<String>,
    nat_reverse: Vec<String>,
}

impl Datapath {
    fn tables(&self) -> Tables {
        let mut nat_flows: Vec<_> = self
            .maps
            .nat_flows()
            .unwrap()
            .iter()
            .map(|e| format!("{e:?}"))
            .collect();
        nat_flows.sort();
        let mut nat_reverse: Vec<_> = self
            .maps
            .nat_reverse_entries()
            .unwrap()
            .iter()
            .map(|e| format!("{e:?}"))
            .collect();
        nat_reverse.sort();
        let slot = self.maps.peers().unwrap()[0].slot;
        Tables {
            counters: self.maps.counters().unwrap(),
            peer: self.maps.peer_traffic(slot).unwrap(),
            nat_flows,
            nat_reverse,
        }
    }

    /// Runs `packet` through the dry-run copy of `hook`'s program, checking
    /// that no table changed.
    pub(super) fn dry_run(&self, hook: Hook, packet: &[u8]) -> Run {
        self.unchanged(|copy| copy.run_tc(hook, packet))
    }

    /// [`Self::dry_run`] for the XDP program.
    fn dry_run_xdp(&self, packet: &[u8]) -> Run {
        self.unchanged(|copy| copy.run_xdp(packet))
    }

    fn unchanged(&self, run: impl FnOnce(&mut DryRun) -> dr_ctl::error::Result<Run>) -> Run {
        let before = self.tables();
        let run = run(&mut DryRun::load(&self.dir).unwrap()).unwrap();
        assert_eq!(self.tables(), before, "the dry run wrote a table");
        run
    }
}

fn counted(counters: &[Counter]) -> u64 {
    counters.iter().map(|c| 1 << *c as u32).sum()
}

#[test]
fn a_peer_packet_is_redirected_toward_the_peer_host_as_by_the_attached_program() {
    let mut dp = datapath(config());
    let packet = frame(CONTAINER, PEER_CONTAINER, 64, L4::Udp);
    let dry = dp.dry_run(Hook::BridgeIngress, &packet);
    assert_eq!(
        dry.trace,
        Trace {
            counters: counted(&[Counter::ToPeer]),
            redirect_ifindex: config().uplink_ifindex,
            next_hop: to_map_addr(PEER_HOST.into()),
            ..Default::default()
        }
    );
    let (verdict, out) = dp.run(Hook::BridgeIngress, &packet);
    assert_eq!((dry.verdict, dry.frame), (verdict, out));
    assert_eq!(verdict, TC_ACT_REDIRECT);
}

#[test]
fn a_spoofed_source_is_dropped_as_by_the_attached_program() {
    let mut dp = datapath(config());
    let packet = frame(PEER_CONTAINER, EXTERNAL, 64, L4::Icmp);
    let dry = dp.dry_run(Hook::BridgeIngress, &packet);
    assert_eq!(dry.trace.counters, counted(&[Counter::DropSpoofed]));
    assert_eq!(dry.trace.redirect_ifindex, 0);
    let (verdict, out) = dp.run(Hook::BridgeIngress, &packet);
    assert_eq!((dry.verdict, dry.frame), (verdict, out));
    assert_eq!(verdict, TC_ACT_SHOT);
}

#[test]
fn a_new_flow_would_be_translated_but_no_translation_is_made() {
    let dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    let packet = frame(CONTAINER, EXTERNAL, 64, L4::Tcp);
    let dry = dp.dry_run(Hook::BridgeIngress, &packet);
    assert_eq!(dry.verdict, TC_ACT_REDIRECT);
    assert_eq!(
        dry.trace,
        Trace {
            counters: counted(&[Counter::NatCreated, Counter::NatOut]),
            redirect_ifindex: config().uplink_ifindex,
            // The FIB's next hop: the default route's router.
            next_hop: to_map_addr(ROUTER.into()),
            new_translation: 1,
            ..Default::default()
        }
    );
    // The frame leaves from the uplink's address and a free port of the
    // range (one the real packet could have drawn), TTL decremented.
    let port = u16::from_be_bytes([dry.frame[34], dry.frame[35]]);
    assert!((10000..=32767).contains(&port), "port {port}");
    let (sport, dport) = default_ports(L4::Tcp);
    assert_eq!(
        dry.frame,
        frame_ports(UPLINK_ADDR, EXTERNAL, 63, L4::Tcp, port, dport)
    );
    assert_ne!(sport, port);
    assert!(dp.maps.nat_flows().unwrap().is_empty());
}

#[test]
fn a_live_translation_is_used_as_by_the_attached_program_and_not_refreshed() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    let packet = frame(CONTAINER, EXTERNAL, 64, L4::Udp);
    let (verdict, out) = dp.run(Hook::BridgeIngress, &packet);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    // `dry_run` checks that the flow's last-seen time did not move.
    let dry = dp.dry_run(Hook::BridgeIngress, &packet);
    assert_eq!((dry.verdict, dry.frame), (verdict, out));
    assert_eq!(dry.trace.counters, counted(&[Counter::NatOut]));
    assert_eq!(dry.trace.new_translation, 0);
}

#[test]
fn a_reply_to_a_live_translation_is_translated_back_and_not_refreshed() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    let ports = default_ports(L4::Tcp);
    let port = dp.translate_out(CONTAINER, EXTERNAL, L4::Tcp, ports);
    let answer = reply(EXTERNAL, UPLINK_ADDR, L4::Tcp, port, ports.1, 50);
    let dry = dp.dry_run(Hook::UplinkIngress, &answer);
    assert_eq!(
        dry.trace,
        Trace {
            counters: counted(&[Counter::NatIn]),
            redirect_ifindex: config().bridge_ifindex,
            ..Default::default()
        }
    );
    let (verdict, out) = dp.run(Hook::UplinkIngress, &answer);
    assert_eq!((dry.verdict, dry.frame), (verdict, out));
    assert_eq!(verdict, TC_ACT_REDIRECT);
}

#[test]
fn tc_delivers_to_a_learned_containers_veth_as_the_attached_program() {
    let mut dp = xdp_datapath();
    let packet = frame(PEER_CONTAINER, CONTAINER, 62, L4::Tcp);
    let dry = dp.dry_run(Hook::UplinkIngress, &packet);
    assert_eq!(
        dry.trace,
        Trace {
            counters: counted(&[Counter::FromPeer]),
            redirect_ifindex: CONTAINER_VETH,
            into_container: 1,
            ..Default::default()
        }
    );
    let (verdict, out) = dp.run(Hook::UplinkIngress, &packet);
    assert_eq!((dry.verdict, dry.frame), (verdict, out));
    assert_eq!(verdict, TC_ACT_REDIRECT);
}

#[test]
fn xdp_delivers_to_the_container_veth_as_the_attached_program() {
    let mut dp = xdp_datapath();
    let packet = frame(PEER_CONTAINER, CONTAINER, 62, L4::Udp);
    let dry = dp.dry_run_xdp(&packet);
    assert_eq!(
        dry.trace,
        Trace {
            counters: counted(&[Counter::FromPeer, Counter::XdpRedirect]),
            redirect_ifindex: CONTAINER_VETH,
            into_container: 1,
            ..Default::default()
        }
    );
    let (verdict, out) = dp.run_xdp(&packet);
    assert_eq!((dry.verdict, dry.frame), (verdict, out));
    assert_eq!(verdict, XDP_REDIRECT);
}

#[test]
fn the_hosts_own_packet_goes_to_the_peer_host_as_by_the_attached_program() {
    let mut dp = datapath(config());
    let packet = frame(UPLINK_ADDR, PEER_CONTAINER, 64, L4::Tcp);
    let dry = dp.dry_run(Hook::UplinkEgress, &packet);
    // No uplink here for the neighbour lookup: the kernel would resolve it.
    assert_eq!(
        dry.trace,
        Trace {
            counters: counted(&[Counter::HostToPeer]),
            redirect_ifindex: config().uplink_ifindex,
            next_hop: to_map_addr(PEER_HOST.into()),
            ..Default::default()
        }
    );
    let (verdict, out) = dp.run(Hook::UplinkEgress, &packet);
    assert_eq!((dry.verdict, dry.frame), (verdict, out));
}
