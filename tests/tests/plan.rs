//! The cluster plan (`dr-ctl apply`), through the real dr-ctl in emulated hosts.
use std::time::Duration;

use dr_tests::{
    dr_ctl_path,
    netns::unique_prefix,
    require_root,
    traffic::{self, ContinuousPing},
    Cluster, Host,
};
use serde_json::Value;

/// A plan for `hosts`, written to a fresh file.
fn plan_file(hosts: &[&Host], extra: &str) -> std::path::PathBuf {
    let mut text = String::from("cluster_cidr = \"10.0.0.0/16\"\nuplink = \"eth0\"\n");
    for h in hosts {
        text += &format!(
            "[[host]]\nname = \"h{}\"\naddress = \"{}\"\nsubnet = \"{}\"\n",
            h.id,
            h.uplink_addr,
            h.bip()
        );
    }
    text += extra;
    let path = std::env::temp_dir().join(format!("{}.toml", unique_prefix("dr-plan-")));
    std::fs::write(&path, text).unwrap();
    path
}

fn apply(host: &Host, path: &std::path::Path, extra: &[&str]) -> Value {
    let mut args = vec!["apply", "-f", path.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&host.dr(&args).unwrap()).unwrap()
}

fn peers(host: &Host) -> Vec<String> {
    let v: Value = serde_json::from_str(&host.dr(&["peer", "list", "--json"]).unwrap()).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{} via {}",
                p["subnet"].as_str().unwrap(),
                p["via"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn one_plan_file_brings_up_the_whole_cluster_and_follows_its_changes() {
    require_root();
    let mut c = Cluster::new("drplan", 3, &dr_ctl_path()).unwrap();
    let prefix = c.prefix.clone();
    let all: Vec<&Host> = c.hosts.iter().collect();
    let path = plan_file(&all, "");
    for host in &mut c.hosts {
        // Dry run first: it would bring dr up and add two peers, and changes nothing.
        let dry = apply(host, &path, &["--dry-run"]);
        assert_eq!(dry["up"], "would be brought up");
        assert_eq!(dry["peers"]["add"].as_array().unwrap().len(), 2);
        assert!(
            host.ns.ip(&["link", "show", "docker0"]).is_err(),
            "dry run changed the host"
        );
        let r = apply(host, &path, &[]);
        assert_eq!(r["host"], format!("h{}", host.id));
        assert_eq!(r["peers"]["add"].as_array().unwrap().len(), 2);
        host.add_container(&prefix).unwrap();
    }
    let (h0, h1, h2) = (&c.hosts[0], &c.hosts[1], &c.hosts[2]);
    traffic::ping(&h0.containers[0].ns, h2.containers[0].addr, 2).unwrap();
    assert!(
        !h0.ns.ip(&["route"]).unwrap().contains("10.0.130.0"),
        "no kernel routes"
    );

    // Applying again changes nothing.
    let again = apply(h0, &path, &[]);
    assert_eq!(
        (again["up"].as_str(), again["peers"]["unchanged"].as_u64()),
        (Some("unchanged"), Some(2))
    );
    assert!(
        again["peers"]["add"].as_array().unwrap().is_empty()
            && again["peers"]["remove"].as_array().unwrap().is_empty()
    );

    // Host 130 leaves the plan and host 129 moves to another address, while
    // host 128 keeps pinging host 129's container: no packet may be lost.
    h1.ns
        .ip(&["addr", "add", "192.168.91.140/24", "dev", "eth0"])
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace(
        "address = \"192.168.91.129\"",
        "address = \"192.168.91.140\"",
    );
    let cut = text.find("[[host]]\nname = \"h130\"").unwrap();
    std::fs::write(&path, &text[..cut]).unwrap();
    let ping = ContinuousPing::start(&h0.containers[0].ns, h1.containers[0].addr, 200).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let dry = apply(h0, &path, &["--dry-run"]);
    assert_eq!(dry["peers"]["change"].as_array().unwrap().len(), 1, "{dry}");
    assert_eq!(dry["peers"]["remove"].as_array().unwrap().len(), 1, "{dry}");
    let r = apply(h0, &path, &[]);
    assert_eq!(r["peers"]["change"][0][2], "192.168.91.140");
    ping.finish_without_loss().unwrap();
    assert_eq!(
        peers(h0),
        vec!["10.0.129.0/24 via 192.168.91.140".to_string()]
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn bad_plans_are_refused_naming_file_host_and_field() {
    require_root();
    let c = Cluster::new("drplanbad", 2, &dr_ctl_path()).unwrap();
    let all: Vec<&Host> = c.hosts.iter().collect();
    let h0 = &c.hosts[0];
    let overlap =
        "[[host]]\nname = \"x\"\naddress = \"192.168.91.200\"\nsubnet = \"10.0.128.129/25\"\n";
    let cases = [
        (plan_file(&all, overlap), vec![], "host \"x\": subnet: 10.0.128.128/25 overlaps host \"h128\""),
        (plan_file(&all, "[[host]]\nname = \"h128\"\naddress = \"192.168.91.201\"\nsubnet = \"10.0.200.1/24\"\n"), vec![], "host \"h128\": name: given twice"),
        (plan_file(&all, ""), vec!["--host", "h129"], "host \"h129\": address: 192.168.91.129 is not an address of this machine"),
        (plan_file(&all[1..], ""), vec![], "no host entry has an address of this machine"),
    ];
    for (path, extra, expect) in cases {
        let mut args = vec!["apply", "-f", path.to_str().unwrap()];
        args.extend(extra.iter().copied());
        let out = h0.dr_output(&args).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(path.to_str().unwrap()) && stderr.contains(expect),
            "{stderr}"
        );
        assert!(
            h0.ns.ip(&["link", "show", "docker0"]).is_err(),
            "a refused plan changed the host"
        );
        std::fs::remove_file(&path).unwrap();
    }
}
