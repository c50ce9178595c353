//! A Debian 12 root without build tools (`debootstrap --variant=minbase`,
//! plus iproute2, the package's Recommends): a machine that never saw Rust,
//! LLVM or bpf-linker, for installing the package and running dr from it.
//!
//! The root is made once and cached (about 40 s of debootstrap here); each
//! run works on an overlay over it, removed on drop, so the cache stays
//! pristine. Commands run chrooted in a mount namespace of their own
//! (`unshare`), where /proc, the network namespace's /sys and the host's /run
//! (dr's node lock) are mounted: those mounts go with the namespace, also
//! when a test fails. dr-ctl finds the host's bpffs as under `ip netns exec`
//! (through an ancestor process in the host's mount namespace).
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{bail, Context as _, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::netns::unique_prefix;

const CACHE: &str = "/var/cache/dr-tests/bookworm-minbase";
const MIRROR: &str = "http://deb.debian.org/debian";

pub struct DebianRoot {
    /// Holds the overlay's upper and work directories and its mount point.
    dir: PathBuf,
    mounted: bool,
}

fn check(what: &str, out: std::io::Result<Output>) -> Result<Output> {
    let out = out.with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// The cached root, debootstrapped into a scratch directory and renamed
/// into place when complete, so an interrupted run leaves no half root.
fn cached_root() -> Result<&'static Path> {
    let cache = Path::new(CACHE);
    if cache.join("usr/bin/dpkg").is_file() {
        return Ok(cache);
    }
    let partial = PathBuf::from(format!("{CACHE}.partial-{}", std::process::id()));
    std::fs::create_dir_all(cache.parent().expect("absolute"))?;
    check(
        "debootstrap",
        Command::new("debootstrap")
            .args(["--variant=minbase", "--include=iproute2", "bookworm"])
            .arg(&partial)
            .arg(MIRROR)
            .output(),
    )?;
    std::fs::rename(&partial, cache)?;
    Ok(cache)
}

impl DebianRoot {
    /// A fresh overlay over the cached root (debootstrapped first if absent).
    pub fn new() -> Result<DebianRoot> {
        let lower = cached_root()?;
        let dir = std::env::temp_dir().join(unique_prefix("dr-debian-root-"));
        let mut root = DebianRoot {
            dir,
            mounted: false,
        };
        for sub in ["upper", "work", "root"] {
            std::fs::create_dir_all(root.dir.join(sub))?;
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            root.dir.join("upper").display(),
            root.dir.join("work").display()
        );
        mount(
            Some("overlay"),
            &root.path(),
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .context("mounting the overlay")?;
        root.mounted = true;
        Ok(root)
    }

    /// The root's directory, as seen from the host.
    pub fn path(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// A script that runs its arguments inside the root (see the module
    /// comment); under `ip netns exec` it sees that namespace's interfaces.
    pub fn runner(&self) -> Result<PathBuf> {
        let script = self.dir.join("in-root");
        let text = format!(
            r#"#!/bin/sh
exec unshare --mount --propagation slave sh -ec '
root=$1; shift
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --bind /run "$root/run"
exec chroot "$root" "$@"' in-root '{}' "$@"
"#,
            self.path().display()
        );
        std::fs::write(&script, text)?;
        check(
            "chmod",
            Command::new("chmod").arg("755").arg(&script).output(),
        )?;
        Ok(script)
    }

    /// A script that runs the root's /usr/bin/dr-ctl with its arguments:
    /// what the test harness takes as the dr-ctl binary.
    pub fn dr_ctl(&self) -> Result<PathBuf> {
        let runner = self.runner()?;
        let script = self.dir.join("dr-ctl");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nexec '{}' /usr/bin/dr-ctl \"$@\"\n",
                runner.display()
            ),
        )?;
        check(
            "chmod",
            Command::new("chmod").arg("755").arg(&script).output(),
        )?;
        Ok(script)
    }

    /// Runs `program` with `args` inside the root; fails on a non-zero exit.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = check(
            &format!("{program} {} in the Debian root", args.join(" ")),
            Command::new(self.runner()?)
                .arg(program)
                .args(args)
                .output(),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Like [`Self::run`], keeping the exit status and output.
    pub fn output(&self, program: &str, args: &[&str]) -> Result<Output> {
        Ok(Command::new(self.runner()?)
            .arg(program)
            .args(args)
            .output()?)
    }
}

impl Drop for DebianRoot {
    fn drop(&mut self) {
        if self.mounted {
            // Lazily: a namespace still holding it (a dr-ctl being killed)
            // lets go when it ends.
            let _ = umount2(&self.path(), MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
