//! The etcd-backed agent: Debian's etcd-server runs in the switch namespace,
//! each emulated host runs `dr-ctl agent`.
use std::time::Duration;

use dr_tests::{
    dr_ctl_path,
    etcd::{agent, agent_command, test_agent_args, wait_for, Agents, Etcd, LoggedAgent, Pki},
    require_root, traffic, Cluster, Host,
};
use serde_json::Value;

fn peers(host: &Host) -> Vec<String> {
    let Ok(out) = host.dr(&["peer", "list", "--json"]) else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut p: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["subnet"].as_str().unwrap().to_string())
        .collect();
    p.sort();
    p
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
