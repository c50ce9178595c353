//! A stand-in for systemd's notification socket (`Type=notify`): a unix
//! datagram socket bound by the test, whose path a command gets as
//! `$NOTIFY_SOCKET`, as systemd passes it to a service.
use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::netns::unique_prefix;

pub struct NotifySocket {
    socket: UnixDatagram,
    dir: PathBuf,
}

impl NotifySocket {
    /// Binds a socket in a fresh directory (removed on drop).
    pub fn bind() -> Result<NotifySocket> {
        let dir = std::env::temp_dir().join(unique_prefix("dr-notify-"));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let socket = UnixDatagram::bind(dir.join("notify")).context("binding the notify socket")?;
        Ok(NotifySocket { socket, dir })
    }

    /// The value for `$NOTIFY_SOCKET`.
    pub fn path(&self) -> PathBuf {
        self.dir.join("notify")
    }

    /// The next notification (one datagram: its assignments, one per line,
    /// without the last newline), or None if none came within `limit`.
    pub fn next(&self, limit: Duration) -> Result<Option<String>> {
        self.socket.set_read_timeout(Some(limit))?;
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Ok(Some(
                String::from_utf8_lossy(&buf[..n]).trim_end().to_string(),
            )),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(Path::new(&self.dir));
    }
}
