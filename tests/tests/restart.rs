//! Restart safety: forwarding never depends on a running dr-ctl. Killing it
//! at any moment, and replacing its programs with another build's, must not
//! lose a single packet of a continuous ping.
mod another_build;

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use dr_tests::{
    dr_ctl_path,
    netns::unique_prefix,
    require_root,
    traffic::{self, ContinuousPing},
    Cluster, Host,
};
use serde_json::Value;

/// Two hosts with one container each, dr up with `extra` options.
fn cluster(tag: &str, extra: &[&str]) -> Cluster {
    require_root();
    let mut c = Cluster::new(tag, 2, &dr_ctl_path()).expect("cluster");
    c.up_all_with(1, extra).expect("dr up on all hosts");
    c
}

/// A ping of `count` packets every 10 ms from host 0's container to host 1's.
fn continuous_ping(c: &Cluster, count: u32) -> ContinuousPing {
    let (from, to) = (&c.hosts[0].containers[0], &c.hosts[1].containers[0]);
    ContinuousPing::start(&from.ns, to.addr, count).unwrap()
}

fn dr_child(host: &Host, args: &[&str]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &host.ns.name])
        .arg(dr_ctl_path())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dr-ctl")
}

#[test]
fn killing_dr_ctl_at_any_moment_never_drops_traffic() {
    // Room for the batch below; later `up`s and `apply`s keep the capacity.
    let c = cluster("drkill", &["--max-peers", "32768"]);
    let (h0, h1) = (&c.hosts[0], &c.hosts[1]);
    // A long batch (20,000 peers) to be killed in the middle of.
    let path = std::env::temp_dir().join(unique_prefix("dr-kill-peers-"));
    let peers: String = (0..20_000u32)
        .map(|i| {
            format!(
                "{}/24 via {}\n",
                std::net::Ipv4Addr::from(0x6440_0000u32 + (i << 8)),
                h1.uplink_addr
            )
        })
        .collect();
    std::fs::write(&path, peers).unwrap();
    let file = path.to_str().unwrap();

    let count = 1500;
    // The cluster's plan, as `apply` would be run from it.
    let plan_path = std::env::temp_dir().join(format!("{}.toml", unique_prefix("dr-kill-plan-")));
    let plan: String =
        c.hosts
            .iter()
            .fold(String::from("cluster_cidr = \"10.0.0.0/16\"\n"), |p, h| {
                p + &format!(
                    "[[host]]\nname = \"h{}\"\naddress = \"{}\"\nsubnet = \"{}\"\n",
                    h.id,
                    h.uplink_addr,
                    h.bip()
                )
            });
    std::fs::write(&plan_path, plan).unwrap();
    let plan = plan_path.to_str().unwrap();

    let ping = continuous_ping(&c, count);
    let up_args = h0.up_args();
    let up_args: Vec<&str> = up_args.iter().map(String::as_str).collect();
    for i in 0..24u64 {
        let args: &[&str] = match i % 4 {
            0 => &["peer", "add", "--file", file],
            1 => &up_args,
            2 => &["apply", "-f", plan],
            _ => &["peer", "del", "100.64.0.0/24"],
        };
        let mut child = dr_child(h0, args);
        std::thread::sleep(Duration::from_millis(2 + (i * 7) % 40));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // The next run adopts the pins and reconciles.
        h0.up().unwrap();
    }
    ping.finish_without_loss().unwrap();
    // The state is whole and usable: the real peer is there, and a batch completes.
    h0.dr(&["peer", "add", "--file", file]).unwrap();
    let peers: Value = serde_json::from_str(&h0.dr(&["peer", "list", "--json"]).unwrap()).unwrap();
    assert_eq!(peers.as_array().unwrap().len(), 20_001);
    traffic::ping(&h0.containers[0].ns, h1.containers[0].addr, 2).unwrap();
    std::fs::remove_file(path).unwrap();
    std::fs::remove_file(plan_path).unwrap();
}

#[test]
fn up_with_another_build_swaps_programs_in_place_without_a_gap() {
    let c = cluster("drupgr", &[]);
    let h0 = &c.hosts[0];
    let status =
        || -> Value { serde_json::from_str(&h0.dr(&["status", "--json"]).unwrap()).unwrap() };
    let before = status();
    another_build::pretend(h0);

    let count = 300;
    let ping = continuous_ping(&c, count);
    std::thread::sleep(Duration::from_millis(500));
    let up: Value = serde_json::from_str(&h0.up_with(&["--json"]).unwrap()).unwrap();
    assert_eq!(up["attached"]["dr_bridge_ingress"], "replaced", "{up}");
    assert_eq!(up["attached"]["dr_uplink_ingress"], "replaced", "{up}");
    ping.finish_without_loss().unwrap();
    let after = status();
    for i in 0..2 {
        let (b, a) = (&before["hooks"][i], &after["hooks"][i]);
        // The attachment stays: the same TCX link, or the same cls_bpf filter.
        assert!(a["link_id"].is_u64() || a["tc_handle"].is_string(), "{a}");
        assert_eq!(a["link_id"], b["link_id"], "the link stays");
        assert_eq!(a["tc_handle"], b["tc_handle"], "the filter stays");
        assert_ne!(a["program_id"], b["program_id"], "the program is new");
    }
    // The maps are kept: the same peer, its counters still counting.
    assert_eq!(after["peers"][0]["subnet"], before["peers"][0]["subnet"]);
    assert_eq!(after["peers"][0]["via"], before["peers"][0]["via"]);
    assert!(after["peers"][0]["to_peer"]["packets"].as_u64().unwrap() >= count as u64);
}
