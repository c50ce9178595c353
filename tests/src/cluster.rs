//! An emulated cluster: hosts on one L2 segment (a bridge in a "switch"
//! namespace), each with docker0 and containers, plus an optional external
//! namespace on the same segment.
use std::{
    fs::{DirBuilder, File},
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    process::Output,
};

use anyhow::{Context as _, Result};
use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;

use crate::netns::{unique_prefix, Netns};

/// Hosts are numbered like the recipe's 192.168.91.128, .129, ...
pub const FIRST_HOST: u8 = 128;
/// The router between the hosts' segment and the external network.
pub const ROUTER_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 91, 254);
/// The external namespace, outside the cluster, behind the router.
pub const EXTERNAL_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The cluster CIDR every host's `up` passes (enables SNAT).
pub const CLUSTER_CIDR: &str = "10.0.0.0/16";

pub struct Container {
    pub ns: Netns,
    pub addr: Ipv4Addr,
}

pub struct Host {
    pub id: u8,
    pub uplink_addr: Ipv4Addr,
    pub containers: Vec<Container>,
    pin_inode: u64,
    dr_ctl: PathBuf,
    // Dropped last: the containers' veths live in it.
    pub ns: Netns,
}

impl Host {
    /// Docker's `bip` for this host: 10.0.<id>.1/24.
    pub fn bip(&self) -> String {
        format!("{}/24", self.gateway())
    }

    /// docker0's address, the containers' gateway: 10.0.<id>.1.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, self.id, 1)
    }

    /// The host's container subnet: 10.0.<id>.0/24.
    pub fn subnet(&self) -> String {
        format!("10.0.{}.0/24", self.id)
    }

    /// Takes dr's node lock of this host, as another dr-ctl command in it
    /// would: dr-ctl commands that change the host wait until the returned
    /// guard is dropped.
    pub fn hold_dr_lock(&self) -> Result<Flock<File>> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create("/run/dr")?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(format!("/run/dr/netns-{}.lock", self.pin_inode))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| e.into())
    }

    /// The dr-ctl binary this host runs.
    pub fn dr_ctl(&self) -> &Path {
        &self.dr_ctl
    }

    /// From now on, runs `dr_ctl` (another build: an upgrade).
    pub fn use_dr_ctl(&mut self, dr_ctl: &Path) {
        self.dr_ctl = dr_ctl.to_path_buf();
    }

    /// Runs dr-ctl in the host, failing on a non-zero exit.
    pub fn dr(&self, args: &[&str]) -> Result<String> {
        self.ns.exec(path_str(&self.dr_ctl), args)
    }

    /// Runs dr-ctl in the host, keeping status and output.
    pub fn dr_output(&self, args: &[&str]) -> Result<Output> {
        self.ns.exec_output(path_str(&self.dr_ctl), args)
    }

    /// `dr-ctl status --json`.
    pub fn status(&self) -> Result<Value> {
        Ok(serde_json::from_str(&self.dr(&["status", "--json"])?)?)
    }

    /// The live translations of `dr-ctl nat list --json`.
    pub fn nat_list(&self) -> Result<Vec<Value>> {
        let list: Value = serde_json::from_str(&self.dr(&["nat", "list", "--json"])?)?;
        match list {
            Value::Array(entries) => Ok(entries),
            other => anyhow::bail!("nat list is not an array: {other}"),
        }
    }

    /// The arguments of `dr-ctl up` with this host's plan (SNAT on).
    pub fn up_args(&self) -> Vec<String> {
        let bip = self.bip();
        let args = [
            "up", "--bridge", "docker0", "--subnet", &bip, "--uplink", "eth0",
        ];
        let nat = ["--cluster-cidr", CLUSTER_CIDR];
        args.iter().chain(&nat).map(|s| s.to_string()).collect()
    }

    /// `dr-ctl up` with this host's plan and `extra` options.
    pub fn up_with(&self, extra: &[&str]) -> Result<String> {
        let mut args = self.up_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.dr(&args)
    }

    /// `dr-ctl up` with this host's plan.
    pub fn up(&self) -> Result<String> {
        self.up_with(&[])
    }

    /// Packets counted by the datapath under `name` (see `dr-ctl status`).
    pub fn counter(&self, name: &str) -> Result<u64> {
        let status = self.status()?;
        status["counters"][name]["packets"]
            .as_u64()
            .with_context(|| format!("no counter {name:?} in status"))
    }

    /// Creates docker0 with this host's `bip`, as Docker would.
    pub fn create_docker0(&self) -> Result<()> {
        self.ns.ip(&["link", "add", "docker0", "type", "bridge"])?;
        self.ns
            .ip(&["addr", "add", &self.bip(), "dev", "docker0"])?;
        self.ns.ip(&["link", "set", "docker0", "up"])?;
        Ok(())
    }

    /// The recipe dr replaces, on this host: IP forwarding, MASQUERADE for
    /// traffic leaving the cluster and FORWARD accepts (iptables as Debian
    /// installs it), and a static route per peer.
    pub fn recipe(&self, peers: &[(String, Ipv4Addr)]) -> Result<()> {
        let ipt = |args: &[&str]| self.ns.exec("iptables", args);
        self.ns
            .exec("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"])?;
        let subnet = self.subnet();
        ipt(&[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            &subnet,
            "!",
            "-d",
            CLUSTER_CIDR,
            "-j",
            "MASQUERADE",
        ])?;
        ipt(&["-A", "FORWARD", "-s", CLUSTER_CIDR, "-j", "ACCEPT"])?;
        ipt(&["-A", "FORWARD", "-d", CLUSTER_CIDR, "-j", "ACCEPT"])?;
        for (peer_subnet, via) in peers {
            self.ns
                .ip(&["route", "add", peer_subnet, "via", &via.to_string()])?;
        }
        Ok(())
    }

    /// What `docker run -p HOST_PORT:PORT[/udp]` sets up on the host, as
    /// dockerd writes it: IP forwarding, nat chain DOCKER with the jump from
    /// PREROUTING for local addresses, and a DNAT of the host's port to the
    /// container's for packets that do not come from docker0. `dr-ctl sync`
    /// reads these rules.
    pub fn publish(&self, proto: &str, host_port: u16, to: SocketAddr) -> Result<()> {
        self.ns
            .exec("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"])?;
        let ipt = |args: &[&str]| self.ns.exec("iptables", args);
        let has = |args: &[&str]| -> Result<bool> {
            Ok(self.ns.exec_output("iptables", args)?.status.success())
        };
        if !has(&["-t", "nat", "-S", "DOCKER"])? {
            ipt(&["-t", "nat", "-N", "DOCKER"])?;
        }
        let jump = [
            "PREROUTING",
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
            "-j",
            "DOCKER",
        ];
        if !has(&[&["-t", "nat", "-C"][..], &jump].concat())? {
            ipt(&[&["-t", "nat", "-A"][..], &jump].concat())?;
        }
        let (port, to) = (host_port.to_string(), to.to_string());
        ipt(&[
            "-t",
            "nat",
            "-A",
            "DOCKER",
            "!",
            "-i",
            "docker0",
            "-p",
            proto,
            "-m",
            proto,
            "--dport",
            &port,
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ])?;
        Ok(())
    }

    /// Adds a container on docker0 (which must exist): 10.0.<id>.<2+n>.
    pub fn add_container(&mut self, prefix: &str) -> Result<&Container> {
        let n = self.containers.len();
        let addr = Ipv4Addr::new(10, 0, self.id, 2 + n as u8);
        let ns = Netns::add(&format!("{prefix}-h{}c{n}", self.id))?;
        self.link_container(n, &ns, addr, None)?;
        self.containers.push(Container { ns, addr });
        Ok(self.containers.last().expect("just pushed"))
    }

    /// Links container `n` (namespace `ns`, address `addr`) to docker0 as
    /// Docker does: a veth pair, `veth<n>` on docker0 and `eth0` inside
    /// (with `mac` when given), the address and a default route via the
    /// gateway.
    fn link_container(
        &self,
        n: usize,
        ns: &Netns,
        addr: Ipv4Addr,
        mac: Option<&str>,
    ) -> Result<()> {
        let port = format!("veth{n}");
        self.ns.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ])?;
        if let Some(mac) = mac {
            ns.ip(&["link", "set", "eth0", "address", mac])?;
        }
        self.ns
            .ip(&["link", "set", &port, "master", "docker0", "up"])?;
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &self.gateway().to_string(),
        ])?;
        // GRO stays off, as Docker leaves it: with native XDP, dr turns it
        // on itself (the NAPI ring XDP redirects into exists only then).
        Ok(())
    }

    /// What a container restart does to its link: Docker deletes the veth
    /// pair and makes a new one (a new ifindex on docker0), with the same
    /// MAC (Docker derives it from the address) and address.
    pub fn restart_container_link(&self, n: usize) -> Result<()> {
        let c = &self.containers[n];
        let link: Value = serde_json::from_str(&c.ns.ip(&["-j", "link", "show", "eth0"])?)?;
        let mac = link[0]["address"].as_str().context("eth0 MAC")?.to_string();
        self.ns.ip(&["link", "del", &format!("veth{n}")])?;
        self.link_container(n, &c.ns, c.addr, Some(&mac))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.dr_output(&["down"]);
        // If `down` could not run, remove the pins so nothing is left behind.
        let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/dr/netns-{}", self.pin_inode));
        let _ = std::fs::remove_dir("/sys/fs/bpf/dr");
    }
}

pub struct Cluster {
    pub prefix: String,
    pub hosts: Vec<Host>,
    pub external: Option<Netns>,
    pub router: Option<Netns>,
    pub switch: Netns,
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("dr-ctl path is UTF-8")
}

impl Cluster {
    /// Creates `hosts` hosts on a shared segment, without dr; `tag` starts
    /// every namespace name.
    pub fn new(tag: &str, hosts: usize, dr_ctl: &Path) -> Result<Self> {
        let prefix = unique_prefix(tag);
        let switch = Netns::add(&format!("{prefix}-sw"))?;
        switch.ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        let mut cluster = Self {
            prefix,
            hosts: Vec::new(),
            external: None,
            router: None,
            switch,
        };
        for _ in 0..hosts {
            cluster.add_host(dr_ctl)?;
        }
        Ok(cluster)
    }

    /// The SNAT topology most tests use: two hosts with dr up (and
    /// `extra_up`) and two containers each, meshed, plus the router and the
    /// external namespace. With `--xdp`, the segment behaves like a wire and
    /// the hosts know their containers.
    pub fn with_external(tag: &str, extra_up: &[&str], dr_ctl: &Path) -> Result<Self> {
        let mut c = Self::new(tag, 2, dr_ctl)?;
        c.add_external()?;
        let xdp = extra_up.contains(&"--xdp");
        if xdp {
            c.emulate_wire()?;
        }
        c.up_all_with(2, extra_up)?;
        if xdp {
            c.sync_endpoints()?;
        }
        Ok(c)
    }

    /// Adds a host on the segment (the next id: 128, 129, ...), without dr.
    pub fn add_host(&mut self, dr_ctl: &Path) -> Result<&mut Host> {
        let id = FIRST_HOST + self.hosts.len() as u8;
        let ns = Netns::add(&format!("{}-h{id}", self.prefix))?;
        let uplink_addr = Ipv4Addr::new(192, 168, 91, id);
        self.plug(&ns, &format!("p{id}"), uplink_addr)?;
        self.hosts.push(Host {
            id,
            uplink_addr,
            containers: Vec::new(),
            pin_inode: ns.inode()?,
            dr_ctl: dr_ctl.to_path_buf(),
            ns,
        });
        Ok(self.hosts.last_mut().expect("just pushed"))
    }

    /// Connects `ns` to the segment as eth0 with `addr`/24.
    fn plug(&self, ns: &Netns, port: &str, addr: Ipv4Addr) -> Result<()> {
        self.switch.ip(&[
            "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ])?;
        self.switch
            .ip(&["link", "set", port, "master", "br0", "up"])?;
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// Adds the outside world: a router on the segment (192.168.91.254,
    /// the hosts' default gateway) and behind it an external namespace
    /// (203.0.113.10) that knows no route to container subnets.
    pub fn add_external(&mut self) -> Result<&Netns> {
        let router = Netns::add(&format!("{}-rtr", self.prefix))?;
        self.plug(&router, "prtr", ROUTER_ADDR)?;
        router.exec("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"])?;
        let ext = Netns::add(&format!("{}-ext", self.prefix))?;
        router.ip(&[
            "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", &ext.name,
        ])?;
        router.ip(&["addr", "add", "203.0.113.1/24", "dev", "eth1"])?;
        router.ip(&["link", "set", "eth1", "up"])?;
        ext.ip(&["addr", "add", &format!("{EXTERNAL_ADDR}/24"), "dev", "eth0"])?;
        ext.ip(&["link", "set", "eth0", "up"])?;
        ext.ip(&["route", "add", "default", "via", "203.0.113.1"])?;
        for host in &self.hosts {
            host.ns.ip(&[
                "route",
                "replace",
                "default",
                "via",
                &ROUTER_ADDR.to_string(),
            ])?;
        }
        self.router = Some(router);
        Ok(self.external.insert(ext))
    }

    /// `up` on every host, `containers` containers each, and a full mesh of peers.
    pub fn up_all(&mut self, containers: usize) -> Result<()> {
        self.up_all_with(containers, &[])
    }

    /// [`Self::up_all`] with `extra` options for `up`.
    pub fn up_all_with(&mut self, containers: usize, extra: &[&str]) -> Result<()> {
        let prefix = self.prefix.clone();
        for host in &mut self.hosts {
            host.up_with(extra)
                .with_context(|| format!("dr-ctl up on host {}", host.id))?;
            for _ in 0..containers {
                host.add_container(&prefix)?;
            }
        }
        self.mesh()
    }

    /// docker0 and `containers` containers on every host, without dr: the
    /// base of the recipe and of the benchmarks' ceilings.
    pub fn bare_all(&mut self, containers: usize) -> Result<()> {
        let prefix = self.prefix.clone();
        for host in &mut self.hosts {
            host.create_docker0()?;
            for _ in 0..containers {
                host.add_container(&prefix)?;
            }
        }
        Ok(())
    }

    /// [`Self::bare_all`] plus the recipe on every host.
    pub fn recipe_all(&mut self, containers: usize) -> Result<()> {
        self.bare_all(containers)?;
        for host in &self.hosts {
            let peers: Vec<_> = self
                .hosts
                .iter()
                .filter(|p| p.id != host.id)
                .map(|p| (p.subnet(), p.uplink_addr))
                .collect();
            host.recipe(&peers)?;
        }
        Ok(())
    }

    /// Makes the segment behave like a wire: frames leave the switch with
    /// full checksums and at most MTU size (no offload metadata crosses a
    /// wire), as dr's XDP fast path on a real NIC would see them.
    pub fn emulate_wire(&self) -> Result<()> {
        let ports: Vec<String> = self.hosts.iter().map(|h| format!("p{}", h.id)).collect();
        for port in ports
            .iter()
            .map(String::as_str)
            .chain(self.router.as_ref().map(|_| "prtr"))
        {
            wire_like(&self.switch, port)?;
        }
        Ok(())
    }

    /// Makes every host's docker0 ports behave like [`Self::emulate_wire`]'s
    /// switch ports: what the bridge sends a container is cut to MTU-sized
    /// frames with full checksums. The benchmark's floor on the wire-like
    /// segment (two containers on one bridge) then pays what crossing the
    /// segment costs every mode.
    pub fn emulate_wire_to_containers(&self) -> Result<()> {
        for host in &self.hosts {
            for n in 0..host.containers.len() {
                wire_like(&host.ns, &format!("veth{n}"))?;
            }
        }
        Ok(())
    }

    /// Sets the MTU of every interface on the hosts' segment (the hosts' and
    /// the router's eth0, the switch's ports) to `mtu`, below the 1500 of
    /// docker0 and containers, as on clouds and under tunnels; and turns off
    /// GRO, TSO and GSO on the hosts' eth0, so the uplinks, like a real NIC's
    /// wire, carry nothing bigger than the MTU.
    pub fn set_segment_mtu(&self, mtu: u32) -> Result<()> {
        let mtu = mtu.to_string();
        for host in &self.hosts {
            host.ns.ip(&["link", "set", "eth0", "mtu", &mtu])?;
            host.ns.exec(
                "ethtool",
                &["-K", "eth0", "gro", "off", "tso", "off", "gso", "off"],
            )?;
            self.switch
                .ip(&["link", "set", &format!("p{}", host.id), "mtu", &mtu])?;
        }
        if let Some(router) = &self.router {
            router.ip(&["link", "set", "eth0", "mtu", &mtu])?;
            self.switch.ip(&["link", "set", "prtr", "mtu", &mtu])?;
        }
        Ok(())
    }

    /// Lets the hosts learn their containers (a ping to the gateway fills the
    /// neighbour table and the bridge FDB), then `dr-ctl sync` on each.
    pub fn sync_endpoints(&self) -> Result<()> {
        for host in &self.hosts {
            for c in &host.containers {
                c.ns.exec("ping", &["-c", "1", "-W", "1", &host.gateway().to_string()])?;
            }
            host.dr(&["sync"])?;
        }
        Ok(())
    }

    /// `peer add` for every other host on every host.
    pub fn mesh(&self) -> Result<()> {
        for host in &self.hosts {
            for peer in self.hosts.iter().filter(|p| p.id != host.id) {
                host.dr(&[
                    "peer",
                    "add",
                    &peer.subnet(),
                    "via",
                    &peer.uplink_addr.to_string(),
                ])?;
            }
        }
        Ok(())
    }
}

/// Turns off checksum offload, TSO and GSO on `ns`'s `port`, as a NIC
/// without offloads: what leaves it is MTU-sized with full checksums.
fn wire_like(ns: &Netns, port: &str) -> Result<()> {
    ns.exec(
        "ethtool",
        &["-K", port, "tx", "off", "tso", "off", "gso", "off"],
    )?;
    Ok(())
}
