//! Docker's published ports (`docker run -p HOST:CONTAINER[/udp]`), read from
//! `iptables-save -t nat` and `-t filter`, and which of them dr may translate
//! itself for traffic arriving on the uplink to the uplink's address. Pure
//! functions, no system access (`iptables.rs` reads the rules).
//!
//! Conservative by design: a rule or table it does not fully understand is
//! left to the kernel, so dr never translates what iptables would have
//! handled differently. No crate parses iptables-save output; this is a small
//! hand-written reader of the few shapes Docker writes.
use std::{collections::HashSet, net::Ipv4Addr};

use dr_common::{
    nat::{Origin, PublishedKey, IPPROTO_TCP, IPPROTO_UDP},
    DatapathConfig,
};
use serde::Serialize;

use crate::{
    node::local_subnet,
    subnet::{from_map_addr, to_map_addr},
};

/// The transport protocol of a published port; `"tcp"` or `"udp"` in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The IPPROTO number, as in packets.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
        }
    }

    /// The name iptables uses for `-p` and `-m`.
    fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            _ => None,
        }
    }
}

/// One published port: traffic to `host_port` goes to `container:container_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PublishedPort {
    pub proto: Proto,
    pub host_port: u16,
    pub container: Ipv4Addr,
    pub container_port: u16,
}

impl PublishedPort {
    /// The `PUBLISHED_PORTS` entry: `{port, proto}` -> the container.
    pub fn to_map(&self) -> (PublishedKey, Origin) {
        let key = PublishedKey {
            port: self.host_port.to_be(),
            proto: self.proto.number(),
            _pad: 0,
        };
        let target = Origin {
            addr: to_map_addr(self.container),
            port: self.container_port.to_be(),
            _pad: 0,
        };
        (key, target)
    }

    /// The port a `PUBLISHED_PORTS` entry holds; None for a protocol dr
    /// never writes.
    pub fn from_map(key: &PublishedKey, target: &Origin) -> Option<Self> {
        let proto = match key.proto {
            IPPROTO_TCP => Proto::Tcp,
            IPPROTO_UDP => Proto::Udp,
            _ => return None,
        };
        Some(Self {
            proto,
            host_port: u16::from_be(key.port),
            container: from_map_addr(target.addr),
            container_port: u16::from_be(target.port),
        })
    }
}

impl std::fmt::Display for PublishedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} -> {}:{}",
            self.host_port,
            self.proto.name(),
            self.container,
            self.container_port
        )
    }
}

/// Why a published port (or all of them) is left to the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeftToKernel {
    /// The iptables-save line, or "" for a table-wide reason.
    pub rule: String,
    pub reason: String,
}

impl LeftToKernel {
    fn new(rule: &str, reason: impl Into<String>) -> Self {
        Self {
            rule: rule.to_owned(),
            reason: reason.into(),
        }
    }
}

/// What [`parse`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PublishedPorts {
    /// Ports dr translates, in chain order, at most one per (proto, host_port).
    pub offloaded: Vec<PublishedPort>,
    /// Rules (or the whole table) left to the kernel, with the reason.
    pub left_to_kernel: Vec<LeftToKernel>,
}

/// What dr translates, and what it must not touch.
pub struct Scope<'a> {
    /// The datapath's configuration: the uplink's address (the only
    /// destination dr translates), the local subnet (the only targets) and
    /// dr's SNAT port range (a published port inside it is left to the
    /// kernel: it would collide with dr's translations).
    pub config: DatapathConfig,
    /// The uplink's name: a rule only for another interface's ingress never
    /// matches what dr translates.
    pub uplink: &'a str,
}

impl Scope<'_> {
    fn uplink_addr(&self) -> Ipv4Addr {
        from_map_addr(self.config.uplink_addr)
    }

    /// Why dr must not translate `port`, or None when it may.
    fn refusal(&self, port: &PublishedPort) -> Option<String> {
        let c = &self.config;
        // The datapath's own check: a target it would not deliver to.
        if !c.is_container(to_map_addr(port.container)) {
            let local = local_subnet(c)
                .map(|l| l.net.to_string())
                .unwrap_or_default();
            return Some(format!(
                "container address {} is not a host of the local container subnet {local} \
                 (or is its gateway)",
                port.container
            ));
        }
        let (lo, hi) = (c.nat_port_min, c.nat_port_max);
        (c.nat_enabled != 0 && (lo..=hi).contains(&u32::from(port.host_port))).then(|| {
            format!(
                "host port {} is inside dr's SNAT port range {lo}-{hi}",
                port.host_port
            )
        })
    }
}

/// Reads the published ports from `iptables-save -t nat` (`nat`) and
/// `-t filter` (`filter`) output. Empty text (iptables missing) offloads
/// nothing.
pub fn parse(nat_text: &str, filter_text: &str, scope: &Scope) -> PublishedPorts {
    let nat = table_rules(nat_text, "nat");
    let filter = table_rules(filter_text, "filter");
    let hidden_legacy = [nat_text, filter_text]
        .iter()
        .any(|text| text.contains(LEGACY_WARNING))
        .then(|| {
            LeftToKernel::new(
                "",
                "iptables-legacy tables are present too, and iptables-save does not show them",
            )
        });
    let blockers: Vec<LeftToKernel> = [
        hidden_legacy,
        prerouting_blocker(&nat),
        forward_blocker(&filter),
        docker_user_blocker(&filter),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !blockers.is_empty() {
        return PublishedPorts {
            offloaded: Vec::new(),
            left_to_kernel: blockers,
        };
    }
    walk_docker_chain(&nat, scope)
}

/// What iptables-nft's save prints when rules hide in the legacy tables.
const LEGACY_WARNING: &str = "iptables-legacy tables present";

/// One `-A CHAIN ...` line of iptables-save.
struct Rule<'a> {
    /// The line as read (trimmed), for reports.
    line: &'a str,
    chain: &'a str,
    /// The tokens after the chain name.
    args: Vec<&'a str>,
}

impl<'a> Rule<'a> {
    /// None for anything but a rule: comments, chain headers, COMMIT.
    fn parse(line: &'a str) -> Option<Self> {
        let mut tokens = line.split_whitespace().peekable();
        tokens.next_if(|token| is_counters(token));
        if tokens.next()? != "-A" {
            return None;
        }
        let chain = tokens.next()?;
        Some(Self {
            line,
            chain,
            args: tokens.collect(),
        })
    }
}

/// `[12:720]`, the packet and byte counters `iptables-save -c` prints first.
fn is_counters(token: &str) -> bool {
    let is_number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    token
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|t| t.split_once(':'))
        .is_some_and(|(packets, bytes)| is_number(packets) && is_number(bytes))
}

/// The rules between `*table` and its `COMMIT`, in order.
fn table_rules<'a>(text: &'a str, table: &str) -> Vec<Rule<'a>> {
    let mut in_table = false;
    let mut rules = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('*') {
            in_table = name == table;
        } else if line == "COMMIT" {
            in_table = false;
        } else if in_table {
            rules.extend(Rule::parse(line));
        }
    }
    rules
}

/// Docker's jump to its DNAT chain, after `-A PREROUTING`.
const PREROUTING_JUMP: [&str; 6] = ["-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER"];

/// Why no port can be offloaded because of PREROUTING: Docker's jump is
/// missing, or a rule before it may catch the traffic first.
fn prerouting_blocker(nat: &[Rule]) -> Option<LeftToKernel> {
    let prerouting: Vec<&Rule> = nat.iter().filter(|r| r.chain == "PREROUTING").collect();
    match prerouting.iter().position(|r| r.args == PREROUTING_JUMP) {
        None => Some(LeftToKernel::new("", "no jump from PREROUTING to DOCKER")),
        Some(0) => None,
        Some(_) => Some(LeftToKernel::new(
            prerouting[0].line,
            "a PREROUTING rule before the jump to DOCKER may catch traffic to published ports first",
        )),
    }
}

/// Why no port can be offloaded because of FORWARD: a rule before Docker's
/// jump to DOCKER-USER (or any rule, without the jump) sees published
/// ports' traffic first, and dr's translation would bypass it. Rules after
/// Docker's own never see it: Docker's DOCKER chain accepts it.
fn forward_blocker(filter: &[Rule]) -> Option<LeftToKernel> {
    filter
        .iter()
        .filter(|r| r.chain == "FORWARD")
        .take_while(|r| r.args != ["-j", "DOCKER-USER"])
        .next()
        .map(|r| {
            LeftToKernel::new(
                r.line,
                "a FORWARD rule before Docker's jump to DOCKER-USER filters published ports first, \
                 which dr's translation would bypass",
            )
        })
}

/// Why no port can be offloaded because of DOCKER-USER: any rule but
/// Docker's own `-j RETURN` filters published ports, and dr's translation
/// would bypass it.
fn docker_user_blocker(filter: &[Rule]) -> Option<LeftToKernel> {
    filter
        .iter()
        .find(|r| r.chain == "DOCKER-USER" && r.args != ["-j", "RETURN"])
        .map(|r| {
            LeftToKernel::new(
                r.line,
                "the operator filters published ports in DOCKER-USER, which dr's translation would bypass",
            )
        })
}

const NOT_UNDERSTOOD: &str = "not understood; this and later rules are left to the kernel";

/// Walks `-A DOCKER` in order, as iptables does (first match wins), and stops
/// at the first rule it does not understand.
fn walk_docker_chain(nat: &[Rule], scope: &Scope) -> PublishedPorts {
    let mut result = PublishedPorts::default();
    // Every (proto, host_port) an earlier rule catches on the uplink, offloaded
    // or not: a later rule for it never matches.
    let mut caught = HashSet::new();
    for rule in nat.iter().filter(|r| r.chain == "DOCKER") {
        match DockerRule::classify(rule, scope.uplink) {
            None => {
                result
                    .left_to_kernel
                    .push(LeftToKernel::new(rule.line, NOT_UNDERSTOOD));
                break;
            }
            Some(DockerRule::NotForUplink) => {}
            Some(DockerRule::Dnat { dst, port }) => {
                let for_uplink = dst.is_none_or(|addr| addr == scope.uplink_addr());
                if !for_uplink || !caught.insert((port.proto, port.host_port)) {
                    continue;
                }
                match scope.refusal(&port) {
                    Some(reason) => result
                        .left_to_kernel
                        .push(LeftToKernel::new(rule.line, reason)),
                    None => result.offloaded.push(port),
                }
            }
        }
    }
    result
}

/// The `-A DOCKER` rules dr understands.
enum DockerRule {
    /// `-i <bridge> -j RETURN` (docker0 and every user-defined network), or
    /// a DNAT for `! -i <uplink>`: never matches the uplink's traffic.
    NotForUplink,
    /// A published port; `dst` None matches every local address.
    Dnat {
        dst: Option<Ipv4Addr>,
        port: PublishedPort,
    },
}

impl DockerRule {
    /// None when the rule is anything else.
    fn classify(rule: &Rule, uplink: &str) -> Option<Self> {
        if rule.line.contains('"') {
            return None;
        }
        let options = RuleOptions::parse(&rule.args)?;
        let iface = options.in_iface?;
        let other_ingress_return = RuleOptions {
            in_iface: Some(iface),
            target: Some("RETURN"),
            ..RuleOptions::default()
        };
        if !iface.negated && iface.name != uplink && options == other_ingress_return {
            return Some(DockerRule::NotForUplink);
        }
        let dnat = Self::dnat(&options)?;
        if iface.name == uplink {
            return Some(DockerRule::NotForUplink);
        }
        Some(dnat)
    }

    /// Docker's DNAT shape: optional `-d A[/32]`, `! -i NAME`, `-p P`,
    /// optional `-m P`, `--dport N`, `-j DNAT --to-destination IP[:PORT]`.
    fn dnat(options: &RuleOptions) -> Option<Self> {
        if options.target? != "DNAT" || !options.in_iface?.negated {
            return None;
        }
        let proto = Proto::from_name(options.proto?)?;
        if options.match_module.is_some_and(|m| m != proto.name()) {
            return None;
        }
        let host_port = parse_port(options.dport?)?;
        let (container, container_port) = parse_to_destination(options.to_destination?)?;
        Some(DockerRule::Dnat {
            dst: parse_dst(options.dst)?,
            port: PublishedPort {
                proto,
                host_port,
                container,
                container_port: container_port.unwrap_or(host_port),
            },
        })
    }
}

/// `-i NAME` or `! -i NAME`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Iface<'a> {
    name: &'a str,
    negated: bool,
}

/// The options of one `-A DOCKER` rule, in any order, each at most once.
#[derive(Debug, Default, PartialEq, Eq)]
struct RuleOptions<'a> {
    dst: Option<&'a str>,
    in_iface: Option<Iface<'a>>,
    proto: Option<&'a str>,
    match_module: Option<&'a str>,
    dport: Option<&'a str>,
    target: Option<&'a str>,
    to_destination: Option<&'a str>,
}

impl<'a> RuleOptions<'a> {
    /// None on an unknown, repeated, valueless or (but `-i`) negated option.
    fn parse(args: &[&'a str]) -> Option<Self> {
        let mut options = Self::default();
        let mut tokens = args.iter().copied();
        while let Some(token) = tokens.next() {
            let negated = token == "!";
            let flag = if negated { tokens.next()? } else { token };
            let value = tokens.next()?;
            if flag == "-i" {
                set_once(
                    &mut options.in_iface,
                    Iface {
                        name: value,
                        negated,
                    },
                )?;
                continue;
            }
            if negated {
                return None;
            }
            let slot = match flag {
                "-d" => &mut options.dst,
                "-p" => &mut options.proto,
                "-m" => &mut options.match_module,
                "--dport" => &mut options.dport,
                "-j" => &mut options.target,
                "--to-destination" => &mut options.to_destination,
                _ => return None,
            };
            set_once(slot, value)?;
        }
        Some(options)
    }
}

/// None when `slot` already holds a value.
fn set_once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    slot.is_none().then(|| *slot = Some(value))
}

/// A single port, 1-65535 (a range `N:M` is None).
fn parse_port(s: &str) -> Option<u16> {
    s.parse().ok().filter(|&port| port != 0)
}

/// `IP:PORT` or `IP` (the port unchanged); ranges are None.
fn parse_to_destination(s: &str) -> Option<(Ipv4Addr, Option<u16>)> {
    match s.split_once(':') {
        Some((addr, port)) => Some((addr.parse().ok()?, Some(parse_port(port)?))),
        None => Some((s.parse().ok()?, None)),
    }
}

/// `-d`: absent or `0.0.0.0/0` is Some(None), `A` or `A/32` is Some(Some(A)),
/// anything else None.
fn parse_dst(dst: Option<&str>) -> Option<Option<Ipv4Addr>> {
    let Some(dst) = dst else {
        return Some(None);
    };
    if dst == "0.0.0.0/0" {
        return Some(None);
    }
    let addr = dst.strip_suffix("/32").unwrap_or(dst);
    addr.parse().ok().map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPLINK: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);

    const DOCKER_NAT: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A POSTROUTING -s 172.17.0.2/32 -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80
-A DOCKER -d 127.0.0.1/32 ! -i docker0 -p tcp -m tcp --dport 8081 -j DNAT --to-destination 172.17.0.2:81
-A DOCKER ! -i docker0 -p udp -m udp --dport 5353 -j DNAT --to-destination 172.17.0.3:53
COMMIT
# Completed
";

    const DOCKER_FILTER: &str = "\
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -o docker0 -j DOCKER
-A DOCKER-USER -j RETURN
COMMIT
";

    /// Docker's default bridge (172.17.0.1/16) and an uplink address, SNAT off.
    fn scope() -> Scope<'static> {
        let addr = |a: [u8; 4]| to_map_addr(a.into());
        Scope {
            config: DatapathConfig {
                local_net: addr([172, 17, 0, 0]),
                local_mask: addr([255, 255, 0, 0]),
                gateway: addr([172, 17, 0, 1]),
                uplink_addr: to_map_addr(UPLINK),
                ..DatapathConfig::default()
            },
            uplink: "eth0",
        }
    }

    /// A nat table with Docker's PREROUTING jump and `docker` as chain DOCKER.
    fn nat_with(docker: &[&str]) -> String {
        let rules: String = docker.iter().map(|r| format!("-A DOCKER {r}\n")).collect();
        format!(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n\
             -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n{rules}COMMIT\n"
        )
    }

    fn tcp(host_port: u16, container: [u8; 4], container_port: u16) -> PublishedPort {
        PublishedPort {
            proto: Proto::Tcp,
            host_port,
            container: container.into(),
            container_port,
        }
    }

    fn udp(host_port: u16, container: [u8; 4], container_port: u16) -> PublishedPort {
        PublishedPort {
            proto: Proto::Udp,
            ..tcp(host_port, container, container_port)
        }
    }

    fn nothing_offloaded_because(got: &PublishedPorts, rule: &str, reason_part: &str) {
        assert!(got.offloaded.is_empty(), "{got:?}");
        assert_eq!(got.left_to_kernel.len(), 1, "{got:?}");
        assert_eq!(got.left_to_kernel[0].rule, rule);
        assert!(
            got.left_to_kernel[0].reason.contains(reason_part),
            "{got:?}"
        );
    }

    #[test]
    fn docker_table_offloads_uplink_ports_but_not_loopback_binding() {
        let got = parse(DOCKER_NAT, DOCKER_FILTER, &scope());
        assert_eq!(
            got.offloaded,
            [
                tcp(8080, [172, 17, 0, 2], 80),
                udp(5353, [172, 17, 0, 3], 53)
            ]
        );
        assert_eq!(got.left_to_kernel, []);
    }

    #[test]
    fn binding_to_uplink_address_is_offloaded() {
        let nat = nat_with(&[
            "-d 192.168.1.10/32 ! -i docker0 -p tcp -m tcp --dport 80 -j DNAT --to-destination 172.17.0.2:80",
            "-d 192.168.1.10 ! -i docker0 -p tcp -m tcp --dport 81 -j DNAT --to-destination 172.17.0.2:81",
            "-d 0.0.0.0/0 ! -i docker0 -p tcp -m tcp --dport 82 -j DNAT --to-destination 172.17.0.2:82",
            "-d 192.168.1.11/32 ! -i docker0 -p tcp -m tcp --dport 83 -j DNAT --to-destination 172.17.0.2:83",
        ]);
        let got = parse(&nat, "", &scope());
        assert_eq!(
            got.offloaded,
            [
                tcp(80, [172, 17, 0, 2], 80),
                tcp(81, [172, 17, 0, 2], 81),
                tcp(82, [172, 17, 0, 2], 82),
            ]
        );
        assert_eq!(got.left_to_kernel, []);
    }

    #[test]
    fn port_in_nat_range_is_left_with_reason() {
        let in_range =
            "! -i docker0 -p tcp -m tcp --dport 20000 -j DNAT --to-destination 172.17.0.2:80";
        let nat = nat_with(&[
            in_range,
            "! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80",
        ]);
        let mut scope = scope();
        scope.config.nat_enabled = 1;
        (scope.config.nat_port_min, scope.config.nat_port_max) = (10000, 32767);
        let got = parse(&nat, "", &scope);
        assert_eq!(got.offloaded, [tcp(8080, [172, 17, 0, 2], 80)]);
        assert_eq!(got.left_to_kernel.len(), 1);
        assert_eq!(got.left_to_kernel[0].rule, format!("-A DOCKER {in_range}"));
        assert!(got.left_to_kernel[0]
            .reason
            .contains("SNAT port range 10000-32767"));
    }

    #[test]
    fn docker_user_drop_rule_offloads_nothing() {
        let filter = "*filter\n:DOCKER-USER - [0:0]\n\
                      -A DOCKER-USER -s 10.0.0.0/8 -j DROP\n-A DOCKER-USER -j RETURN\nCOMMIT\n";
        let got = parse(DOCKER_NAT, filter, &scope());
        nothing_offloaded_because(&got, "-A DOCKER-USER -s 10.0.0.0/8 -j DROP", "DOCKER-USER");
    }

    #[test]
    fn a_forward_rule_before_docker_user_offloads_nothing() {
        let rule = "-A FORWARD -s 10.0.0.0/8 -j DROP";
        let filter = DOCKER_FILTER.replace(
            "-A FORWARD -j DOCKER-USER\n",
            &format!("{rule}\n-A FORWARD -j DOCKER-USER\n"),
        );
        let got = parse(DOCKER_NAT, &filter, &scope());
        nothing_offloaded_because(&got, rule, "FORWARD rule before");
        // After Docker's rules, such a rule never sees published ports.
        let filter = DOCKER_FILTER.replace("COMMIT", &format!("{rule}\nCOMMIT"));
        let got = parse(DOCKER_NAT, &filter, &scope());
        assert_eq!(got.offloaded.len(), 2, "{got:?}");
    }

    #[test]
    fn missing_prerouting_jump_offloads_nothing() {
        let nat = DOCKER_NAT.replace("-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n", "");
        let got = parse(&nat, DOCKER_FILTER, &scope());
        nothing_offloaded_because(&got, "", "no jump from PREROUTING to DOCKER");
    }

    #[test]
    fn prerouting_rule_before_jump_offloads_nothing() {
        let redirect = "-A PREROUTING -p tcp -m tcp --dport 8080 -j REDIRECT --to-ports 3128";
        let nat = DOCKER_NAT.replace(
            "-A PREROUTING -m addrtype",
            &format!("{redirect}\n-A PREROUTING -m addrtype"),
        );
        let got = parse(&nat, DOCKER_FILTER, &scope());
        nothing_offloaded_because(&got, redirect, "before the jump to DOCKER");
    }

    #[test]
    fn prerouting_rule_after_jump_does_not_matter() {
        let nat = DOCKER_NAT.replace(
            "-A OUTPUT",
            "-A PREROUTING -p tcp -j REDIRECT --to-ports 3128\n-A OUTPUT",
        );
        let got = parse(&nat, DOCKER_FILTER, &scope());
        assert_eq!(got.offloaded.len(), 2, "{got:?}");
    }

    #[test]
    fn unknown_docker_rule_stops_walk() {
        let unknown = "! -i docker0 -p tcp -m tcp --dport 81 -j REDIRECT --to-ports 82";
        let nat = nat_with(&[
            "! -i docker0 -p tcp -m tcp --dport 80 -j DNAT --to-destination 172.17.0.2:80",
            unknown,
            "! -i docker0 -p tcp -m tcp --dport 82 -j DNAT --to-destination 172.17.0.2:82",
        ]);
        let got = parse(&nat, "", &scope());
        assert_eq!(got.offloaded, [tcp(80, [172, 17, 0, 2], 80)]);
        assert_eq!(
            got.left_to_kernel,
            [LeftToKernel::new(
                &format!("-A DOCKER {unknown}"),
                NOT_UNDERSTOOD
            )]
        );
    }

    #[test]
    fn rules_for_other_interfaces_are_passed_over() {
        // Docker's RETURN for a user-defined network, and a DNAT that
        // excludes the uplink itself.
        let nat = nat_with(&[
            "-i br-0123456789ab -j RETURN",
            "! -i eth0 -p tcp -m tcp --dport 81 -j DNAT --to-destination 172.17.0.2:81",
            "! -i docker0 -p tcp -m tcp --dport 80 -j DNAT --to-destination 172.17.0.2:80",
        ]);
        let got = parse(&nat, "", &scope());
        assert_eq!(got.offloaded, [tcp(80, [172, 17, 0, 2], 80)]);
        assert_eq!(got.left_to_kernel, []);
    }

    #[test]
    fn a_return_for_the_uplink_is_not_understood() {
        let nat = nat_with(&[
            "-i eth0 -j RETURN",
            "! -i docker0 -p tcp -m tcp --dport 80 -j DNAT --to-destination 172.17.0.2:80",
        ]);
        let got = parse(&nat, "", &scope());
        assert_eq!(got.offloaded, []);
        assert_eq!(got.left_to_kernel[0].reason, NOT_UNDERSTOOD);
    }

    #[test]
    fn hidden_legacy_tables_offload_nothing() {
        let nat = format!(
            "# Warning: iptables-legacy tables present, use iptables-legacy-save to see them\n{DOCKER_NAT}"
        );
        let got = parse(&nat, DOCKER_FILTER, &scope());
        assert_eq!(got.offloaded, []);
        assert_eq!(got.left_to_kernel.len(), 1);
    }

    #[test]
    fn quoted_comment_is_not_understood() {
        let nat = nat_with(&[
            "! -i docker0 -p tcp -m tcp --dport 80 -m comment --comment \"web\" -j DNAT --to-destination 172.17.0.2:80",
        ]);
        let got = parse(&nat, "", &scope());
        assert_eq!(got.offloaded, []);
        assert_eq!(got.left_to_kernel[0].reason, NOT_UNDERSTOOD);
    }

    #[test]
    fn duplicate_host_port_first_rule_wins() {
        let nat = nat_with(&[
            "! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80",
            "-d 192.168.1.10/32 ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.9:80",
            "! -i docker0 -p udp -m udp --dport 8080 -j DNAT --to-destination 172.17.0.3:53",
        ]);
        let got = parse(&nat, "", &scope());
        assert_eq!(
            got.offloaded,
            [
                tcp(8080, [172, 17, 0, 2], 80),
                udp(8080, [172, 17, 0, 3], 53)
            ]
        );
        assert_eq!(got.left_to_kernel, []);
    }

    #[test]
    fn port_left_to_kernel_is_not_offloaded_by_a_later_rule() {
        let nat = nat_with(&[
            "! -i br-x -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.18.0.2:80",
            "! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80",
        ]);
        let got = parse(&nat, "", &scope());
        assert_eq!(got.offloaded, []);
        assert_eq!(got.left_to_kernel.len(), 1, "{got:?}");
    }

    #[test]
    fn target_outside_local_subnet_is_left() {
        let outside = "! -i br-x -p tcp -m tcp --dport 80 -j DNAT --to-destination 172.18.0.2:80";
        let broadcast =
            "! -i docker0 -p tcp -m tcp --dport 81 -j DNAT --to-destination 172.17.255.255:81";
        let network =
            "! -i docker0 -p tcp -m tcp --dport 82 -j DNAT --to-destination 172.17.0.0:82";
        let gateway =
            "! -i docker0 -p tcp -m tcp --dport 83 -j DNAT --to-destination 172.17.0.1:83";
        let rules = [outside, broadcast, network, gateway];
        let got = parse(&nat_with(&rules), "", &scope());
        assert_eq!(got.offloaded, []);
        let left: Vec<&str> = got.left_to_kernel.iter().map(|l| l.rule.as_str()).collect();
        assert_eq!(left, rules.map(|r| format!("-A DOCKER {r}")));
        assert!(got.left_to_kernel[0]
            .reason
            .contains("not a host of the local container subnet 172.17.0.0/16"));
    }

    #[test]
    fn dport_range_is_not_understood() {
        let nat = nat_with(&[
            "! -i docker0 -p tcp -m tcp --dport 8000:8010 -j DNAT --to-destination 172.17.0.2:8000-8010",
        ]);
        let got = parse(&nat, "", &scope());
        assert_eq!(got.offloaded, []);
        assert_eq!(got.left_to_kernel[0].reason, NOT_UNDERSTOOD);
    }

    #[test]
    fn to_destination_without_port_keeps_host_port() {
        let nat = nat_with(&[
            "! -i docker0 -p udp -m udp --dport 53 -j DNAT --to-destination 172.17.0.4",
        ]);
        let got = parse(&nat, "", &scope());
        assert_eq!(got.offloaded, [udp(53, [172, 17, 0, 4], 53)]);
    }

    #[test]
    fn option_groups_in_any_order_and_without_match_module() {
        let nat =
            nat_with(&["-p tcp --dport 80 -j DNAT --to-destination 172.17.0.2:8080 ! -i docker0"]);
        let got = parse(&nat, "", &scope());
        assert_eq!(got.offloaded, [tcp(80, [172, 17, 0, 2], 8080)]);
    }

    #[test]
    fn counters_prefix_is_ignored() {
        let nat = "*nat\n:PREROUTING ACCEPT [3:180]\n\
                   [3:180] -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
                   [0:0] -A DOCKER -i docker0 -j RETURN\n\
                   [1:60] -A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80\n\
                   COMMIT\n";
        let filter = "*filter\n[7:420] -A DOCKER-USER -j RETURN\nCOMMIT\n";
        let got = parse(nat, filter, &scope());
        assert_eq!(got.offloaded, [tcp(8080, [172, 17, 0, 2], 80)]);
        assert_eq!(got.left_to_kernel, []);
    }

    #[test]
    fn crlf_and_trailing_whitespace_are_tolerated() {
        let nat = DOCKER_NAT.replace('\n', " \t\r\n");
        let filter = DOCKER_FILTER.replace('\n', "\r\n");
        let got = parse(&nat, &filter, &scope());
        assert_eq!(got.offloaded.len(), 2, "{got:?}");
        assert_eq!(got.left_to_kernel, []);
    }

    #[test]
    fn empty_input_offloads_nothing() {
        let got = parse("", "", &scope());
        nothing_offloaded_because(&got, "", "no jump from PREROUTING to DOCKER");
    }

    #[test]
    fn json_names_the_protocol() {
        let json = serde_json::to_value(udp(5353, [172, 17, 0, 3], 53)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "proto": "udp", "host_port": 5353, "container": "172.17.0.3", "container_port": 53
            })
        );
    }

    #[test]
    fn a_port_round_trips_through_its_map_entry() {
        for port in [
            udp(5353, [172, 17, 0, 3], 53),
            tcp(8080, [172, 17, 0, 2], 80),
        ] {
            let (key, target) = port.to_map();
            assert_eq!(key.port, port.host_port.to_be(), "network order");
            assert_eq!(PublishedPort::from_map(&key, &target), Some(port));
        }
        assert_eq!(
            tcp(8080, [172, 17, 0, 2], 80).to_string(),
            "8080/tcp -> 172.17.0.2:80"
        );
    }
}
