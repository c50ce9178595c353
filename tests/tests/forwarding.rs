//! Cross-host forwarding through the real dr-ctl in emulated hosts.
use dr_tests::{dr_ctl_path, require_root, traffic, Cluster};

fn cluster(tag: &str) -> Cluster {
    require_root();
    let mut c = Cluster::new(tag, 3, &dr_ctl_path()).expect("cluster");
    c.up_all(2).expect("dr up on all hosts");
    c
}

#[test]
fn containers_reach_each_other_across_hosts() {
    let c = cluster("drfwd");
    for host in &c.hosts {
        let routes = host.ns.ip(&["route", "show"]).unwrap();
        for peer in c.hosts.iter().filter(|p| p.id != host.id) {
            assert!(
                !routes.contains(&peer.subnet()),
                "kernel route for a peer subnet:\n{routes}"
            );
        }
    }
    for a in &c.hosts {
        for b in c.hosts.iter().filter(|b| b.id != a.id) {
            traffic::ping(&a.containers[0].ns, b.containers[1].addr, 2).unwrap();
        }
    }
}
