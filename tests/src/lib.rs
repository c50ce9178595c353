//! Emulated container hosts in network namespaces: the cluster the
//! integration tests, `cargo xtask demo` and the benchmarks run on.
//!
//! Every name carries a per-run prefix so runs can proceed in parallel, and
//! everything is removed on drop, also when a test fails.
pub mod cluster;
pub mod debian_root;
pub mod docker;
pub mod etcd;
pub mod load;
pub mod netns;
pub mod notify;
pub mod traffic;

pub use cluster::{Cluster, Container, Host};
pub use netns::Netns;

use std::path::PathBuf;

/// The dr-ctl binary under test: `$DR_CTL` (set by `cargo xtask test`), else
/// the workspace's debug build. Panics if it is missing.
pub fn dr_ctl_path() -> PathBuf {
    let path = std::env::var_os("DR_CTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/dr-ctl")
        });
    assert!(
        path.is_file(),
        "dr-ctl binary not found at {} (run `cargo xtask test`, or set DR_CTL)",
        path.display()
    );
    path
}

/// These tests change the kernel's state: they need root, and fail loudly
/// rather than skip without it.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "dr's kernel tests need root (CI runs them as root); refusing to skip"
    );
}
