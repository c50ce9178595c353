//! The node lock: dr-ctl commands racing on one host do not interleave.
use std::process::Output;

use dr_tests::{dr_ctl_path, require_root, Cluster, Host};
use serde_json::Value;

/// The IPv4 addresses (with prefix) on `dev`.
fn addresses(host: &Host, dev: &str) -> Vec<String> {
    let out = host
        .ns
        .ip(&["-j", "-4", "addr", "show", "dev", dev])
        .unwrap();
    let links: Value = serde_json::from_str(&out).unwrap();
    links
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["addr_info"].as_array().unwrap())
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// The host's interfaces by name, sorted.
fn links(host: &Host) -> Vec<String> {
    let links: Value = serde_json::from_str(&host.ns.ip(&["-j", "link", "show"]).unwrap()).unwrap();
    let mut names: Vec<String> = links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// Two `up`s with different subnets at once, on a host with no docker0 yet:
/// exactly one brings dr up; the other fails saying dr is up with the
/// winner's subnet; and nothing of the loser's is left: one bridge with one
/// address (the winner's), and one datapath with every hook attached. Then
/// `down` leaves nothing. Several rounds, as each race goes differently.
#[test]
fn concurrent_ups_one_wins_and_nothing_leaks() {
    require_root();
    let cluster = Cluster::new("drlock", 1, &dr_ctl_path()).expect("cluster");
    let host = &cluster.hosts[0];
    let subnets = ["10.0.128.1/24", "10.0.130.1/24"];
    let before = links(host);
    for round in 0..3 {
        let outputs: Vec<Output> = std::thread::scope(|s| {
            let runs: Vec<_> = subnets
                .iter()
                .map(|subnet| {
                    s.spawn(move || {
                        host.dr_output(&["up", "--subnet", subnet, "--uplink", "eth0"])
                            .unwrap()
                    })
                })
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let won: Vec<usize> = (0..2).filter(|&i| outputs[i].status.success()).collect();
        let stderr: Vec<_> = outputs
            .iter()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .collect();
        assert_eq!(won.len(), 1, "round {round}: {stderr:?}");
        let (winner, loser) = (won[0], 1 - won[0]);
        assert!(
            stderr[loser].contains(&format!(
                "dr is already up here with subnet {}",
                subnets[winner]
            )),
            "round {round}: {}",
            stderr[loser]
        );
        assert_eq!(addresses(host, "docker0"), [subnets[winner]]);
        let mut expected = before.clone();
        expected.push("docker0".into());
        expected.sort();
        assert_eq!(links(host), expected, "round {round}");
        let status = host.status().unwrap();
        assert_eq!(
            status["gateway"].as_str().unwrap(),
            subnets[winner].split('/').next().unwrap()
        );
        let hooks = status["hooks"].as_array().unwrap();
        assert!(!hooks.is_empty());
        assert!(
            hooks.iter().all(|h| h["attached"] == true),
            "round {round}: {hooks:?}"
        );

        host.dr(&["down"]).unwrap();
        assert_eq!(links(host), before, "round {round}: down left links");
        assert!(
            !std::path::Path::new(&format!(
                "/sys/fs/bpf/dr/netns-{}",
                host.ns.inode().unwrap()
            ))
            .exists(),
            "round {round}: down left pins"
        );
    }
}
