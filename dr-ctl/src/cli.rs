//! The command line: the commands, each in its own module under `cmd/`.
use clap::{Parser, Subcommand};

use crate::{
    cmd::{self, render},
    error::Result,
};

/// eBPF direct routing between container hosts.
///
/// Containers on different hosts reach each other by their own IPs: peer
/// subnets live in BPF maps, not in the routing table, and TC programs on
/// docker0 and the uplink forward between them. Run `up` once per host, then
/// `peer add` for every other host.
#[derive(Debug, Parser)]
#[command(name = "dr-ctl", version, propagate_version = true)]
pub struct Cli {
    /// Print results as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set up docker0 and load, attach and pin the datapath (idempotent).
    Up(cmd::up::Args),
    /// Detach and unpin the datapath and remove what `up` created.
    Down,
    /// Manage peer subnets.
    #[command(subcommand)]
    Peer(cmd::peer::PeerCommand),
    /// Show programs, interfaces, local subnet, peers and counters.
    Status,
    /// Apply the cluster plan to this host: validate the whole file, find this
    /// host's entry (by --host or by a local address), bring dr up with it and
    /// make the peers match, without ever dropping a peer that stays.
    Apply(cmd::apply::Args),
    /// Run the agent: register this host's subnet in etcd (leased, or the one
    /// given), keep it alive, and follow the other hosts' entries into the
    /// peer map. Runs until killed; survives etcd restarts.
    Agent(cmd::agent::Args),
    /// Print the datapath's events (see `up --datapath-log`) until interrupted.
    Monitor,
    /// Serve the counters in the Prometheus text format (or print them once).
    Metrics(cmd::metrics::Args),
    /// Refresh what dr learns from the kernel (the local containers it
    /// delivers to directly and whose docker0 ports get its port program,
    /// the uplink's MTU, Docker's published ports from its iptables rules:
    /// which dr translates, which stay the kernel's and why); safe to run
    /// any time, e.g. from a timer.
    Sync,
    /// Show what the datapath would do with a packet (verdict and its
    /// counter, rewritten headers, next hop) by running a synthetic one
    /// through a dry-run copy of the programs: nothing is sent, counted or
    /// translated.
    Trace(cmd::trace::Args),
    /// Inspect and manage SNAT translations.
    #[command(subcommand)]
    Nat(cmd::nat::NatCommand),
}

/// Exit codes scripts can rely on (README lists them).
pub mod exit {
    /// Done; for `status`: dr is up and whole.
    pub const OK: u8 = 0;
    /// Failed: bad input (nothing changed) or an error on the way.
    pub const FAILURE: u8 = 1;
    /// The command line did not parse (clap's code).
    pub const USAGE: u8 = 2;
    /// dr is not up in this network namespace.
    pub const NOT_UP: u8 = 3;
    /// `status`: dr is up but not whole (a hook detached, an interface gone).
    pub const DEGRADED: u8 = 4;
}

/// What a command prints, and its exit code.
pub struct Outcome {
    pub output: String,
    pub code: u8,
}

impl From<String> for Outcome {
    fn from(output: String) -> Self {
        Self {
            output,
            code: exit::OK,
        }
    }
}

/// The exit code of a failed command.
pub fn error_code(e: &crate::error::Error) -> u8 {
    match e {
        crate::error::Error::NotUp => exit::NOT_UP,
        _ => exit::FAILURE,
    }
}

/// Runs a parsed command and returns what to print.
pub async fn run(cli: Cli) -> Result<Outcome> {
    let json = cli.json;
    let output = match cli.command {
        Command::Up(args) => render(&cmd::up::run(args).await?, json),
        Command::Down => render(&cmd::down::run().await?, json),
        Command::Peer(command) => cmd::peer::run(command, json).await?,
        Command::Status => {
            let status = cmd::status::run().await?;
            let code = if status.problems.is_empty() {
                exit::OK
            } else {
                exit::DEGRADED
            };
            return Ok(Outcome {
                output: render(&status, json),
                code,
            });
        }
        Command::Apply(args) => render(&cmd::apply::run(args).await?, json),
        Command::Agent(args) => {
            cmd::agent::run(args).await?;
            String::new()
        }
        Command::Monitor => {
            cmd::monitor::run().await?;
            String::new()
        }
        Command::Metrics(args) => cmd::metrics::run(args).await?,
        Command::Sync => render(&cmd::sync::run().await?, json),
        Command::Nat(command) => cmd::nat::run(command, json)?,
        Command::Trace(args) => render(&cmd::trace::run(args).await?, json),
    };
    Ok(output.into())
}
