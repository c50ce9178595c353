//! Upgrading in place from the previous release (`$DR_CTL_PREVIOUS`, built
//! from git by `cargo xtask test`), whose pinned maps have an older layout:
//! `up` with this build migrates them and swaps the programs in, without
//! losing a packet, a peer, a counter or a translation.
use std::{net::IpAddr, path::PathBuf, time::Duration};

use dr_tests::{
    cluster::EXTERNAL_ADDR,
    dr_ctl_path, require_root,
    traffic::{self, ContinuousPing},
    Cluster,
};
use serde_json::Value;

fn previous_release() -> PathBuf {
    let path = PathBuf::from(
        std::env::var_os("DR_CTL_PREVIOUS")
            .expect("DR_CTL_PREVIOUS: the previous release's dr-ctl (run `cargo xtask test`)"),
    );
    assert!(path.is_file(), "{} missing", path.display());
    path
}

#[test]
fn up_takes_over_from_the_previous_release_in_place() {
    require_root();
    let mut c = Cluster::new("drupold", 2, &previous_release()).expect("cluster");
    c.add_external().unwrap();
    c.up_all(1).expect("the previous release up on every host");
    let ext = c.external.as_ref().unwrap();
    // A translation made by the previous release.
    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    let seen = traffic::udp_exchange(&a.containers[0].ns, ext, EXTERNAL_ADDR, 5).unwrap();
    assert_eq!(seen.ip(), IpAddr::V4(a.uplink_addr));
    let status = |h: &dr_tests::Host| -> Value {
        serde_json::from_str(&h.dr(&["status", "--json"]).unwrap()).unwrap()
    };
    // Its containers learned, for direct delivery.
    c.sync_endpoints().unwrap();
    let before = status(a);
    assert_eq!(before["endpoints"], 1, "{before}");

    let count = 400;
    let ping = ContinuousPing::start(&a.containers[0].ns, b.containers[0].addr, count).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let current = dr_ctl_path();
    for host in &mut c.hosts {
        host.use_dr_ctl(&current);
        // The previous release attached with TCX; `auto` keeps that mode
        // even when the suite forces another (DR_ATTACH).
        let up: Value =
            serde_json::from_str(&host.up_with(&["--json", "--attach", "auto"]).unwrap()).unwrap();
        assert_eq!(up["changed"], true, "{up}");
    }
    ping.finish_without_loss().unwrap();

    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    let after = status(a);
    assert_eq!(after["peers"][0]["subnet"], before["peers"][0]["subnet"]);
    // The endpoint table changed its layout: `up` learned its container again.
    assert_eq!(after["endpoints"], 1, "{after}");
    // Its configuration had no jiffies clock: `up` measured one.
    assert_eq!(after["clock"]["source"], "jiffies", "{after}");
    // The previous release's peer tables (131072 peers) keep their size.
    assert_eq!(after["peer_capacity"], 131_072, "{after}");
    // Counters carried over: the ping went on counting from where it was.
    let to_peer = |s: &Value| s["counters"]["to_peer"]["packets"].as_u64().unwrap();
    assert!(
        to_peer(&after) >= to_peer(&before) + u64::from(count),
        "{after}"
    );
    assert!(
        after["counters"]["nat_created"]["packets"]
            .as_u64()
            .unwrap()
            >= 1
    );
    // The previous release's translation is still live, with its port.
    let nat: Value = serde_json::from_str(&a.dr(&["nat", "list", "--json"]).unwrap()).unwrap();
    let udp = nat
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["proto"] == "udp")
        .unwrap_or_else(|| panic!("no UDP translation after the upgrade: {nat}"));
    assert_eq!(udp["translated"]["src_port"], u64::from(seen.port()));
    // No old map is left behind, and what is new in this version works:
    // the host's own traffic to a peer container.
    let pins = std::fs::read_dir(after["pin_dir"].as_str().unwrap()).unwrap();
    let names: Vec<String> = pins
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with("_PREVIOUS")), "{names:?}");
    traffic::ping(&a.ns, b.containers[0].addr, 2).unwrap();
    // The previous release's bookkeeping came along into the node state:
    // `down` removes the bridge that release's `up` created.
    let down: Value = serde_json::from_str(&b.dr(&["down", "--json"]).unwrap()).unwrap();
    assert_eq!(down["removed_bridge"], true, "{down}");
}
