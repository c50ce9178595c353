//! `cargo xtask package`: the Debian package, built with cargo-deb from
//! `[package.metadata.deb]` in dr-ctl/Cargo.toml, around a statically linked
//! dr-ctl (glibc's static libc.a, `+crt-static`), so that the package runs
//! whatever glibc the host has (README: "A static binary").
use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{run, workspace_root};

/// The static build's target: named explicitly, so that `+crt-static`
/// reaches only dr-ctl's code, never build scripts or proc macros (which
/// must stay dynamic), and the result goes to its own directory.
const TARGET: &str = "x86_64-unknown-linux-gnu";
const STATIC: (&str, &str) = (
    "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
    "-C target-feature=+crt-static",
);

/// Builds the statically linked release binary; returns its path.
pub fn build_static() -> Result<PathBuf> {
    run(
        "cargo",
        &["build", "--release", "-p", "dr-ctl", "--target", TARGET],
        &[STATIC],
    )?;
    Ok(workspace_root().join(format!("target/{TARGET}/release/dr-ctl")))
}

/// Builds the static release binary, the completions and man pages it
/// ships, and the .deb; returns the .deb's path.
pub fn build() -> Result<PathBuf> {
    build_static()?;
    // Regenerated from scratch: a removed subcommand must not leave its page.
    let dist = workspace_root().join("target/dist");
    if dist.exists() {
        std::fs::remove_dir_all(&dist).with_context(|| format!("removing {}", dist.display()))?;
    }
    let dist = dist.to_str().context("non-UTF-8 path")?;
    // In the static build's target directory: no second release build.
    run(
        "cargo",
        &[
            "run",
            "--quiet",
            "--release",
            "--target",
            TARGET,
            "-p",
            "dr-ctl",
            "--example",
            "generate-docs",
            "--",
            dist,
        ],
        &[STATIC],
    )?;
    // With --target, cargo-deb takes `target/release/dr-ctl` from
    // target/<TARGET>/release.
    let args = [
        "deb",
        "-p",
        "dr-ctl",
        "--no-build",
        "--target",
        TARGET,
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
