//! The previous release of dr-ctl, built from git for the upgrade test:
//! `cargo xtask test` checks that `up` from this tree takes over a host that
//! the previous release set up, in place and without losing a packet.
use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{run, workspace_root};

/// The last commit that landed before the pinned maps' layout changed.
const REVISION: &str = "475ab67a03d8a08b61e3b2bb093edaa2b8de32f8";

/// Builds the previous release once (its own target directory, since its
/// binary has the same name) and returns the path of its dr-ctl.
pub fn build() -> Result<PathBuf> {
    let root = workspace_root().join("target/previous-release");
    let (src, target) = (root.join(REVISION), root.join("target"));
    let binary = target.join("debug/dr-ctl");
    if !src.join("Cargo.toml").is_file() {
        std::fs::create_dir_all(&src).context("creating the previous release's directory")?;
        // `git archive` needs no work tree bookkeeping; CI's clone has the history.
        let status = Command::new("sh")
            .args([
                "-c",
                &format!("git archive {REVISION} | tar -x -C '{}'", src.display()),
            ])
            .current_dir(workspace_root())
            .status()
            .context("extracting the previous release with git archive")?;
        if !status.success() {
            let _ = std::fs::remove_dir_all(&src);
            bail!("cannot extract revision {REVISION} (a shallow clone?)");
        }
    }
    let manifest = src.join("Cargo.toml");
    run(
        "cargo",
        &[
            "build",
            "-p",
            "dr-ctl",
            "--manifest-path",
            manifest.to_str().context("non-UTF-8 path")?,
            "--target-dir",
            target.to_str().context("non-UTF-8 path")?,
        ],
        &[],
    )?;
    Ok(binary)
}
