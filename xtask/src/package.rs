//! `cargo xtask package`: the Debian package, built with cargo-deb from
//! `[package.metadata.deb]` in dr-ctl/Cargo.toml.
use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{run, workspace_root};

/// Builds the release binary, the completions and man pages it ships, and
/// the .deb; returns the .deb's path.
pub fn build() -> Result<PathBuf> {
    run("cargo", &["build", "--release", "-p", "dr-ctl"], &[])?;
    // Regenerated from scratch: a removed subcommand must not leave its page.
    let dist = workspace_root().join("target/dist");
    if dist.exists() {
        std::fs::remove_dir_all(&dist).with_context(|| format!("removing {}", dist.display()))?;
    }
    let dist = dist.to_str().context("non-UTF-8 path")?;
    run(
        "cargo",
        &[
            "run",
            "--quiet",
            "--release",
            "-p",
            "dr-ctl",
            "--example",
            "generate-docs",
            "--",
            dist,
        ],
        &[],
    )?;
    let args = [
        "deb",
        "-p",
        "dr-ctl",
        "--no-build",
        "--output",
        "target/debian/",
    ];
    eprintln!("+ cargo {}", args.join(" "));
    let out = Command::new("cargo")
        .args(args)
        .current_dir(workspace_root())
        .output()
        .context("running cargo deb")?;
    if !out.status.success() {
        bail!(
            "`cargo {}` failed: {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // cargo-deb prints the package's path as its last line.
    let stdout = String::from_utf8(out.stdout).context("cargo deb output")?;
    let deb = workspace_root().join(
        stdout
            .lines()
            .last()
            .context("cargo deb printed no path")?
            .trim(),
    );
    if !deb.is_file() {
        bail!("cargo deb reported {}, which is not a file", deb.display());
    }
    Ok(deb)
}
