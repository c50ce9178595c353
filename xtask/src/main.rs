//! Project tasks: `cargo xtask demo | test | soak | bench | build | bootstrap`.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod package;
mod previous_release;
mod vm;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what dr needs on a fresh Debian machine (apt packages, rust-src, bpf-linker).
    Bootstrap,
    /// Bootstrap, then build dr-ctl (with the embedded eBPF object) in release mode.
    Build {
        /// Statically linked (glibc's libc.a), as the Debian package ships it:
        /// target/x86_64-unknown-linux-gnu/release/dr-ctl.
        #[arg(long = "static")]
        static_: bool,
    },
    /// Bootstrap, then build the Debian package (target/debian/dr_*.deb): dr-ctl
    /// with the embedded eBPF object, systemd units, completions, man pages.
    Package,
    /// Bootstrap, build, then run an emulated three-host cluster and show dr at work.
    Demo,
    /// Bootstrap, build, then measure dr against the recipe it replaces (results/ and stdout).
    Bench {
        /// A short run for smoke testing (about two minutes).
        #[arg(long)]
        quick: bool,
        /// Rounds; modes are interleaved within each round [default: 5, quick: 1].
        #[arg(long)]
        rounds: Option<usize>,
        /// Only the cost workloads: CPU per packet, byte and connection at a
        /// fixed offered load, and each program's run time.
        #[arg(long)]
        cost_only: bool,
        /// Only the cost workloads whose `segment: workload` name contains
        /// this (e.g. `wire: tcp_crr_nat`); implies --cost-only.
        #[arg(long, value_name = "NAME")]
        workload: Option<String>,
    },
    /// Bootstrap, build, then run the NAT soak: many short and long flows
    /// through SNAT, expiry, gc and a full port range (tests/tests/soak.rs).
    Soak {
        /// How long the load runs.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
    /// Bootstrap, build (the Debian package too), then run every test: unit,
    /// crafted-packet datapath, netns integration, the package; without a
    /// filter, then the VM subset on Debian 12's 6.1 kernel.
    Test {
        /// Skip the VM subset.
        #[arg(long)]
        no_vm: bool,
        /// Run only the VM subset.
        #[arg(long, conflicts_with = "no_vm")]
        vm_only: bool,
        /// How every `dr-ctl up` of the suite attaches its TC programs
        /// (auto, tcx or netlink; sets DR_ATTACH). The VM subset always runs auto.
        #[arg(long, value_name = "MODE")]
        attach: Option<String>,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command from the workspace root, echoing it; fails on non-zero exit.
fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    eprintln!("+ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed: {status}", args.join(" "));
    }
    Ok(())
}

fn bootstrap() -> Result<()> {
    run("bash", &["scripts/bootstrap.sh"], &[])
}

fn dr_ctl(profile: &str) -> PathBuf {
    workspace_root().join("target").join(profile).join("dr-ctl")
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Bootstrap => bootstrap(),
        Task::Build { static_ } => {
            bootstrap()?;
            if static_ {
                println!("{}", package::build_static()?.display());
                Ok(())
            } else {
                run("cargo", &["build", "--release", "-p", "dr-ctl"], &[])
            }
        }
        Task::Package => {
            bootstrap()?;
            let deb = package::build()?;
            println!("{}", deb.display());
            Ok(())
        }
        // Demo and bench run the packaged (static) binary: one release
        // build serves them and the package.
        Task::Demo => {
            bootstrap()?;
            demo::run(&package::build_static()?)
        }
        Task::Bench {
            quick,
            rounds,
            cost_only,
            workload,
        } => {
            if let Some(only) = &workload {
                bench::check_workload(only)?;
            }
            bootstrap()?;
            let dr_ctl = package::build_static()?;
            let opts = bench::Options {
                quick,
                rounds: rounds.unwrap_or(if quick { 1 } else { 5 }),
                cost_only: cost_only || workload.is_some(),
                workload,
                results: workspace_root().join("results"),
            };
            bench::run_bench(&dr_ctl, &opts)
        }
        Task::Soak { minutes } => {
            bootstrap()?;
            run("cargo", &["build"], &[])?;
            let dr_ctl = dr_ctl("debug");
            let secs = (minutes * 60).to_string();
            let env = [
                ("DR_CTL", dr_ctl.to_str().context("non-UTF-8 path")?),
                ("DR_SOAK_SECS", secs.as_str()),
            ];
            let args = [
                "test",
                "-p",
                "dr-tests",
                "--test",
                "soak",
                "--",
                "--ignored",
                "--nocapture",
            ];
            run("cargo", &args, &env)
        }
        Task::Test {
            no_vm,
            vm_only,
            attach,
            args,
        } => {
            bootstrap()?;
            run("cargo", &["build"], &[])?;
            let dr_ctl = dr_ctl("debug");
            let dr_ctl = dr_ctl.to_str().context("non-UTF-8 path")?;
            if !vm_only {
                let previous = previous_release::build()?;
                let previous = previous.to_str().context("non-UTF-8 path")?;
                let deb = package::build()?;
                let deb = deb.to_str().context("non-UTF-8 path")?;
                let mut env = vec![
                    ("DR_CTL", dr_ctl),
                    ("DR_CTL_PREVIOUS", previous),
                    ("DR_DEB", deb),
                ];
                if let Some(mode) = &attach {
                    env.push(("DR_ATTACH", mode));
                }
                // Default members: everything but dr-ebpf, which only builds for BPF.
                let mut test_args = vec!["test"];
                test_args.extend(args.iter().map(String::as_str));
                run("cargo", &test_args, &env)?;
            }
            if vm_only || (!no_vm && args.is_empty()) {
                vm::run_subset(dr_ctl)?;
            }
            Ok(())
        }
    }
}
