//! The node lock: one dr-ctl changing a network namespace's dr at a time.
//!
//! It is a file per network namespace under /run/dr, and no command ever
//! removes it. The pin directory cannot serve: `down` deletes it, so a
//! waiter would end up holding a lock on a directory no longer there while
//! the next `up` creates and locks a new one. bpffs holds no regular files,
//! and a lock on the bpffs mount point would be one for the whole host,
//! serialising every namespace's dr-ctl. /run is a tmpfs, so the (empty)
//! files go at reboot, with the namespaces they named. Only root can create
//! /run/dr, and dr makes it 0700, so no other user can hold the lock.
use std::{
    fs::{DirBuilder, File},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::PathBuf,
};

use nix::fcntl::{Flock, FlockArg};

use crate::{
    bpffs,
    error::{io_context, Error, Result},
};

const LOCK_DIR: &str = "/run/dr";

/// A held exclusive lock on this network namespace's dr.
pub struct NodeLock {
    _flock: Flock<File>,
}

impl NodeLock {
    /// Takes the lock, waiting for another dr-ctl to finish.
    pub fn take() -> Result<Self> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(LOCK_DIR)
            .map_err(io_context(format!("creating {LOCK_DIR}")))?;
        let path = PathBuf::from(format!("{LOCK_DIR}/netns-{}.lock", bpffs::netns_inode()?));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_context(format!("opening {}", path.display())))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map(|flock| Self { _flock: flock })
            .map_err(|(_, e)| Error::Io {
                context: format!("locking {}", path.display()),
                source: e.into(),
            })
    }
}
