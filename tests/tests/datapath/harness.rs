//! The host every datapath test runs on, and how a test runs a program.
//!
//! ```text
//!  CONTAINER 10.0.128.2 ─┐                                    ┌─ PEER_HOST 192.168.91.129
//!  OTHER_CONTAINER .3 ───┤ dr-bridge (ifindex 1001)           │    └─ PEER_CONTAINER 10.0.129.2
//!                        │ GATEWAY 10.0.128.1, BRIDGE_MAC     │       (peer 10.0.129.0/24)
//!  [port_ingress]        │ [bridge_ingress] [bridge_egress]   │
//!                     this host ─── dr-uplink (ifindex 1000) ─┴─ ROUTER 192.168.91.254 ── EXTERNAL 203.0.113.7
//!                                   UPLINK_ADDR 192.168.91.128/24, default route via ROUTER
//!                                   [uplink_ingress] [uplink_egress] [uplink_xdp]
//! ```
//!
//! [`datapath`] moves the test's thread into a network namespace of its own
//! with those two interfaces (veth ends) and routes, loads the programs
//! with private pinned maps, writes [`config`] to `DATAPATH_CONFIG` and the
//! one peer to `PEER_SUBNETS`/`PEER_HOSTS`. [`nat_datapath`] adds SNAT's
//! exclusions, [`xdp_datapath`] CONTAINER's entry in `ENDPOINTS`.
use std::{net::Ipv4Addr, path::PathBuf, sync::OnceLock, time::Duration};

use aya::{
    maps::{HashMap, Map, MapData},
    programs::{TestRun, TestRunOptions, TestRunResult, Xdp},
    Ebpf,
};
use dr_common::{
    clock::JiffiesClock,
    map_names,
    nat::{Flow, FlowKey, Reverse, ReverseKey, Timeouts, DEFAULT_TABLE_SIZE},
    program_names, Counter, DatapathConfig, Endpoint, Traffic, DEFAULT_MAX_PEERS,
};
use dr_ctl::{
    datapath::{self, Hook},
    kernel,
    maps::Maps,
    peer::Peer,
    subnet::to_map_addr,
};
use dr_tests::{
    netns::{run, unique_prefix},
    require_root,
};

use super::frames::{frame_ports, malformed_frames, non_ipv4_frames, L4};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

pub const CONTAINER: [u8; 4] = [10, 0, 128, 2];
pub const OTHER_CONTAINER: [u8; 4] = [10, 0, 128, 3];
pub const GATEWAY: [u8; 4] = [10, 0, 128, 1];
pub const BROADCAST: [u8; 4] = [10, 0, 128, 255];
pub const PEER_CONTAINER: [u8; 4] = [10, 0, 129, 2];
pub const PEER_HOST: [u8; 4] = [192, 168, 91, 129];
pub const UPLINK_ADDR: [u8; 4] = [192, 168, 91, 128];
pub const EXTERNAL: [u8; 4] = [203, 0, 113, 7];
pub const ROUTER: [u8; 4] = [192, 168, 91, 254];
pub const BRIDGE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xbb];

/// Runs `prog` on `packet`; returns the verdict and the packet as it left.
pub fn test_run<P>(prog: &P, packet: &[u8]) -> (u32, Vec<u8>)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let (verdict, out, ..) = test_run_ctx(prog, packet, None);
    (verdict, out)
}

/// [`test_run`] with `ctx` as the program's context (for TC, the start of a
/// `__sk_buff` whose settable fields the kernel copies into the skb); also
/// returns the context as the program left it, and the kernel's run time.
pub fn test_run_ctx<P>(
    prog: &P,
    packet: &[u8],
    ctx: Option<&[u8]>,
) -> (u32, Vec<u8>, Vec<u8>, Duration)
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
    (result.return_value, out, ctx_out, result.duration)
}

/// [`test_run`] of a TC program on an skb with `mark`: the verdict, the
/// packet and the mark as they left.
fn test_run_marked<P>(prog: &P, packet: &[u8], mark: u32) -> (u32, Vec<u8>, u32)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut ctx = [0u8; SKB_MARK_AT + 4];
    ctx[SKB_MARK_AT..].copy_from_slice(&mark.to_ne_bytes());
    let (verdict, out, ctx_out, _) = test_run_ctx(prog, packet, Some(&ctx));
    let mark_out = u32::from_ne_bytes(ctx_out[SKB_MARK_AT..][..4].try_into().unwrap());
    (verdict, out, mark_out)
}

/// Offset of `mark` in `struct __sk_buff`; the fields before it must be zero
/// in a test run's context.
pub const SKB_MARK_AT: usize = 8;

/// A loaded datapath with private pinned maps, removed on drop.
pub struct Datapath {
    pub ebpf: Ebpf,
    pub maps: Maps,
    pub dir: PathBuf,
}

impl Drop for Datapath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn config() -> DatapathConfig {
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
        peer_span: 0,
        retired_object_hash: 0,
        // Measured by `datapath_sized`, as `up` does.
        clock: JiffiesClock::default(),
    }
}

pub fn datapath(config: DatapathConfig) -> Datapath {
    datapath_sized(config, DEFAULT_TABLE_SIZE)
}

/// Moves the calling thread (the test's) into a network namespace of its
/// own, where the programs' FIB lookups see a host's routes: the uplink
/// (ifindex 1000 as in [`config`], the uplink address, the default route
/// via the router) and docker0 (1001), with forwarding on as on a Docker
/// host. The namespace goes with the thread.
pub fn enter_host_netns() {
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
pub fn veth_pair(name: &str, index: u32) {
    ip(&format!(
        "link add {name} index {index} type veth peer name {name}-p index {}",
        index + 10
    ));
    ip(&format!("link set {name}-p up"));
    ip(&format!("link set {name} up"));
}

/// `ip` in the thread's network namespace.
pub fn ip(args: &str) {
    run("ip", &args.split(' ').collect::<Vec<_>>()).unwrap();
}

/// Turns IP forwarding on or off on every interface of the thread's namespace.
pub fn set_forwarding(on: bool) {
    std::fs::write(
        "/proc/sys/net/ipv4/conf/all/forwarding",
        if on { "1" } else { "0" },
    )
    .unwrap();
}

/// A datapath whose SNAT tables hold `nat_table_size` entries, with the
/// clock `up` would give it here: jiffies, measured.
pub fn datapath_sized(config: DatapathConfig, nat_table_size: u32) -> Datapath {
    let mut dp = datapath_clocked(config, nat_table_size, kernel::coarse_clock());
    let clock = measured_clock(&mut dp.ebpf);
    let config = dp.maps.config().unwrap();
    dp.maps
        .set_config(&DatapathConfig { clock, ..config })
        .unwrap();
    dp
}

/// The jiffies clock as `up` measures it, measured once per test process:
/// it holds until the next boot.
pub fn measured_clock(ebpf: &mut Ebpf) -> JiffiesClock {
    static CLOCK: OnceLock<JiffiesClock> = OnceLock::new();
    *CLOCK.get_or_init(|| datapath::measure_clock(ebpf).expect("measure the jiffies clock"))
}

/// A datapath with `config` as given (its clock too) and the kernel clock
/// switch `coarse_clock`, which the programs read when `config.clock` is
/// not measured.
pub fn datapath_clocked(config: DatapathConfig, nat_table_size: u32, coarse_clock: u8) -> Datapath {
    require_root();
    enter_host_netns();
    let dir = PathBuf::from("/sys/fs/bpf").join(unique_prefix("drtest-"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ebpf = datapath::load(&dir, nat_table_size, DEFAULT_MAX_PEERS, 0, coarse_clock)
        .expect("load eBPF object");
    datapath::pin_sweeper(&mut ebpf, &dir).expect("pin the NAT sweeper");
    let mut maps = Maps::open(&dir).unwrap();
    maps.set_config(&config).unwrap();
    maps.upsert_peers(&[Peer {
        subnet: "10.0.129.0/24".parse().unwrap(),
        via: PEER_HOST.into(),
    }])
    .unwrap();
    Datapath { ebpf, maps, dir }
}

impl Datapath {
    /// Runs `hook`'s program on `packet`; returns the verdict and the packet as it left.
    pub fn run(&mut self, hook: Hook, packet: &[u8]) -> (u32, Vec<u8>) {
        test_run(datapath::program(&mut self.ebpf, hook).unwrap(), packet)
    }

    /// Runs the port program (`dr_port_ingress`, on a container's docker0
    /// port) on `packet`, like [`Self::run`].
    pub fn run_port(&mut self, packet: &[u8]) -> (u32, Vec<u8>) {
        test_run(datapath::port_program(&mut self.ebpf).unwrap(), packet)
    }

    /// [`Self::run`] with the skb's mark: returns the mark as it left too.
    pub fn run_marked(&mut self, hook: Hook, packet: &[u8], mark: u32) -> (u32, Vec<u8>, u32) {
        test_run_marked(
            datapath::program(&mut self.ebpf, hook).unwrap(),
            packet,
            mark,
        )
    }

    /// [`Self::run_port`] with the skb's mark, like [`Self::run_marked`].
    pub fn run_port_marked(&mut self, packet: &[u8], mark: u32) -> (u32, Vec<u8>, u32) {
        test_run_marked(
            datapath::port_program(&mut self.ebpf).unwrap(),
            packet,
            mark,
        )
    }

    pub fn counter(&self, which: Counter) -> Traffic {
        self.maps
            .counters()
            .unwrap()
            .into_iter()
            .find(|(c, _)| *c == which)
            .unwrap()
            .1
    }

    /// Asserts that exactly `which` counted `packets` packets, and nothing else moved.
    pub fn assert_only(&self, which: Counter, packets: u64) {
        for (c, t) in self.maps.counters().unwrap() {
            let want = if c == which { packets } else { 0 };
            assert_eq!(t.packets, want, "counter {}", c.name());
        }
    }
}

pub fn nat_config() -> DatapathConfig {
    DatapathConfig {
        nat_enabled: 1,
        ..config()
    }
}

/// A datapath with SNAT on, the cluster 10.0.0.0/16 and 172.16.0.0/12 excluded.
pub fn nat_datapath(config: DatapathConfig, table_size: u32) -> Datapath {
    let mut dp = datapath_sized(config, table_size);
    dp.maps
        .set_exclusions(&[
            "10.0.0.0/16".parse().unwrap(),
            "172.16.0.0/12".parse().unwrap(),
        ])
        .unwrap();
    dp
}

impl Datapath {
    /// The translation of the container flow `frame` would start.
    pub fn translation(
        &self,
        src: [u8; 4],
        dst: [u8; 4],
        proto: u8,
        ports: (u16, u16),
    ) -> Option<Flow> {
        self.maps
            .nat_flows()
            .unwrap()
            .into_iter()
            .find(|(k, _)| {
                k.src_addr == to_map_addr(src.into())
                    && k.dst_addr == to_map_addr(dst.into())
                    && k.proto == proto
                    && u16::from_be(k.src_port) == ports.0
                    && u16::from_be(k.dst_port) == ports.1
            })
            .map(|(_, f)| f)
    }

    pub fn raw_map<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> HashMap<MapData, K, V> {
        let data = MapData::from_pin(self.dir.join(name)).unwrap();
        Map::from_map_data(data).unwrap().try_into().unwrap()
    }

    /// Ages every translation past any timeout: its last packet out and its
    /// last reply both long ago.
    pub fn age_translations(&self) {
        self.age_packets_out();
        self.age_replies();
    }

    /// Every translation's last packet out long ago.
    pub fn age_packets_out(&self) {
        let mut flows = self.raw_map::<FlowKey, Flow>(map_names::NAT_FLOWS);
        let all: Vec<_> = flows.iter().map(Result::unwrap).collect();
        for (key, mut flow) in all {
            flow.last_seen_ns = 1;
            flows.insert(key, flow, 0).unwrap();
        }
    }

    /// Every translation's last reply (if any) long ago.
    pub fn age_replies(&self) {
        let mut reverse = self.raw_map::<ReverseKey, Reverse>(map_names::NAT_REVERSE);
        let all: Vec<_> = reverse.iter().map(Result::unwrap).collect();
        for (key, mut entry) in all {
            if entry.reply_seen_ns != 0 {
                entry.reply_seen_ns = 1;
                reverse.insert(key, entry, 0).unwrap();
            }
        }
    }

    /// Sends a container packet out; returns the allocated port.
    pub fn translate_out(&mut self, src: [u8; 4], dst: [u8; 4], l4: L4, ports: (u16, u16)) -> u16 {
        let packet = frame_ports(src, dst, 64, l4, ports.0, ports.1);
        let (verdict, out) = self.run(Hook::BridgeIngress, &packet);
        assert_eq!(verdict, TC_ACT_REDIRECT, "{src:?}:{ports:?} -> {dst:?}");
        let port = u16::from_be(
            self.translation(src, dst, l4.proto(), ports)
                .expect("translation recorded")
                .nat_port,
        );
        // Only source address, source port (ICMP: identifier), TTL and checksums change.
        assert_eq!(out, frame_ports(UPLINK_ADDR, dst, 63, l4, port, ports.1));
        port
    }
}

pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;
pub const CONTAINER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xc2];
/// The container's docker0 port: `ENDPOINT_PORTS` only takes existing
/// devices, and a test run never transmits, so loopback stands in.
pub const CONTAINER_VETH: u32 = 1;

/// `frame` with the MACs of a frame docker0 sends to CONTAINER: how dr
/// delivers straight into a known container's veth.
pub fn from_docker0(mut frame: Vec<u8>) -> Vec<u8> {
    frame[..6].copy_from_slice(&CONTAINER_MAC);
    frame[6..12].copy_from_slice(&BRIDGE_MAC);
    frame
}

/// A datapath whose endpoint table knows CONTAINER.
pub fn xdp_datapath() -> Datapath {
    let mut dp = datapath(config());
    add_endpoint(&mut dp, CONTAINER);
    dp
}

/// Makes `container` a known endpoint, on CONTAINER_VETH with CONTAINER_MAC,
/// which XDP may redirect into.
pub fn add_endpoint(dp: &mut Datapath, container: [u8; 4]) {
    add_endpoint_xdp_ready(dp, container, true);
}

/// [`add_endpoint`], with `xdp_ready` as dr-ctl found it (native XDP: GRO at
/// the container's end of the veth).
pub fn add_endpoint_xdp_ready(dp: &mut Datapath, container: [u8; 4], xdp_ready: bool) {
    let ep = Endpoint {
        addr: u32::from_ne_bytes(container),
        ifindex: CONTAINER_VETH,
        mac: CONTAINER_MAC,
        xdp_ready: xdp_ready.into(),
        _pad: 0,
    };
    dp.maps.set_endpoints(&[ep]).unwrap();
}

impl Datapath {
    pub fn run_xdp(&mut self, packet: &[u8]) -> (u32, Vec<u8>) {
        test_run(self.xdp_program(), packet)
    }

    /// The XDP program, loaded on first use (`up` loads it only with `--xdp`).
    pub fn xdp_program(&mut self) -> &Xdp {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(program_names::UPLINK_XDP)
            .unwrap()
            .try_into()
            .unwrap();
        if prog.fd().is_err() {
            datapath::load_retrying(|| prog.load()).unwrap();
        }
        prog
    }
}

impl Datapath {
    /// Asserts that `hook` passes non-IPv4 frames unchanged (counted
    /// `passed`) and malformed IPv4 unchanged (counted `malformed`).
    pub fn assert_passes_non_ipv4_and_malformed(&mut self, hook: Hook) {
        let non_ipv4 = non_ipv4_frames();
        for packet in &non_ipv4 {
            let (verdict, out) = self.run(hook, packet);
            assert_eq!(verdict, TC_ACT_OK);
            assert_eq!(&out, packet);
        }
        self.assert_only(Counter::Passed, non_ipv4.len() as u64);
        let malformed = malformed_frames();
        for packet in &malformed {
            let (verdict, out) = self.run(hook, packet);
            assert_eq!(verdict, TC_ACT_OK, "{hook:?} {packet:02x?}");
            assert_eq!(&out, packet);
        }
        assert_eq!(
            self.counter(Counter::Malformed).packets,
            malformed.len() as u64
        );
    }
}
