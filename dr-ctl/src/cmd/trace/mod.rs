//! `dr-ctl trace`: what the datapath would do with a packet, without
//! sending one. A synthetic frame runs through the dry-run copy of the
//! programs (`datapath::DryRun`) against the live tables: its verdict, the
//! counter that gives the reason, the headers it rewrote and where it would
//! have gone. Nothing is counted, no translation is made, no table changes.
mod headers;
mod report;

use std::{net::Ipv4Addr, str::FromStr};

use dr_common::{program_names, Counter, Trace, XDP_OFF};
use etherparse::PacketBuilder;

pub use self::{
    headers::{Change, Headers},
    report::{Redirect, Step, TraceReport},
};
use crate::{
    datapath::{DryRun, Hook, Run},
    error::{Error, Result},
    netlink::Netlink,
    node::Node,
    object,
    subnet::from_map_addr,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Source address, with a port for TCP and UDP (default 40000).
    #[arg(value_name = "SRC[:PORT]")]
    src: Endpoint,
    /// Destination address, with a port for TCP and UDP (default 80).
    #[arg(value_name = "DST[:PORT]")]
    dst: Endpoint,
    /// The packet: a TCP SYN, a UDP datagram or an ICMP echo request.
    #[arg(value_enum, default_value_t = Protocol::Udp)]
    protocol: Protocol,
    /// Where the packet enters: from a container (docker0), from the wire
    /// (uplink: XDP first when attached, then TC), or from this host's own
    /// processes, leaving by the uplink (host).
    #[arg(long, value_enum, default_value_t = Entry::Docker0)]
    from: Entry,
}

/// An address with an optional port.
#[derive(Clone, Copy, Debug)]
pub struct Endpoint {
    addr: Ipv4Addr,
    port: Option<u16>,
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, port) = match s.split_once(':') {
            Some((addr, port)) => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("{port:?} is not a port (1-65535)"))?;
                (addr, Some(port))
            }
            None => (s, None),
        };
        let addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        Ok(Self { addr, port })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Protocol {
    Tcp,
    Udp,
    Icmp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Entry {
    Docker0,
    Uplink,
    Host,
}

const DEFAULT_SRC_PORT: u16 = 40000;
const DEFAULT_DST_PORT: u16 = 80;
/// The echo request's identifier.
const ICMP_ID: u16 = 1;
const TTL: u8 = 64;
/// A locally administered MAC for the sender.
const SENDER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const PAYLOAD: &[u8] = b"dr-ctl trace";

impl Args {
    /// What the parser cannot check alone.
    fn check(&self) -> Result<()> {
        if self.protocol == Protocol::Icmp && (self.src.port.is_some() || self.dst.port.is_some()) {
            return Err(Error::Invalid(
                "ports are for tcp and udp; an icmp echo request has none".into(),
            ));
        }
        Ok(())
    }

    /// The frame, addressed to `receiver_mac`.
    fn frame(&self, receiver_mac: [u8; 6]) -> Result<Vec<u8>> {
        let builder = PacketBuilder::ethernet2(SENDER_MAC, receiver_mac).ipv4(
            self.src.addr.octets(),
            self.dst.addr.octets(),
            TTL,
        );
        let sport = self.src.port.unwrap_or(DEFAULT_SRC_PORT);
        let dport = self.dst.port.unwrap_or(DEFAULT_DST_PORT);
        let mut frame = Vec::new();
        match self.protocol {
            // A SYN: the first packet of a connection, which may open a translation.
            Protocol::Tcp => builder
                .tcp(sport, dport, 1, 65535)
                .syn()
                .write(&mut frame, PAYLOAD),
            Protocol::Udp => builder.udp(sport, dport).write(&mut frame, PAYLOAD),
            Protocol::Icmp => builder
                .icmpv4_echo_request(ICMP_ID, 1)
                .write(&mut frame, PAYLOAD),
        }
        .map_err(|e| Error::Internal(format!("building the packet: {e}")))?;
        Ok(frame)
    }
}

/// The TC action or XDP action `verdict`, named.
fn verdict_name(xdp: bool, verdict: u32) -> String {
    match (xdp, verdict) {
        (false, 0) => "pass".into(),
        (false, 2) => "drop".into(),
        (false, 7) => "redirect".into(),
        (true, 0) => "aborted".into(),
        (true, 1) => "drop".into(),
        (true, 2) => "pass".into(),
        (true, 3) => "tx".into(),
        (true, 4) => "redirect".into(),
        (_, n) => format!("action {n}"),
    }
}

fn counters(trace: &Trace) -> Vec<&'static str> {
    Counter::ALL
        .iter()
        .filter(|c| trace.counters & (1 << **c as u32) != 0)
        .map(|c| c.name())
        .collect()
}

const XDP_PASS: u32 = 2;

/// A program on the packet's way.
#[derive(Clone, Copy)]
enum Stage {
    Xdp,
    Tc(Hook),
}

impl Stage {
    fn program(self) -> &'static str {
        match self {
            Stage::Xdp => program_names::UPLINK_XDP,
            Stage::Tc(hook) => hook.program(),
        }
    }
}

pub async fn run(args: Args) -> Result<TraceReport> {
    args.check()?;
    // Holding the lock throughout: an `up` migrating a map removes its pin
    // for a moment, and the loader would create and pin one of its own.
    let node = Node::open()?;
    if node.state.object_hash != object::hash() {
        return Err(Error::Conflict(
            "the attached programs come from another build of dr: run `dr-ctl up` with this \
             one first, so that trace runs what is attached"
                .into(),
        ));
    }
    let mut frame = args.frame(node.config.bridge_mac)?;
    let packet = Headers::of(&frame)
        .ok_or_else(|| Error::Internal("the packet built does not parse".into()))?;
    let stages: &[Stage] = match args.from {
        Entry::Docker0 => &[Stage::Tc(Hook::BridgeIngress)],
        Entry::Uplink if node.state.xdp_mode != XDP_OFF => {
            &[Stage::Xdp, Stage::Tc(Hook::UplinkIngress)]
        }
        Entry::Uplink => &[Stage::Tc(Hook::UplinkIngress)],
        Entry::Host => &[Stage::Tc(Hook::UplinkEgress)],
    };
    let mut dry_run = DryRun::load(node.pins().path())?;
    let nl = Netlink::connect()?;
    let mut steps = Vec::new();
    for &stage in stages {
        let run = match stage {
            Stage::Xdp => dry_run.run_xdp(&frame)?,
            Stage::Tc(hook) => dry_run.run_tc(hook, &frame)?,
        };
        let xdp = matches!(stage, Stage::Xdp);
        let goes_on = xdp && run.verdict == XDP_PASS;
        let before = Headers::of(&frame);
        frame = run.frame.clone();
        steps.push(step(&nl, before.as_ref(), stage.program(), xdp, run).await?);
        if !goes_on {
            break;
        }
    }
    Ok(TraceReport { packet, steps })
}

/// Describes one program's run of the packet `before`.
async fn step(
    nl: &Netlink,
    before: Option<&Headers>,
    program: &'static str,
    xdp: bool,
    run: Run,
) -> Result<Step> {
    let redirect = match run.trace.redirect_ifindex {
        0 => None,
        ifindex => Some(Redirect {
            interface: nl
                .interface_by_index(ifindex)
                .await?
                .map_or("(gone)".into(), |i| i.name),
            ifindex,
            next_hop: (run.trace.next_hop != 0).then(|| from_map_addr(run.trace.next_hop)),
            into_container: run.trace.into_container != 0,
        }),
    };
    let rewritten = match (before, Headers::of(&run.frame)) {
        (Some(before), Some(after)) => before.changes(&after),
        _ => Vec::new(),
    };
    Ok(Step {
        program,
        verdict: verdict_name(xdp, run.verdict),
        counters: counters(&run.trace),
        new_translation: run.trace.new_translation != 0,
        redirect,
        rewritten,
    })
}
