//! Where dr pins its maps and links: the host's bpffs, one directory per
//! network namespace (`/sys/fs/bpf/dr/netns-<inode>`).
//!
//! `ip netns exec` runs its command in a private mount namespace with a fresh
//! /sys, where /sys/fs/bpf is empty and anything mounted vanishes with the
//! command. So when our own /sys/fs/bpf is not a bpffs we reach the host's
//! through the nearest ancestor process in another mount namespace
//! (`/proc/<pid>/root/sys/fs/bpf`), mounting it there if needed. The directory
//! is then held open and addressed as `/proc/self/fd/<fd>`, so the ancestor
//! may exit while we work. (PID 1's root is not readable on every machine.)
//!
//! Whoever can write to the pin directories can unlink a link pin (which
//! detaches forwarding). So dr mounts bpffs
//! `mode=0700`, creates its directories 0700, and refuses to use one that is
//! not a real directory owned by its own (root) user, or that others can
//! write to: a local user may have created it first.
use std::{
    fs::{self, File},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::{DirBuilderExt, MetadataExt},
    },
    path::{Path, PathBuf},
};

use nix::{
    fcntl::OFlag,
    mount::{mount, MsFlags},
    sched::{setns, unshare, CloneFlags},
    sys::{stat::Mode, statfs},
};

use crate::error::{io_context, Error, Result};

const BPFFS: &str = "/sys/fs/bpf";

/// The pin directory of this network namespace.
pub struct PinDir {
    /// Keeps the host bpffs reachable through `/proc/self/fd`.
    _root: OwnedFd,
    path: PathBuf,
    /// Human-readable location for messages.
    display: String,
}

impl PinDir {
    /// Finds (mounting bpffs if needed) the host bpffs and this namespace's
    /// directory in it. The directory itself is not created; if it (or
    /// `dr/`) exists, it must be one dr can trust.
    pub fn locate() -> Result<Self> {
        let root = open_host_bpffs()?;
        let leaf = format!("dr/netns-{}", netns_inode()?);
        let dir = Self {
            path: PathBuf::from(format!("/proc/self/fd/{}", root.as_raw_fd())).join(&leaf),
            display: format!("{BPFFS}/{leaf}"),
            _root: root,
        };
        for (path, display) in dir.levels() {
            if fs::symlink_metadata(&path).is_ok() {
                check_trusted(&path, &display)?;
            }
        }
        Ok(dir)
    }

    /// `dr/` and this namespace's directory below it, with their display names.
    fn levels(&self) -> [(PathBuf, String); 2] {
        let parent = |p: &Path| p.parent().map(Path::to_path_buf).unwrap_or_default();
        [
            (
                parent(&self.path),
                parent(Path::new(&self.display)).display().to_string(),
            ),
            (self.path.clone(), self.display.clone()),
        ]
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the directory is on the host, for messages.
    pub fn display(&self) -> &str {
        &self.display
    }

    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    /// Creates `dr/` and this namespace's directory, 0700, or checks the
    /// ones that exist.
    pub fn create(&self) -> Result<()> {
        for (path, display) in self.levels() {
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    check_trusted(&path, &display)?
                }
                Err(e) => return Err(io_context(format!("creating {display}"))(e)),
            }
        }
        Ok(())
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Removes the (emptied) directory, and `dr/` when no namespace uses it.
    pub fn remove(&self) -> Result<()> {
        fs::remove_dir(&self.path).map_err(io_context(format!("removing {}", self.display)))?;
        if let Some(parent) = self.path.parent() {
            // Fails harmlessly while other namespaces still have directories.
            let _ = fs::remove_dir(parent);
        }
        Ok(())
    }
}

/// Refuses a pin directory another user could have planted or can modify.
fn check_trusted(path: &Path, display: &str) -> Result<()> {
    let meta = fs::symlink_metadata(path).map_err(io_context(format!("reading {display}")))?;
    let refuse = |why: String| {
        Err(Error::Conflict(format!(
            "{display} {why}: refusing to use it (remove it if dr did not create it)"
        )))
    };
    let owner = nix::unistd::geteuid().as_raw();
    if !meta.file_type().is_dir() {
        refuse("is not a directory".into())
    } else if meta.uid() != owner {
        refuse(format!("is owned by uid {}, not {owner}", meta.uid()))
    } else if meta.mode() & 0o022 != 0 {
        refuse(format!(
            "is writable by other users (mode {:o})",
            meta.mode() & 0o7777
        ))
    } else {
        Ok(())
    }
}

/// This network namespace's inode: what names its pin directory and lock.
pub fn netns_inode() -> Result<u64> {
    Ok(fs::metadata("/proc/self/ns/net")
        .map_err(io_context("reading /proc/self/ns/net"))?
        .ino())
}

fn is_bpffs(path: &Path) -> bool {
    statfs::statfs(path).is_ok_and(|s| s.filesystem_type() == statfs::BPF_FS_MAGIC)
}

fn open_dir(path: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Io {
        context: format!("opening {}", path.display()),
        source: e.into(),
    })
}

fn mount_ns(pid: &str) -> Option<u64> {
    fs::metadata(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|m| m.ino())
}

fn parent_pid(pid: &str) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .map(|p| p.trim().to_string())
        .filter(|p| p != "0")
}

/// The nearest ancestor whose mount namespace differs from ours.
fn ancestor_in_other_mount_ns() -> Option<String> {
    let own = mount_ns("self")?;
    let mut pid = parent_pid("self")?;
    loop {
        match mount_ns(&pid) {
            Some(ns) if ns != own => return Some(pid),
            _ => pid = parent_pid(&pid)?,
        }
    }
}

fn open_host_bpffs() -> Result<OwnedFd> {
    let own = Path::new(BPFFS);
    if is_bpffs(own) {
        return open_dir(own);
    }
    match ancestor_in_other_mount_ns() {
        Some(pid) => {
            let theirs = PathBuf::from(format!("/proc/{pid}/root{BPFFS}"));
            if !is_bpffs(&theirs) {
                mount_bpffs_in(Some(&pid))?;
            }
            open_dir(&theirs)
        }
        None => {
            mount_bpffs_in(None)?;
            open_dir(own)
        }
    }
}

/// Mounts bpffs on /sys/fs/bpf in the mount namespace of `pid` (ours if None).
/// Entering another mount namespace is done on a fresh thread that first
/// unshares its filesystem context, as the kernel requires.
fn mount_bpffs_in(pid: Option<&str>) -> Result<()> {
    let pid = pid.map(str::to_owned);
    let result = std::thread::spawn(move || -> nix::Result<()> {
        if let Some(pid) = pid {
            unshare(CloneFlags::CLONE_FS)?;
            let ns = File::open(format!("/proc/{pid}/ns/mnt"))
                .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
            setns(ns, CloneFlags::CLONE_NEWNS)?;
        }
        mount(
            Some("bpf"),
            BPFFS,
            Some("bpf"),
            MsFlags::empty(),
            Some("mode=0700"),
        )
    })
    .join()
    .map_err(|_| Error::Invalid("mounting bpffs: thread panicked".into()))?;
    result.map_err(|e| Error::Io {
        context: format!("mounting bpffs on {BPFFS}"),
        source: e.into(),
    })
}
