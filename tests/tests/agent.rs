//! The etcd-backed agent: Debian's etcd-server runs in the switch namespace,
//! each emulated host runs `dr-ctl agent`.
use std::time::{Duration, Instant};

use dr_tests::{
    dr_ctl_path,
    etcd::{agent, agent_command, test_agent_args, wait_for, Agents, Etcd, LoggedAgent, Pki},
    notify::NotifySocket,
    require_root,
    traffic::{self, ContinuousPing},
    Cluster, Host,
};
use nix::sys::signal::Signal;
use serde_json::Value;

/// The host's peers as `(subnet, via)`, sorted; none if dr is not up yet.
fn peer_routes(host: &Host) -> Vec<(String, String)> {
    let Ok(out) = host.dr(&["peer", "list", "--json"]) else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut p: Vec<(String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["subnet"].as_str().unwrap().to_string(),
                p["via"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    p.sort();
    p
}

/// The host's peer subnets, sorted.
fn peers(host: &Host) -> Vec<String> {
    peer_routes(host)
        .into_iter()
        .map(|(subnet, _)| subnet)
        .collect()
}

fn converged(c: &Cluster, live: &[usize]) -> bool {
    live.iter().all(|&i| {
        let mut want: Vec<String> = live
            .iter()
            .filter(|&&j| j != i)
            .map(|&j| c.hosts[j].subnet())
            .collect();
        want.sort();
        peers(&c.hosts[i]) == want
    })
}

#[test]
fn agents_converge_follow_joins_and_deaths_and_survive_an_etcd_restart() {
    require_root();
    let mut c = Cluster::new("dragent", 3, &dr_ctl_path()).unwrap();
    let etcd = Etcd::start(&c, None);
    let mut agents = Agents(c.hosts.iter().map(|h| agent(h, true)).collect());
    assert!(
        wait_for(Duration::from_secs(15), || converged(&c, &[0, 1, 2])),
        "three agents did not converge"
    );
    let prefix = c.prefix.clone();
    for host in &mut c.hosts {
        host.add_container(&prefix).unwrap();
    }
    traffic::ping(
        &c.hosts[0].containers[0].ns,
        c.hosts[2].containers[0].addr,
        2,
    )
    .unwrap();

    // A new host joins: everyone reaches it.
    let dr_ctl = dr_ctl_path();
    c.add_host(&dr_ctl).unwrap();
    agents.0.push(agent(&c.hosts[3], true));
    assert!(
        wait_for(Duration::from_secs(10), || converged(&c, &[0, 1, 2, 3])),
        "the new host was not seen"
    );
    c.hosts[3].add_container(&prefix).unwrap();
    traffic::ping(
        &c.hosts[0].containers[0].ns,
        c.hosts[3].containers[0].addr,
        2,
    )
    .unwrap();

    // Host 129's agent dies: its lease expires and the others drop its subnet.
    let mut dead = agents.0.remove(1);
    dead.kill().unwrap();
    dead.wait().unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || converged(&c, &[0, 2, 3])),
        "the dead host's entry stayed"
    );
    // Its own datapath keeps what it had: a dead agent changes nothing locally.
    assert_eq!(peers(&c.hosts[1]).len(), 3);

    // etcd restarts under the agents: they reconnect, nothing is lost, and
    // they follow changes again.
    let data = etcd.kill();
    traffic::ping(
        &c.hosts[0].containers[0].ns,
        c.hosts[3].containers[0].addr,
        2,
    )
    .unwrap();
    let _etcd = Etcd::start(&c, Some(data));
    agents.0.insert(1, agent(&c.hosts[1], true));
    assert!(
        wait_for(Duration::from_secs(15), || converged(&c, &[0, 1, 2, 3])),
        "agents did not reconnect"
    );
    traffic::ping(
        &c.hosts[1].containers[0].ns,
        c.hosts[3].containers[0].addr,
        2,
    )
    .unwrap();
}

#[test]
fn leased_subnets_are_never_shared() {
    require_root();
    let c = Cluster::new("drlease", 3, &dr_ctl_path()).unwrap();
    let _etcd = Etcd::start(&c, None);
    // Started together, all racing for the first free subnet.
    let _agents = Agents(c.hosts.iter().map(|h| agent(h, false)).collect());
    let subnets = |h: &Host| -> Option<String> {
        let s: Value = serde_json::from_str(&h.dr(&["status", "--json"]).ok()?).ok()?;
        Some(s["local_subnet"].as_str()?.to_string())
    };
    assert!(wait_for(Duration::from_secs(15), || c
        .hosts
        .iter()
        .all(|h| subnets(h).is_some() && peers(h).len() == 2)));
    let mut all: Vec<String> = c.hosts.iter().map(|h| subnets(h).unwrap()).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 3, "two hosts got the same subnet: {all:?}");
    assert!(
        all.iter()
            .all(|s| s.starts_with("10.0.") && s.ends_with("/24")),
        "{all:?}"
    );
}

#[test]
fn agents_use_tls_client_certificates_and_refuse_an_unknown_server() {
    require_root();
    let c = Cluster::new("dretls", 3, &dr_ctl_path()).unwrap();
    let pki = Pki::new();
    let etcd = Etcd::start_tls(&c, &pki);
    let tls_agent = |host: &Host, ca: bool| {
        let mut command = agent_command(host, &etcd.url());
        command.args(test_agent_args(host));
        command.args(["--subnet", &host.bip()]);
        if ca {
            command.arg("--etcd-cafile").arg(pki.path("ca.crt"));
        }
        command
            .arg("--etcd-certfile")
            .arg(pki.path("client.crt"))
            .arg("--etcd-keyfile")
            .arg(pki.path("client.key"));
        LoggedAgent::spawn(command)
    };
    let _agents = [tls_agent(&c.hosts[0], true), tls_agent(&c.hosts[1], true)];
    assert!(
        wait_for(Duration::from_secs(15), || converged(&c, &[0, 1])),
        "two agents with certificates did not converge"
    );
    // Without the CA the server's certificate is refused, and the log says so.
    let untrusting = tls_agent(&c.hosts[2], false);
    assert!(
        wait_for(Duration::from_secs(15), || untrusting
            .log()
            .contains("invalid peer certificate")),
        "no readable TLS error in: {}",
        untrusting.log()
    );
    assert_eq!(peers(&c.hosts[0]), vec![c.hosts[1].subnet()]);
}

#[test]
fn agents_log_in_with_a_user_and_password() {
    require_root();
    let c = Cluster::new("drauth", 2, &dr_ctl_path()).unwrap();
    let etcd = Etcd::start(&c, None);
    etcd.enable_auth(&c, "s3cret");
    let login = |h: &Host, password: &str| {
        let mut command = agent_command(h, &etcd.url());
        command.args(test_agent_args(h));
        command.args(["--subnet", &h.bip(), "--etcd-user", "root"]);
        command.env("DR_ETCD_PASSWORD", password);
        LoggedAgent::spawn(command)
    };
    let _member = login(&c.hosts[0], "s3cret");
    let intruder = login(&c.hosts[1], "guess");
    assert!(
        wait_for(Duration::from_secs(15), || local_subnet(&c.hosts[0])
            .is_some()),
        "the agent with the password did not come up"
    );
    assert!(
        wait_for(Duration::from_secs(15), || intruder
            .log()
            .contains("authentication failed")),
        "no readable authentication error in: {}",
        intruder.log()
    );
    assert!(local_subnet(&c.hosts[1]).is_none());
    assert!(peers(&c.hosts[0]).is_empty());
}

/// A host's leased or fixed subnet, once its datapath is up.
fn local_subnet(host: &Host) -> Option<String> {
    let s: Value = serde_json::from_str(&host.dr(&["status", "--json"]).ok()?).ok()?;
    Some(s["local_subnet"].as_str()?.to_string())
}

/// An agent on `host` with this name and cluster CIDR, and the default lease.
fn agent_as(
    etcd: &Etcd,
    host: &Host,
    name: &str,
    cluster_cidr: &str,
    extra: &[&str],
) -> LoggedAgent {
    let mut command = agent_command(host, &etcd.url());
    command.args(["--cluster-cidr", cluster_cidr, "--name", name]);
    command.args(extra);
    LoggedAgent::spawn(command)
}

#[test]
fn agents_route_only_valid_registrations_and_lease_around_overlaps() {
    require_root();
    let c = Cluster::new("drvalid", 3, &dr_ctl_path()).unwrap();
    let etcd = Etcd::start(&c, None);
    let record = |subnet: &str| {
        format!(r#"{{"name":"intruder","address":"192.168.91.200","subnet":"{subnet}"}}"#)
    };
    // A valid /23 claimed before any agent: routed, and kept free of leases.
    etcd.put(&c, "/dr/subnets/10.0.0.0-23", &record("10.0.0.1/23"));
    // Hostile or broken: key and value disagree, outside the cluster, unreadable.
    etcd.put(&c, "/dr/subnets/10.0.60.0-24", &record("10.0.61.1/24"));
    etcd.put(&c, "/dr/subnets/10.9.0.0-24", &record("10.9.0.1/24"));
    etcd.put(&c, "/dr/subnets/10.0.70.0-24", "not json");
    let fixed = |h: &Host| {
        agent_as(
            &etcd,
            h,
            &format!("h{}", h.id),
            "10.0.0.0/16",
            &["--subnet", &h.bip()],
        )
    };
    let observer = fixed(&c.hosts[0]);
    let _fixed = fixed(&c.hosts[1]);
    let _leasing = agent_as(&etcd, &c.hosts[2], "leasing", "10.0.0.0/16", &[]);
    let expected = || {
        let mut want = vec![
            c.hosts[1].subnet(),
            "10.0.0.0/23".to_string(),
            "10.0.2.0/24".to_string(),
        ];
        want.sort();
        want
    };
    assert!(
        wait_for(Duration::from_secs(20), || peers(&c.hosts[0]) == expected()),
        "peers of h0: {:?}",
        peers(&c.hosts[0])
    );
    // The leasing host skipped the two /24s inside the /23.
    assert_eq!(local_subnet(&c.hosts[2]).as_deref(), Some("10.0.2.0/24"));
    for key in ["10.0.60.0-24", "10.9.0.0-24", "10.0.70.0-24"] {
        assert!(
            observer
                .log()
                .contains(&format!("ignoring the registration /dr/subnets/{key}")),
            "{key} not reported"
        );
    }
    // A later /22 over the fixed hosts' /24s is refused whatever its length.
    let over = format!("10.0.{}.0", c.hosts[0].id);
    etcd.put(
        &c,
        &format!("/dr/subnets/{over}-22"),
        &record(&format!("10.0.{}.1/22", c.hosts[0].id)),
    );
    assert!(
        wait_for(Duration::from_secs(10), || observer.log().contains(
            &format!("ignoring the registration /dr/subnets/{over}-22")
        )),
        "the overlapping /22 was not reported"
    );
    assert_eq!(peers(&c.hosts[0]), expected());
    // Host 1 (whose agent may still be bringing dr up) routes the same
    // valid registrations, with host 0's in place of its own.
    let mut for_h1: Vec<String> = expected()
        .into_iter()
        .filter(|s| *s != c.hosts[1].subnet())
        .chain([c.hosts[0].subnet()])
        .collect();
    for_h1.sort();
    assert!(
        wait_for(Duration::from_secs(20), || peers(&c.hosts[1]) == for_h1),
        "peers of h1: {:?}",
        peers(&c.hosts[1])
    );
}

#[test]
fn agents_refuse_a_name_held_by_another_host_and_a_different_cluster() {
    require_root();
    let c = Cluster::new("drident", 3, &dr_ctl_path()).unwrap();
    let etcd = Etcd::start(&c, None);
    let name = format!("h{}", c.hosts[0].id);
    let _holder = agent_as(
        &etcd,
        &c.hosts[0],
        &name,
        "10.0.0.0/16",
        &["--subnet", &c.hosts[0].bip()],
    );
    let _observer = agent_as(
        &etcd,
        &c.hosts[2],
        "observer",
        "10.0.0.0/16",
        &["--subnet", &c.hosts[2].bip()],
    );
    assert!(wait_for(Duration::from_secs(15), || peers(&c.hosts[2])
        == vec![c.hosts[0].subnet()]));

    // Another host under the same name is refused, and takes nothing over.
    let mut twin = agent_as(
        &etcd,
        &c.hosts[1],
        &name,
        "10.0.0.0/16",
        &["--subnet", &c.hosts[1].bip()],
    );
    let status = twin
        .exited(Duration::from_secs(20))
        .expect("the twin stopped");
    assert!(!status.success());
    assert!(
        twin.log().contains("give each agent its own --name"),
        "{}",
        twin.log()
    );
    assert_eq!(peers(&c.hosts[2]), vec![c.hosts[0].subnet()]);

    // An agent of another cluster CIDR stops with one line saying why.
    let mut stranger = agent_as(&etcd, &c.hosts[1], "stranger", "10.1.0.0/16", &[]);
    let status = stranger
        .exited(Duration::from_secs(20))
        .expect("the stranger stopped");
    assert!(!status.success());
    let log = stranger.log();
    let error: Vec<&str> = log.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(error.len(), 1, "{log}");
    assert!(
        error[0]
            .contains("is 10.0.0.0/16 with /24 subnets; this agent has --cluster-cidr 10.1.0.0/16"),
        "{log}"
    );
    assert!(
        local_subnet(&c.hosts[1]).is_none(),
        "the stranger brought dr up"
    );
}

/// A lease is kept alive from the moment it is granted, also while the
/// datapath comes up: here host 0's `up` waits 6 s for its node lock (held
/// as by another dr-ctl command; on a busy host, loading and verifying the
/// programs took 4 s) against a 2 s lease, and its registration must not
/// lapse meanwhile: each agent registers once and no session ends.
#[test]
fn a_lease_outlives_a_slow_first_up() {
    require_root();
    let c = Cluster::new("drslowup", 2, &dr_ctl_path()).unwrap();
    let etcd = Etcd::start(&c, None);
    let lock = c.hosts[0].hold_dr_lock().unwrap();
    let agents: Vec<LoggedAgent> = c
        .hosts
        .iter()
        .map(|h| {
            let name = format!("h{}", h.id);
            let args = ["--subnet", &h.bip(), "--lease-ttl", "2"];
            agent_as(&etcd, h, &name, "10.0.0.0/16", &args)
        })
        .collect();
    std::thread::sleep(Duration::from_secs(6));
    drop(lock);
    assert!(wait_for(Duration::from_secs(15), || converged(&c, &[0, 1])));
    std::thread::sleep(Duration::from_secs(4));
    assert!(converged(&c, &[0, 1]));
    for agent in &agents {
        let log = agent.log();
        assert_eq!(log.matches("registered ").count(), 1, "{log}");
        assert!(!log.contains("session ended"), "{log}");
    }
}

#[test]
fn an_etcd_stall_loses_no_packet_and_a_dead_host_goes_after_the_grace_period() {
    require_root();
    let mut c = Cluster::new("drflap", 2, &dr_ctl_path()).unwrap();
    let etcd = Etcd::start(&c, None);
    let grace = Duration::from_secs(10);
    let start = |h: &Host| {
        agent_as(
            &etcd,
            h,
            &format!("h{}", h.id),
            "10.0.0.0/16",
            &[
                "--subnet",
                &h.bip(),
                "--lease-ttl",
                "4",
                "--removal-grace",
                "10",
            ],
        )
    };
    let mut agents = [start(&c.hosts[0]), start(&c.hosts[1])];
    assert!(wait_for(Duration::from_secs(15), || converged(&c, &[0, 1])));
    let prefix = c.prefix.clone();
    for host in &mut c.hosts {
        host.add_container(&prefix).unwrap();
    }
    // 45 s of pings every 10 ms across a 30 s stall of etcd: leases may
    // expire when it continues; the grace period covers the re-registration.
    let flood = ContinuousPing::start(
        &c.hosts[0].containers[0].ns,
        c.hosts[1].containers[0].addr,
        4500,
    )
    .unwrap();
    etcd.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(30));
    etcd.signal(Signal::SIGCONT);
    flood.finish_without_loss().unwrap();
    assert!(wait_for(Duration::from_secs(15), || converged(&c, &[0, 1])));

    // Host 1's agent dies for good. Its lease expires; host 0 routes its
    // subnet there for the grace period still, and meanwhile no other host
    // may claim the subnet (it would receive host 0's containers' traffic
    // while host 0 sends it to host 1).
    agents[1].kill();
    let key = format!("/dr/subnets/{}", c.hosts[1].subnet().replace('/', "-"));
    assert!(
        wait_for(Duration::from_secs(15), || !etcd.exists(&c, &key)),
        "host 1's registration outlived its lease"
    );
    let gone = Instant::now();
    let (old_subnet, old_bip) = (c.hosts[1].subnet(), c.hosts[1].bip());
    c.add_host(&dr_ctl_path()).unwrap();
    let newcomer = agent_as(
        &etcd,
        &c.hosts[2],
        "newcomer",
        "10.0.0.0/16",
        &["--subnet", &old_bip, "--lease-ttl", "4"],
    );
    let newcomer_route = vec![(old_subnet.clone(), c.hosts[2].uplink_addr.to_string())];
    assert!(
        wait_for(Duration::from_secs(40), || peer_routes(&c.hosts[0])
            == newcomer_route),
        "host 0 never routed {old_subnet} to the newcomer: {:?}\n{}",
        peer_routes(&c.hosts[0]),
        newcomer.log()
    );
    assert!(
        gone.elapsed() >= grace - Duration::from_millis(500),
        "the subnet was claimed {:?} after its release, within the {grace:?} grace",
        gone.elapsed()
    );
    assert!(
        newcomer
            .log()
            .contains("less than the removal grace period ago"),
        "{}",
        newcomer.log()
    );
    assert_eq!(local_subnet(&c.hosts[2]), Some(old_subnet));
}

#[test]
fn the_agent_is_ready_once_its_peers_match_etcd_and_says_when_it_stops() {
    require_root();
    let c = Cluster::new("dragready", 2, &dr_ctl_path()).unwrap();
    let etcd = Etcd::start(&c, None);
    // Registrations with the default (long) lease: etcd's stall below must
    // not expire host 1's.
    let command = |h: &Host| {
        let mut command = agent_command(h, &etcd.url());
        command.args(["--cluster-cidr", "10.0.0.0/16", "--subnet", &h.bip()]);
        command
    };
    let _h1 = LoggedAgent::spawn(command(&c.hosts[1]));
    assert!(wait_for(Duration::from_secs(15), || c.hosts[1]
        .dr(&["status"])
        .is_ok()));

    // Host 0's agent starts against a hung etcd: not ready.
    etcd.signal(Signal::SIGSTOP);
    let notify = NotifySocket::bind().unwrap();
    let mut h0 = command(&c.hosts[0]);
    h0.env("NOTIFY_SOCKET", notify.path());
    let mut h0 = LoggedAgent::spawn(h0);
    let early = notify.next(Duration::from_secs(3));
    etcd.signal(Signal::SIGCONT);
    assert_eq!(early.unwrap(), None, "ready before reaching etcd");

    // Ready once reconciled: host 1's subnet is already in the peer map.
    let ready = notify.next(Duration::from_secs(30)).unwrap();
    assert_eq!(ready.as_deref(), Some("READY=1"), "{}", h0.log());
    assert_eq!(peers(&c.hosts[0]), vec![c.hosts[1].subnet()]);

    // systemd's stop: STOPPING=1, then a clean exit.
    h0.signal(Signal::SIGTERM);
    let stopping = notify.next(Duration::from_secs(30)).unwrap();
    assert_eq!(stopping.as_deref(), Some("STOPPING=1"), "{}", h0.log());
    let status = h0
        .exited(Duration::from_secs(30))
        .expect("the agent exited");
    assert!(status.success(), "{status:?}: {}", h0.log());
}
