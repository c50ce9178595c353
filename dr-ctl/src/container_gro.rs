//! GRO on the containers' ends of docker0's ports, for native XDP.
//!
//! A native XDP redirect into a veth hands the frame to the NAPI ring of the
//! veth's other end, which exists only while that end has GRO on or an XDP
//! program; without one the kernel drops the frame (`veth_xdp_xmit`:
//! ENXIO). Docker leaves GRO off on a container's eth0, so with native XDP
//! dr turns it on for the containers it learns (GRO merges segments of a
//! flow; the container sees the same packets), and XDP redirects only into
//! ports whose other end has it (`Endpoint::xdp_ready`): for any other
//! container, TC delivers. An XDP program there instead would cost every
//! packet the container receives and take GSO from the host's end.
//!
//! Hand-written: the ethtool crate reads features but cannot set them, and
//! no crate opens a namespace known only by its id (here: the one whose id
//! matches among the named namespaces and the processes'); GRO's state is
//! one pair of legacy `SIOCETHTOOL` requests, sent from a thread that has
//! entered the container's namespace.
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    ffi::CStr,
    fs::File,
    io,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
};

use nix::sched::{setns, CloneFlags};
use tracing::{info, warn};

use crate::{
    error::Result,
    netlink::{Netlink, VethPeer},
};

/// Of `ports` (docker0's, the host ends of containers' veths), those into
/// which native XDP may redirect: GRO is on at the other end, turned on
/// here where it was off. A port whose other end cannot be found or set
/// is left out, with a warning: XDP leaves its container's frames to TC.
pub async fn ready_for_xdp(nl: &Netlink, ports: &BTreeSet<u32>) -> Result<HashSet<u32>> {
    // The ports' other ends, by the namespace they live in.
    let mut by_netns: BTreeMap<Option<i32>, Vec<(u32, u32)>> = BTreeMap::new();
    for &port in ports {
        match nl.interface_by_index(port).await?.and_then(|i| i.veth_peer) {
            Some(VethPeer { index, nsid }) => by_netns.entry(nsid).or_default().push((port, index)),
            None => warn!("docker0 port {port}: not a veth (or gone), XDP leaves its frames to TC"),
        }
    }
    let wanted: BTreeSet<i32> = by_netns.keys().flatten().copied().collect();
    let mut namespaces = namespaces_by_id(nl, &wanted).await?;
    let mut ready = HashSet::new();
    for (nsid, peers) in by_netns {
        let netns = match nsid {
            None => None,
            Some(id) => match namespaces.remove(&id) {
                Some(file) => Some(file),
                None => {
                    warn!("network namespace {id} (of docker0 ports {peers:?}): not under /run/netns, /run/docker/netns or a process, XDP leaves its frames to TC");
                    continue;
                }
            },
        };
        for ((port, peer), result) in peers.iter().zip(gro_on_in(netns, &peers)) {
            match result {
                Ok(true) => {
                    info!("docker0 port {port}: GRO turned on at the container's end (ifindex {peer}) for XDP");
                    ready.insert(*port);
                }
                Ok(false) => {
                    ready.insert(*port);
                }
                Err(e) => warn!("docker0 port {port}: GRO at the container's end (ifindex {peer}): {e}; XDP leaves its frames to TC"),
            }
        }
    }
    Ok(ready)
}

/// Where network namespaces can be opened: the ones `ip netns` and dockerd
/// name (bind mounts, present even with no process inside), then every
/// process's.
fn namespace_files() -> impl Iterator<Item = std::path::PathBuf> {
    let named = ["/run/netns", "/run/docker/netns"]
        .into_iter()
        .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
        .map(|entry| entry.path());
    let processes = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|entry| entry.path().join("ns/net"));
    named.chain(processes)
}

/// The network namespaces with the ids `wanted` (as this namespace numbers
/// them), opened from [`namespace_files`].
async fn namespaces_by_id(nl: &Netlink, wanted: &BTreeSet<i32>) -> Result<BTreeMap<i32, File>> {
    let mut found = BTreeMap::new();
    let mut seen = HashSet::new();
    for path in namespace_files() {
        if found.len() == wanted.len() {
            break;
        }
        // A process may exit, a namespace go, while they are read: skipped.
        let Ok(file) = File::open(&path) else {
            continue;
        };
        let Ok(meta) = file.metadata() else {
            continue;
        };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        // Not a namespace (a stray file in a named directory): no id.
        if let Ok(Some(id)) = nl.nsid_of(file.as_fd()).await {
            if wanted.contains(&id) {
                found.insert(id, file);
            }
        }
    }
    Ok(found)
}

/// Turns GRO on for each of `peers`' second element (an ifindex) in
/// `netns` (None: this one); for each, whether it was off.
fn gro_on_in(netns: Option<File>, peers: &[(u32, u32)]) -> Vec<io::Result<bool>> {
    let run = || -> io::Result<Vec<io::Result<bool>>> {
        if let Some(netns) = &netns {
            setns(netns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        }
        // SAFETY: plain socket creation; the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor no one else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(peers.iter().map(|(_, peer)| gro_on(&sock, *peer)).collect())
    };
    // Only this thread enters the namespace.
    let outcome = std::thread::scope(|s| s.spawn(run).join());
    match outcome {
        Ok(Ok(results)) => results,
        Ok(Err(e)) => peers
            .iter()
            .map(|_| Err(io::Error::new(e.kind(), e.to_string())))
            .collect(),
        Err(_) => peers
            .iter()
            .map(|_| Err(io::Error::other("the namespace's thread panicked")))
            .collect(),
    }
}

const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

/// `struct ethtool_value` of <linux/ethtool.h>.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Turns GRO on for interface `index` of the socket's namespace; whether
/// it was off.
fn gro_on(sock: &OwnedFd, index: u32) -> io::Result<bool> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer has IF_NAMESIZE bytes, as the call needs.
    if unsafe { libc::if_indextoname(index, name.as_mut_ptr()) }.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(name.as_ptr()) };
    if ethtool(sock, name, ETHTOOL_GGRO, 0)? != 0 {
        return Ok(false);
    }
    ethtool(sock, name, ETHTOOL_SGRO, 1)?;
    Ok(true)
}

/// One `SIOCETHTOOL` request with a `struct ethtool_value`; its answer.
fn ethtool(sock: &OwnedFd, name: &CStr, cmd: u32, data: u32) -> io::Result<u32> {
    let mut value = EthtoolValue { cmd, data };
    // SAFETY: plain data, zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.to_bytes()) {
        *dst = *src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: ifr and the value it points to live across the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data)
}
