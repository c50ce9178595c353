//! Crafted packets through the TC programs with BPF_PROG_TEST_RUN: every
//! verdict, every rewrite compared byte for byte with a frame etherparse
//! builds (so checksums are checked too), and the counters.
mod dry_run;
mod forwarding;
mod fuzz;
mod inbound;
mod mtu;
mod nat;
mod nat_race;
mod nat_sweep;
mod nat_tcp_window;
mod xdp;

use std::{net::Ipv4Addr, path::PathBuf};

use aya::{
    programs::{TestRun, TestRunOptions, TestRunResult},
    Ebpf,
};
use dr_common::{
    nat::{Timeouts, DEFAULT_TABLE_SIZE},
    Counter, DatapathConfig, Traffic, DEFAULT_MAX_PEERS,
};
use dr_ctl::{
    datapath::{self, Hook},
    maps::Maps,
    subnet::to_map_addr,
};
use dr_tests::{
    netns::{run, unique_prefix},
    require_root,
};
use etherparse::PacketBuilder;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const CONTAINER: [u8; 4] = [10, 0, 128, 2];
const OTHER_CONTAINER: [u8; 4] = [10, 0, 128, 3];
const GATEWAY: [u8; 4] = [10, 0, 128, 1];
const BROADCAST: [u8; 4] = [10, 0, 128, 255];
const PEER_CONTAINER: [u8; 4] = [10, 0, 129, 2];
const PEER_HOST: [u8; 4] = [192, 168, 91, 129];
const UPLINK_ADDR: [u8; 4] = [192, 168, 91, 128];
const EXTERNAL: [u8; 4] = [203, 0, 113, 7];
const BRIDGE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xbb];

/// Runs `prog` on `packet`; returns the verdict and the packet as it left.
fn test_run<P>(prog: &P, packet: &[u8]) -> (u32, Vec<u8>)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let (verdict, out, _) = test_run_ctx(prog, packet, None);
    (verdict, out)
}

/// [`test_run`] with `ctx` as the program's context (for TC, the start of a
/// `__sk_buff` whose settable fields the kernel copies into the skb); also
/// returns the context as the program left it.
fn test_run_ctx<P>(prog: &P, packet: &[u8], ctx: Option<&[u8]>) -> (u32, Vec<u8>, Vec<u8>)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut out = vec![0u8; packet.len() + 256];
    // At least sizeof(struct __sk_buff), or the kernel reports ENOSPC.
    let mut ctx_out = vec![0u8; if ctx.is_some() { 256 } else { 0 }];
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: ctx,
            ctx_out: ctx.map(|_| ctx_out.as_mut_slice()),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out, ctx_out)
}

/// Offset of `mark` in `struct __sk_buff`; the fields before it must be zero
/// in a test run's context.
const SKB_MARK_AT: usize = 8;

/// A loaded datapath with private pinned maps, removed on drop.
struct Datapath {
    ebpf: Ebpf,
    maps: Maps,
    dir: PathBuf,
}

impl Drop for Datapath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config() -> DatapathConfig {
    DatapathConfig {
        enabled: 1,
        local_net: to_map_addr(Ipv4Addr::new(10, 0, 128, 0)),
        local_mask: to_map_addr(Ipv4Addr::new(255, 255, 255, 0)),
        retired_prefix_len: 0,
        gateway: to_map_addr(GATEWAY.into()),
        bridge_ifindex: 1001,
        uplink_ifindex: 1000,
        uplink_addr: to_map_addr(UPLINK_ADDR.into()),
        uplink_mtu: 1500,
        retired_owned: 0,
        nat_enabled: 0,
        nat_port_min: 10000,
        nat_port_max: 32767,
        nat_timeouts: Timeouts::default(),
        bridge_mac: BRIDGE_MAC,
        retired_xdp_mode: 0,
        retired_datapath_log: 0,
        _pad: 0,
        retired_object_hash: 0,
    }
}

fn datapath(config: DatapathConfig) -> Datapath {
    datapath_sized(config, DEFAULT_TABLE_SIZE)
}

/// Moves the calling thread (the test's) into a network namespace of its
/// own, where the programs' FIB lookups see a host's routes: the uplink
/// (ifindex 1000 as in [`config`], the uplink address, the default route
/// via the router) and docker0 (1001), with forwarding on as on a Docker
/// host. The namespace goes with the thread.
fn enter_host_netns() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare a network namespace");
    ip("link set lo up");
    veth_pair("dr-bridge", 1001);
    veth_pair("dr-uplink", 1000);
    for args in [
        "addr add 192.168.91.128/24 dev dr-uplink",
        "route add default via 192.168.91.254 dev dr-uplink",
    ] {
        ip(args);
    }
    set_forwarding(true);
}

/// An interface `name` with ifindex `index`, up: one end of a veth pair
/// (not every kernel has the dummy driver), whose other end is up too.
fn veth_pair(name: &str, index: u32) {
    ip(&format!(
        "link add {name} index {index} type veth peer name {name}-p index {}",
        index + 10
    ));
    ip(&format!("link set {name}-p up"));
    ip(&format!("link set {name} up"));
}

/// `ip` in the thread's network namespace.
fn ip(args: &str) {
    run("ip", &args.split(' ').collect::<Vec<_>>()).unwrap();
}

/// Turns IP forwarding on or off on every interface of the thread's namespace.
fn set_forwarding(on: bool) {
    std::fs::write(
        "/proc/sys/net/ipv4/conf/all/forwarding",
        if on { "1" } else { "0" },
    )
    .unwrap();
}

/// A datapath whose SNAT tables hold `nat_table_size` entries.
fn datapath_sized(config: DatapathConfig, nat_table_size: u32) -> Datapath {
    require_root();
    enter_host_netns();
    let dir = PathBuf::from("/sys/fs/bpf").join(unique_prefix("drtest-"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ebpf =
        datapath::load(&dir, nat_table_size, DEFAULT_MAX_PEERS, 0).expect("load eBPF object");
    datapath::pin_sweeper(&mut ebpf, &dir).expect("pin the NAT sweeper");
    let mut maps = Maps::open(&dir).unwrap();
    maps.set_config(&config).unwrap();
    maps.upsert_peers(&[("10.0.129.0/24".parse().unwrap(), PEER_HOST.into())])
        .unwrap();
    Datapath { ebpf, maps, dir }
}

impl Datapath {
    /// Runs `hook`'s program on `packet`; returns the verdict and the packet as it left.
    fn run(&mut self, hook: Hook, packet: &[u8]) -> (u32, Vec<u8>) {
        test_run(datapath::program(&mut self.ebpf, hook).unwrap(), packet)
    }

    /// [`Self::run`] with the skb's mark: returns the mark as it left too.
    fn run_marked(&mut self, hook: Hook, packet: &[u8], mark: u32) -> (u32, Vec<u8>, u32) {
        let mut ctx = [0u8; SKB_MARK_AT + 4];
        ctx[SKB_MARK_AT..].copy_from_slice(&mark.to_ne_bytes());
        let prog = datapath::program(&mut self.ebpf, hook).unwrap();
        let (verdict, out, ctx_out) = test_run_ctx(prog, packet, Some(&ctx));
        let mark_out = u32::from_ne_bytes(ctx_out[SKB_MARK_AT..][..4].try_into().unwrap());
        (verdict, out, mark_out)
    }

    fn counter(&self, which: Counter) -> Traffic {
        self.maps
            .counters()
            .unwrap()
            .into_iter()
            .find(|(c, _)| *c == which)
            .unwrap()
            .1
    }

    /// Asserts that exactly `which` counted `packets` packets, and nothing else moved.
    fn assert_only(&self, which: Counter, packets: u64) {
        for (c, t) in self.maps.counters().unwrap() {
            let want = if c == which { packets } else { 0 };
            assert_eq!(t.packets, want, "counter {}", c.name());
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum L4 {
    Icmp,
    Udp,
    Tcp,
}

/// An Ethernet/IPv4 frame with valid checksums, built by etherparse.
/// ICMP frames are echo requests with identifier `src_port`, TCP frames SYNs.
fn frame_ports(
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
    l4: L4,
    src_port: u16,
    dst_port: u16,
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let ip = eth.ipv4(src, dst, ttl);
    let mut out = Vec::new();
    match l4 {
        L4::Icmp => ip.icmpv4_echo_request(src_port, 7).write(&mut out, PAYLOAD),
        L4::Udp => ip.udp(src_port, dst_port).write(&mut out, PAYLOAD),
        // A SYN: the first segment of a connection the container opens.
        L4::Tcp => ip
            .tcp(src_port, dst_port, 1000, 65535)
            .syn()
            .write(&mut out, PAYLOAD),
    }
    .unwrap();
    out
}

const PAYLOAD: &[u8] = b"dr datapath test payload";
/// Default ports of [`frame`]: source 40000 (ICMP identifier 0x1234), destination 53 or 80.
const SRC_PORT: u16 = 40000;
const ICMP_ID: u16 = 0x1234;

fn default_ports(l4: L4) -> (u16, u16) {
    match l4 {
        L4::Icmp => (ICMP_ID, 0),
        L4::Udp => (SRC_PORT, 53),
        L4::Tcp => (SRC_PORT, 80),
    }
}

/// [`frame_ports`] with the default ports.
fn frame(src: [u8; 4], dst: [u8; 4], ttl: u8, l4: L4) -> Vec<u8> {
    let (sport, dport) = default_ports(l4);
    frame_ports(src, dst, ttl, l4, sport, dport)
}

const ALL_L4: [L4; 3] = [L4::Icmp, L4::Udp, L4::Tcp];

/// Frames that are not IPv4 at all.
fn non_ipv4_frames() -> Vec<Vec<u8>> {
    let arp = {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&CONTAINER);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&PEER_CONTAINER);
        f
    };
    let mut ipv6 = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv6([0xfd; 16], [0xfe; 16], 64)
        .udp(1, 2)
        .write(&mut ipv6, b"x")
        .unwrap();
    vec![arp, ipv6, vec![0u8; 14]]
}

/// IPv4 EtherType with a header that cannot be trusted.
fn malformed_frames() -> Vec<Vec<u8>> {
    let good = frame(CONTAINER, PEER_CONTAINER, 64, L4::Udp);
    // BPF_PROG_TEST_RUN refuses an IPv4 frame shorter than 20 bytes of IP
    // header, so truncation is shown by a header longer than the frame.
    let mut truncated = good.clone();
    truncated[14] = 0x4f;
    let mut version6 = good.clone();
    version6[14] = 0x65;
    let mut short_ihl = good.clone();
    short_ihl[14] = 0x44;
    let mut long_total = good.clone();
    long_total[16..18].copy_from_slice(&2000u16.to_be_bytes());
    let mut total_below_header = good.clone();
    total_below_header[16..18].copy_from_slice(&19u16.to_be_bytes());
    vec![
        truncated,
        version6,
        short_ihl,
        long_total,
        total_below_header,
    ]
}
