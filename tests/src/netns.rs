//! Network namespaces and commands run in them.
use std::{
    fs::File,
    os::unix::fs::MetadataExt,
    path::Path,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context as _, Result};
use nix::sched::{setns, CloneFlags};

/// Runs a command to completion; an error carries its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = output(program, args)?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command to completion, whatever its exit status.
pub fn output(program: &str, args: &[&str]) -> Result<Output> {
    Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))
}

/// A name prefix unique to this process and call, for namespaces and pins.
pub fn unique_prefix(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A named network namespace. Drop deletes the name, and with it the
/// namespace unless processes still live in it (an attached container's).
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn add(name: &str) -> Result<Self> {
        run("ip", &["netns", "add", name])?;
        let ns = Self {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        // Once a dockerd has loaded br_netfilter, every new namespace passes
        // bridged frames through iptables and conntrack by default: not what
        // a host without Docker does, and it skews the benchmark. A dockerd
        // started in a namespace turns it back on there.
        if Path::new("/proc/sys/net/bridge").exists() {
            ns.exec(
                "sysctl",
                &[
                    "-q",
                    "-w",
                    "net.bridge.bridge-nf-call-iptables=0",
                    "net.bridge.bridge-nf-call-ip6tables=0",
                    "net.bridge.bridge-nf-call-arptables=0",
                ],
            )?;
        }
        Ok(ns)
    }

    /// Names the network namespace of process `pid` (a container's, made by
    /// someone else), so the helpers here work in it. Drop removes only the
    /// name; the namespace lives on with its processes.
    pub fn attach(name: &str, pid: u32) -> Result<Self> {
        run("ip", &["netns", "attach", name, &pid.to_string()])?;
        Ok(Self {
            name: name.to_string(),
        })
    }

    /// Runs `program` inside the namespace via `ip netns exec`.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Like [`Self::exec`], keeping the exit status and output.
    pub fn exec_output(&self, program: &str, args: &[&str]) -> Result<Output> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        output("ip", &full)
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// The links (name, MAC, flags) and IPv4 addresses, from `ip -br`,
    /// without what a link's carrier sets (the operational state column,
    /// NO-CARRIER, LOWER_UP): a fresh veth gains its carrier on its own,
    /// while what dr could change stays in.
    pub fn links_and_addresses(&self) -> Result<String> {
        let brief =
            self.ip(&["-br", "link", "show"])? + &self.ip(&["-br", "-4", "addr", "show"])?;
        Ok(brief
            .lines()
            .map(|line| {
                let mut words = line.split_whitespace();
                let name = words.next().unwrap_or_default();
                let _operstate = words.next();
                let rest: Vec<String> = words
                    .map(|w| {
                        w.replace("NO-CARRIER,", "")
                            .replace(",LOWER_UP", "")
                            .replace("LOWER_UP,", "")
                    })
                    .collect();
                format!("{name} {}\n", rest.join(" "))
            })
            .collect())
    }

    /// Packets `link` has counted in `direction` ("rx" or "tx"), as
    /// `ip -s link` shows them.
    pub fn link_packets(&self, link: &str, direction: &str) -> Result<u64> {
        let out = self.ip(&["-j", "-s", "link", "show", "dev", link])?;
        let links: serde_json::Value = serde_json::from_str(&out)?;
        links[0]["stats64"][direction]["packets"]
            .as_u64()
            .with_context(|| format!("{direction} packets of {link}: {out}"))
    }

    /// The namespace's inode number: dr-ctl names its pin directory after it.
    pub fn inode(&self) -> Result<u64> {
        Ok(std::fs::metadata(format!("/run/netns/{}", self.name))?.ino())
    }

    /// Runs `f` on a thread that has entered the namespace. Sockets created
    /// there stay in the namespace when handed back.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        let file = File::open(format!("/run/netns/{}", self.name))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))?
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = output("ip", &["netns", "del", &self.name]);
    }
}
