//! Crafted packets through the datapath's programs with BPF_PROG_TEST_RUN:
//! every verdict, every rewrite compared byte for byte with a frame
//! etherparse builds (so checksums are checked too), and the counters.
//!
//! One file per hook (the program a packet meets there), then the features
//! that span hooks; `harness` is the host every test runs on, `frames` the
//! frame builders. README.md says how to add a test.
mod frames;
mod harness;

// Per hook.
mod bridge_ingress;
mod egress;
mod nat_egress;
mod nat_icmp_error;
mod nat_ingress;
mod port_ingress;
mod uplink_ingress;
mod uplink_xdp;

// Features across hooks.
mod clock;
mod cost;
mod dry_run;
mod fuzz;
mod inbound;
mod mtu;
mod nat_race;
mod nat_sweep;
mod nat_tcp_window;
mod published;
mod verifier;

// What every test file takes with `use super::*`.
use dr_common::{
    marks,
    nat::{Timeouts, DEFAULT_TABLE_SIZE},
    Counter, DatapathConfig, Traffic,
};
use dr_ctl::{
    datapath::{self, Hook},
    subnet::to_map_addr,
};
use etherparse::PacketBuilder;
use frames::*;
use harness::*;
