//! dr-ctl's behaviour as a command: idempotence, bad input, `down`, pins.
use std::process::Output;

use dr_tests::{dr_ctl_path, netns::run, require_root, traffic, Cluster, Host};
use serde_json::Value;

fn hosts(tag: &str, n: usize) -> Cluster {
    require_root();
    Cluster::new(tag, n, &dr_ctl_path()).expect("cluster")
}

fn pin_dir(host: &Host) -> String {
    format!("/sys/fs/bpf/dr/netns-{}", host.ns.inode().unwrap())
}

/// Everything a dr-ctl command could change on a host, without the parts
/// the kernel changes by itself (timers, operstate, IPv6 DAD).
fn snapshot(host: &Host) -> String {
    let links: Value =
        serde_json::from_str(&host.ns.ip(&["-j", "-d", "link", "show"]).unwrap()).unwrap();
    let mut s: String = links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            format!(
                "{} {} {} {}\n",
                l["ifname"], l["master"], l["linkinfo"]["info_kind"], l["flags"]
            )
        })
        .collect();
    let addrs: Value =
        serde_json::from_str(&host.ns.ip(&["-j", "-4", "addr", "show"]).unwrap()).unwrap();
    for link in addrs.as_array().unwrap() {
        s += &format!("{} {}\n", link["ifname"], link["addr_info"]);
    }
    s += &host.ns.ip(&["route", "show"]).unwrap();
    let dir = pin_dir(host);
    s += &run("ls", &[&dir]).unwrap_or_else(|_| "no pin dir".into());
    if std::path::Path::new(&dir).exists() {
        s += &host.dr(&["peer", "list", "--json"]).unwrap();
        let status: Value = serde_json::from_str(&host.dr(&["status", "--json"]).unwrap()).unwrap();
        s += &status["hooks"].to_string();
    }
    s
}

fn assert_clean_failure(out: &Output, expect: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success: {stderr}"
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one-line error expected: {stderr}"
    );
    assert!(stderr.starts_with("dr-ctl: error: "), "{stderr}");
    assert!(
        stderr.contains(expect),
        "error should mention {expect:?}: {stderr}"
    );
}

#[test]
fn bad_input_fails_with_one_line_and_changes_nothing() {
    let mut c = hosts("drbad", 2);
    let prefix = c.prefix.clone();
    c.hosts[0].up().unwrap();
    c.hosts[0].add_container(&prefix).unwrap();
    c.hosts[0]
        .dr(&["peer", "add", "10.0.129.0/24", "via", "192.168.91.129"])
        .unwrap();
    let h0 = &c.hosts[0];
    let before = snapshot(h0);
    // (arguments, what the error must mention)
    let cases = [
        ("peer add 10.0.130.0/33 via 192.168.91.130", "invalid peer subnet"),
        ("peer add 10.0.130/24 via 192.168.91.130", "invalid peer subnet"),
        ("peer add 10.0.130.9/24 via 192.168.91.130", "host bits"),
        ("peer add 10.0.128.0/24 via 192.168.91.130", "local subnet"),
        ("peer add 10.0.0.0/16 via 192.168.91.130", "local subnet"),
        ("peer add 10.0.129.128/25 via 192.168.91.130", "overlaps peer 10.0.129.0/24"),
        ("peer add 10.0.130.0/24 via 192.168.92.130", "not on the uplink's network"),
        ("peer add 10.0.130.0/24 via 192.168.91.128", "own uplink address"),
        ("peer add 10.0.130.0/24 via not-an-ip", "invalid via"),
        ("peer del 10.0.131.0/24", "no peer 10.0.131.0/24"),
        ("up --subnet 10.0.140.1/24 --uplink eth0", "already up"),
        ("up --subnet 10.0.128.0/24 --uplink eth0", "network address"),
        ("up --subnet 10.0.128.1/24 --uplink nope0", "\"nope0\""),
        ("up --subnet 192.168.91.1/25 --uplink eth0", "overlaps the uplink"),
        ("up --subnet 10.0.128.1/24 --uplink eth0 --bridge eth0", "both"),
        ("up --subnet 10.0.128.1/24 --uplink eth0 --bridge lo", "not a bridge"),
        ("up --subnet 10.0.128.1/24 --uplink eth0 --cluster-cidr 10.1.0.0/16", "not inside the cluster CIDR"),
        ("up --subnet 10.0.128.1/24 --uplink eth0 --cluster-cidr 10.0.0.1/16", "host bits"),
        ("up --subnet 10.0.128.1/24 --uplink eth0 --cluster-cidr 10.0.0.0/16 --nat-ports 40000-50000", "ephemeral"),
        ("up --subnet 10.0.128.1/24 --uplink eth0 --cluster-cidr 10.0.0.0/16 --nat-table-size 5", "--nat-table-size"),
        ("up --subnet 10.0.128.1/24 --uplink eth0 --cluster-cidr 10.0.0.0/16 --nat-table-size 4096", "needs `dr-ctl down`"),
        ("up --subnet 10.0.128.1/24 --uplink eth0 --cluster-cidr 10.0.0.0/16 --nat-timeout udp=0", "--nat-timeout"),
        ("up --subnet 10.0.128.1/24 --uplink eth0 --no-masquerade 10.9.0.0/16", "needs --cluster-cidr"),
    ];
    for (args, expect) in cases {
        let args: Vec<&str> = args.split_whitespace().collect();
        let out = h0.dr_output(&args).unwrap();
        assert_clean_failure(&out, expect);
        assert_eq!(
            snapshot(h0),
            before,
            "`dr-ctl {}` changed the host",
            args.join(" ")
        );
    }
    traffic::ping(&h0.containers[0].ns, h0.containers[0].addr, 1).unwrap();

    // A host where dr is not up: commands that need it fail, nothing appears.
    let h1 = &c.hosts[1];
    let before = snapshot(h1);
    for (args, expect) in [
        (
            &["peer", "add", "10.0.128.0/24", "via", "192.168.91.128"][..],
            "not up",
        ),
        (&["peer", "del", "10.0.128.0/24"][..], "not up"),
        (&["peer", "list"][..], "not up"),
        (&["status"][..], "not up"),
        (
            &["up", "--subnet", "10.0.129.1/24", "--uplink", "eth7"][..],
            "\"eth7\"",
        ),
        (
            &["up", "--subnet", "10.0.129.1/40", "--uplink", "eth0"][..],
            "invalid --subnet",
        ),
    ] {
        let out = h1.dr_output(args).unwrap();
        assert_clean_failure(&out, expect);
        assert_eq!(
            snapshot(h1),
            before,
            "`dr-ctl {}` changed the host",
            args.join(" ")
        );
    }
}

#[test]
fn repeating_up_and_peer_add_changes_nothing() {
    let c = hosts("dridem", 2);
    let h0 = &c.hosts[0];
    h0.up().unwrap();
    h0.dr(&["peer", "add", "10.0.129.0/24", "via", "192.168.91.129"])
        .unwrap();
    let before = snapshot(h0);
    let up_again: Value = serde_json::from_str(&h0.up_with(&["--json"]).unwrap()).unwrap();
    assert_eq!(up_again["changed"], false);
    let add_again: Value = serde_json::from_str(
        &h0.dr(&[
            "peer",
            "add",
            "10.0.129.0/24",
            "via",
            "192.168.91.129",
            "--json",
        ])
        .unwrap(),
    )
    .unwrap();
    assert_eq!(add_again["change"], "unchanged");
    assert_eq!(snapshot(h0), before);
    // A different next hop for the same subnet is switched in place.
    let replaced: Value = serde_json::from_str(
        &h0.dr(&[
            "--json",
            "peer",
            "add",
            "10.0.129.0/24",
            "via",
            "192.168.91.140",
        ])
        .unwrap(),
    )
    .unwrap();
    assert_eq!(replaced["change"], "replaced");
    let peers: Value = serde_json::from_str(&h0.dr(&["peer", "list", "--json"]).unwrap()).unwrap();
    assert_eq!(peers.as_array().unwrap().len(), 1);
    assert_eq!(peers[0]["via"], "192.168.91.140");
    // Changing SNAT options reconfigures in place, without `down`.
    let changed: Value =
        serde_json::from_str(&h0.up_with(&["--json", "--nat-timeout", "udp=5"]).unwrap()).unwrap();
    assert_eq!(changed["changed"], true);
    let status: Value = serde_json::from_str(&h0.dr(&["status", "--json"]).unwrap()).unwrap();
    assert_eq!(status["nat"]["timeouts"]["udp"], 5);
    assert_eq!(status["peers"].as_array().unwrap().len(), 1, "peers kept");
    // `up` measured the programs' clock, and the change kept it.
    assert_eq!(status["clock"]["source"], "jiffies");
    let hz = status["clock"]["hz"].as_u64().unwrap();
    assert!([100, 250, 300, 1000].contains(&hz), "HZ {hz}");
}

/// The attachment `hook` (an entry of `status --json`'s hooks) is gone:
/// its TCX link id is unknown to the kernel, or no cls_bpf filter with its
/// handle is left on the uplink.
fn assert_attachment_gone(host: &Host, hook: &Value) {
    match hook["attach"].as_str() {
        Some("tcx") => {
            let id = hook["link_id"].as_u64().expect("tcx hook without link id");
            let out = dr_tests::netns::output("bpftool", &["link", "show", "id", &id.to_string()])
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && stderr.contains("No such file"),
                "TCX link {id} of {hook} still exists: {stderr}"
            );
        }
        Some("netlink") => {
            let handle = hook["tc_handle"]
                .as_str()
                .expect("netlink hook without handle");
            let (dev, direction) = (
                hook["interface"].as_str().unwrap(),
                hook["direction"].as_str().unwrap(),
            );
            if host.ns.ip(&["link", "show", "dev", dev]).is_err() {
                return; // the device went away with its filters
            }
            let tc = host
                .ns
                .exec("tc", &["filter", "show", "dev", dev, direction])
                .unwrap();
            assert!(
                !tc.contains(&format!("handle {handle} ")),
                "filter {handle} left on {dev} {direction}: {tc}"
            );
        }
        other => panic!("unknown attach mode {other:?} in {hook}"),
    }
}

#[test]
fn down_removes_everything_up_created_and_nothing_else() {
    let mut c = hosts("drdown", 2);
    let prefix = c.prefix.clone();
    // Host 0: dr creates docker0. Host 1: docker0 exists beforehand, as Docker makes it.
    let pre = &c.hosts[1];
    pre.ns
        .ip(&["link", "add", "docker0", "type", "bridge"])
        .unwrap();
    pre.ns
        .ip(&["addr", "add", "172.17.0.1/16", "dev", "docker0"])
        .unwrap();
    for host in &mut c.hosts {
        host.up().unwrap();
        host.add_container(&prefix).unwrap();
    }
    c.mesh().unwrap();
    traffic::ping(
        &c.hosts[0].containers[0].ns,
        c.hosts[1].containers[0].addr,
        1,
    )
    .unwrap();
    let mut program_ids = Vec::new();
    let mut hooks_by_host = Vec::new();
    for host in &c.hosts {
        // Each host learned its container from the ping: its port is hooked.
        host.dr(&["sync"]).unwrap();
        let s: Value = serde_json::from_str(&host.dr(&["status", "--json"]).unwrap()).unwrap();
        assert_eq!(s["port_hooks"]["hooked"], 1, "{}", s["port_hooks"]);
        program_ids.push(s["port_hooks"]["program_id"].as_u64().unwrap());
        let hooks = s["hooks"].as_array().unwrap().clone();
        program_ids.extend(hooks.iter().map(|h| h["program_id"].as_u64().unwrap()));
        hooks_by_host.push(hooks);
    }
    for (host, hooks) in c.hosts.iter().zip(&hooks_by_host) {
        assert!(host.dr(&["down"]).unwrap().contains("dr is down"));
        assert!(
            !std::path::Path::new(&pin_dir(host)).exists(),
            "pin dir left behind"
        );
        // `tc filter show` lists cls_bpf filters but not TCX links: look
        // each attachment up by what the kernel knows it by.
        for hook in hooks {
            assert_attachment_gone(host, hook);
        }
        // Repeating down is fine.
        assert!(host.dr(&["down"]).unwrap().contains("not up"));
    }
    // Nothing holds the programs any more (TCX link or cls_bpf filter, on
    // the hooks' interfaces and the containers' ports, and pins): the
    // kernel frees them, after an RCU grace period.
    for id in program_ids {
        let gone = || {
            !dr_tests::netns::output("bpftool", &["prog", "show", "id", &id.to_string()])
                .unwrap()
                .status
                .success()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !gone() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(gone(), "program {id} still loaded");
    }
    // dr created docker0 on host 0 and removed it; host 1's docker0 stays with its own address only.
    assert!(c.hosts[0].ns.ip(&["link", "show", "docker0"]).is_err());
    let addrs = c.hosts[1]
        .ns
        .ip(&["-4", "addr", "show", "docker0"])
        .unwrap();
    assert!(
        addrs.contains("172.17.0.1/16") && !addrs.contains("10.0.129.1"),
        "{addrs}"
    );
    assert!(
        !traffic::reachable(&c.hosts[0].containers[0].ns, c.hosts[1].containers[0].addr).unwrap()
    );
}

#[test]
fn each_namespace_gets_its_own_pins_and_they_outlive_dr_ctl() {
    let c = hosts("drpins", 2);
    for host in &c.hosts {
        host.up().unwrap();
    }
    let (a, b) = (pin_dir(&c.hosts[0]), pin_dir(&c.hosts[1]));
    assert_ne!(a, b);
    // Each TC hook leaves its TCX link pinned, or in netlink mode its program.
    let status: Value =
        serde_json::from_str(&c.hosts[0].dr(&["status", "--json"]).unwrap()).unwrap();
    let hook_pin = match status["attach_mode"].as_str() {
        Some("tcx") => "link",
        Some("netlink") => "prog",
        other => panic!("attach mode {other:?}"),
    };
    for dir in [&a, &b] {
        let entries = run("ls", &[dir]).unwrap();
        for pin in [
            "PEER_SUBNETS",
            "DATAPATH_CONFIG",
            &format!("{hook_pin}_bridge_ingress"),
            &format!("{hook_pin}_uplink_ingress"),
        ] {
            assert!(entries.contains(pin), "{pin} missing in {dir}: {entries}");
        }
    }
    // State written by one process is seen by the next.
    c.hosts[0]
        .dr(&["peer", "add", "10.0.129.0/24", "via", "192.168.91.129"])
        .unwrap();
    assert!(c.hosts[0]
        .dr(&["peer", "list"])
        .unwrap()
        .contains("10.0.129.0/24"));
    assert!(!c.hosts[1]
        .dr(&["peer", "list"])
        .unwrap()
        .contains("10.0.129.0/24"));
}

#[test]
fn docker_config_gets_bip_merged_with_backup() {
    let c = hosts("drdock", 1);
    let h0 = &c.hosts[0];
    let dir = std::env::temp_dir().join(&c.prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("daemon.json");
    std::fs::write(
        &path,
        r#"{"log-driver": "journald", "bip": "172.17.0.1/16"}"#,
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let bip = h0.bip();
    let up = [
        "up",
        "--subnet",
        &bip,
        "--uplink",
        "eth0",
        "--docker-config",
        p,
    ];
    h0.dr(&up).unwrap();
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(doc["bip"], "10.0.128.1/24");
    assert_eq!(doc["log-driver"], "journald");
    let backup = std::fs::read_to_string(dir.join("daemon.json.bak")).unwrap();
    assert!(backup.contains("172.17.0.1/16"));
    // A broken daemon.json is refused before anything changes.
    h0.dr(&["down"]).unwrap();
    std::fs::write(&path, "{ not json").unwrap();
    let out = h0.dr_output(&up).unwrap();
    assert_clean_failure(&out, "daemon.json");
    assert!(
        h0.ns.ip(&["link", "show", "docker0"]).is_err(),
        "up went ahead"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn up_refuses_a_docker0_still_serving_containers_on_another_subnet() {
    let mut c = hosts("drocc", 1);
    let prefix = c.prefix.clone();
    let h = &mut c.hosts[0];
    // A running Docker with its default bip and one container.
    h.ns.ip(&["link", "add", "docker0", "type", "bridge"])
        .unwrap();
    h.ns.ip(&["addr", "add", "172.17.0.1/16", "dev", "docker0"])
        .unwrap();
    h.ns.ip(&["link", "set", "docker0", "up"]).unwrap();
    h.add_container(&prefix).unwrap();
    let before = snapshot(h);
    let args = h.up_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = h.dr_output(&args).unwrap();
    assert_clean_failure(
        &out,
        "docker0 carries 172.17.0.1/16 with 1 attached interface(s) (veth0)",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop those containers"));
    assert_eq!(snapshot(h), before, "host changed by a refused up");
    // Once the containers are gone, dr adopts the bridge.
    h.ns.ip(&["link", "del", "veth0"]).unwrap();
    h.up().unwrap();
    let addrs = h.ns.ip(&["-4", "addr", "show", "docker0"]).unwrap();
    assert!(addrs.contains("10.0.128.1/24"), "{addrs}");
}

/// A pin directory planted by another user (or a symlink in its place) is
/// refused before anything changes: whoever can write there could unlink
/// the link pins (detaching forwarding) or hold dr's lock. What dr creates
/// itself is private (0700).
#[test]
fn pin_directories_others_could_touch_are_refused() {
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
    let c = hosts("drpinown", 1);
    let host = &c.hosts[0];
    let dir = pin_dir(host);
    let up_args = host.up_args();
    let up_args: Vec<&str> = up_args.iter().map(String::as_str).collect();
    let network = || host.ns.links_and_addresses().unwrap();
    let before = network();
    std::fs::create_dir_all("/sys/fs/bpf/dr").unwrap();
    let elsewhere = format!("/sys/fs/bpf/dr/planted-{}", host.ns.inode().unwrap());
    /// Removes what the test planted, even when it fails halfway.
    struct Planted<'a>([&'a str; 2]);
    impl Drop for Planted<'_> {
        fn drop(&mut self) {
            for path in self.0 {
                let _ = std::fs::remove_file(path).or_else(|_| std::fs::remove_dir(path));
            }
        }
    }
    let _planted = Planted([&dir, &elsewhere]);

    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let out = host.dr_output(&up_args).unwrap();
    assert_clean_failure(&out, "is owned by uid 65534, not 0: refusing to use it");
    assert_clean_failure(&host.dr_output(&["down"]).unwrap(), "owned by uid 65534");

    std::os::unix::fs::chown(&dir, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = host.dr_output(&up_args).unwrap();
    assert_clean_failure(&out, "is writable by other users (mode 777)");
    std::fs::remove_dir(&dir).unwrap();

    std::fs::create_dir(&elsewhere).unwrap();
    symlink(&elsewhere, &dir).unwrap();
    let out = host.dr_output(&up_args).unwrap();
    std::fs::remove_file(&dir).unwrap();
    std::fs::remove_dir(&elsewhere).unwrap();
    assert_clean_failure(&out, "is not a directory");
    assert_eq!(network(), before, "a refused up changed the host");

    host.up().unwrap();
    let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700, "pin directory mode {mode:o}");
    host.dr(&["down"]).unwrap();
}

/// Exit codes scripts can use: 0 whole, 3 not up, 4 degraded (an interface
/// gone), 1 bad input, 2 usage; with `--json`, errors are JSON on stdout.
#[test]
fn status_and_errors_have_exit_codes_scripts_can_use() {
    let c = hosts("drexit", 1);
    let host = &c.hosts[0];
    let code = |out: &Output| out.status.code().expect("exit code");

    let out = host.dr_output(&["status"]).unwrap();
    assert_eq!(code(&out), 3, "not up");
    assert_clean_failure(&out, "dr is not up");
    let out = host.dr_output(&["status", "--json"]).unwrap();
    assert_eq!(code(&out), 3);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let error: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(error["exit_code"], 3);
    assert!(
        error["error"].as_str().unwrap().starts_with("dr is not up"),
        "{error}"
    );

    host.up().unwrap();
    let out = host.dr_output(&["status"]).unwrap();
    assert_eq!(code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("health: ok\n"));
    assert_eq!(host.status().unwrap()["problems"], serde_json::json!([]));

    let out = host
        .dr_output(&["peer", "add", "10.0.129.0/33", "via", "192.168.91.129"])
        .unwrap();
    assert_eq!(code(&out), 1, "bad input");
    let out = host.dr_output(&["peer", "frobnicate"]).unwrap();
    assert_eq!(code(&out), 2, "usage");

    // The bridge disappears (someone deleted docker0): degraded, and said why.
    host.ns.ip(&["link", "del", "docker0"]).unwrap();
    let out = host.dr_output(&["status"]).unwrap();
    assert_eq!(code(&out), 4, "degraded");
    let text = String::from_utf8_lossy(&out.stdout);
    let health = text.lines().find(|l| l.starts_with("health:")).unwrap();
    assert!(
        health.starts_with("health: DEGRADED: the bridge interface (ifindex ")
            && health.ends_with(") is gone"),
        "{health}"
    );
    let out = host.dr_output(&["status", "--json"]).unwrap();
    assert_eq!(code(&out), 4);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["problems"].as_array().unwrap().len(),
        1,
        "{}",
        status["problems"]
    );
    host.dr(&["down"]).unwrap();
}

#[test]
fn max_peers_sizes_the_peer_tables_and_refuses_peers_beyond_them() {
    let c = hosts("drcap", 1);
    let h0 = &c.hosts[0];
    let up_with = |extra: &[&str]| {
        let mut args = h0.up_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        h0.dr_output(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .unwrap()
    };
    assert_clean_failure(
        &up_with(&["--max-peers", "0"]),
        "--max-peers 0 is out of range",
    );
    assert!(up_with(&["--max-peers", "2"]).status.success());
    let dir = pin_dir(h0);
    // A spare trie entry, and room for every peer moving to a new host.
    for (map, size) in [("PEER_TRAFFIC", 2), ("PEER_SUBNETS", 3), ("PEER_HOSTS", 4)] {
        let info = aya::maps::MapInfo::from_pin(format!("{dir}/{map}")).unwrap();
        assert_eq!(info.max_entries(), size, "{map}");
    }
    assert_eq!(h0.status().unwrap()["peer_capacity"], 2);

    h0.dr(&["peer", "add", "10.0.129.0/24", "via", "192.168.91.129"])
        .unwrap();
    h0.dr(&["peer", "add", "10.0.130.0/24", "via", "192.168.91.130"])
        .unwrap();
    let before = snapshot(h0);
    let third = h0
        .dr_output(&["peer", "add", "10.0.131.0/24", "via", "192.168.91.131"])
        .unwrap();
    assert_clean_failure(&third, "peer table is full");
    assert_eq!(snapshot(h0), before);
    // A peer that moves to another host takes no new place.
    h0.dr(&["peer", "add", "10.0.130.0/24", "via", "192.168.91.131"])
        .unwrap();

    // Maps pinned with another capacity than the default: `up` keeps it,
    // and refuses to change it in place.
    let before = snapshot(h0);
    assert_clean_failure(
        &up_with(&["--max-peers", "8"]),
        "changing --max-peers needs `dr-ctl down` first",
    );
    assert_eq!(snapshot(h0), before);
    let again = up_with(&[]);
    assert!(again.status.success(), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing changed"));
    assert_eq!(h0.status().unwrap()["peer_capacity"], 2);
    assert_eq!(h0.status().unwrap()["peers"].as_array().unwrap().len(), 2);
}
