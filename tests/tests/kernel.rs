//! Kernels without TCX: the netlink attach mode (clsact + cls_bpf) behaves
//! like TCX (persistent, idempotent, replaced in place, removed exactly),
//! and a kernel below dr's minimum is refused before anything changes.
//! Runs on any kernel: netlink mode is forced, and older kernels are faked
//! with `DR_KERNEL_RELEASE`. The VM subset runs it on 6.1 for real.
mod another_build;

use std::{path::Path, process::Output, time::Duration};

use dr_ctl::kernel::{self, KernelVersion};
use dr_tests::{dr_ctl_path, require_root, traffic, Cluster, Host};
use serde_json::Value;

/// dr's cls_bpf priority ("dr"), as `tc filter show` prints it.
const DR_PREF: &str = "pref 25714 ";

fn status(host: &Host) -> Value {
    serde_json::from_str(&host.dr(&["status", "--json"]).unwrap()).unwrap()
}

fn pin_dir(host: &Host) -> String {
    format!("/sys/fs/bpf/dr/netns-{}", host.ns.inode().unwrap())
}

fn ingress_filters(host: &Host, dev: &str) -> String {
    host.ns
        .exec("tc", &["filter", "show", "dev", dev, "ingress"])
        .unwrap()
}

/// dr-ctl with `DR_KERNEL_RELEASE` standing in for the running kernel, and
/// the attach mode left to dr-ctl (whatever `DR_ATTACH` the suite runs with).
fn dr_on_kernel(host: &Host, release: &str, args: &[&str]) -> Output {
    let mut full = vec![
        "-u".to_string(),
        "DR_ATTACH".to_string(),
        format!("DR_KERNEL_RELEASE={release}"),
        host.dr_ctl().display().to_string(),
    ];
    full.extend(args.iter().map(|a| a.to_string()));
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    host.ns.exec_output("env", &full).unwrap()
}

fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("dr-ctl: error: "), "{stderr}");
    stderr
}

/// Interfaces, addresses, qdiscs and filters, and the pins: what `up` could change.
fn host_state(host: &Host) -> String {
    let mut s = host.ns.links_and_addresses().unwrap();
    s += &host.ns.exec("tc", &["qdisc", "show"]).unwrap();
    s += &ingress_filters(host, "eth0");
    s += &format!("pins: {}", Path::new(&pin_dir(host)).exists());
    s
}

#[test]
fn netlink_mode_is_persistent_idempotent_replaced_in_place_and_removed_exactly() {
    require_root();
    let mut c = Cluster::new("drnl", 2, &dr_ctl_path()).expect("cluster");
    c.up_all_with(1, &["--attach", "netlink"])
        .expect("dr up on all hosts");
    let h0 = &c.hosts[0];
    let (from, to) = (&h0.containers[0], &c.hosts[1].containers[0]);
    traffic::ping(&from.ns, to.addr, 2).unwrap();

    // Attached after dr-ctl exited, as cls_bpf filters at dr's priority.
    let before = status(h0);
    assert_eq!(before["attach_mode"], "netlink", "{before}");
    // Flows are timed by jiffies on this kernel too (Debian 12's 6.1 in
    // the VM): `up` measured them.
    assert_eq!(before["clock"]["source"], "jiffies", "{before}");
    for hook in before["hooks"].as_array().unwrap() {
        assert_eq!(hook["attach"], "netlink", "{hook}");
        assert!(hook["program_id"].as_u64().unwrap() > 0, "{hook}");
        assert!(
            hook["tc_handle"].is_string() && hook["link_id"].is_null(),
            "{hook}"
        );
    }
    let uplink_filters = ingress_filters(h0, "eth0");
    assert!(
        uplink_filters.contains(DR_PREF) && uplink_filters.contains("dr_uplink_ingress"),
        "{uplink_filters}"
    );
    assert!(
        uplink_filters.contains(&format!(
            "id {}",
            before["hooks"][1]["program_id"].as_u64().unwrap()
        )),
        "status names the attached program: {uplink_filters}"
    );
    let text = h0.dr(&["status"]).unwrap();
    assert!(text.contains("attached with netlink"), "{text}");

    // Another tool's filter on the same hook, at another priority; it
    // matches nothing (TEST-NET-1), so dr's filter still sees every packet.
    h0.ns
        .exec(
            "tc",
            &[
                "filter",
                "add",
                "dev",
                "eth0",
                "ingress",
                "pref",
                "100",
                "protocol",
                "ip",
                "u32",
                "match",
                "ip",
                "dst",
                "192.0.2.99/32",
                "flowid",
                "1:1",
            ],
        )
        .unwrap();

    // Idempotent.
    let again: Value =
        serde_json::from_str(&h0.up_with(&["--attach", "netlink", "--json"]).unwrap()).unwrap();
    assert_eq!(again["changed"], false, "{again}");
    assert_eq!(status(h0)["hooks"], before["hooks"]);

    // Auto keeps the mode of a datapath that is up; switching is refused.
    let auto: Value =
        serde_json::from_str(&h0.up_with(&["--attach", "auto", "--json"]).unwrap()).unwrap();
    assert_eq!(auto["changed"], false, "{auto}");
    let state = host_state(h0);
    let mut switch = h0.up_args();
    switch.extend(["--attach".to_string(), "tcx".to_string()]);
    let switch: Vec<&str> = switch.iter().map(String::as_str).collect();
    let err = one_line_error(&h0.dr_output(&switch).unwrap());
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let has_tcx = KernelVersion::parse(release.trim()).unwrap() >= kernel::TCX_SINCE;
    let expect = if has_tcx {
        "dr-ctl down"
    } else {
        "needs Linux 6.6"
    };
    assert!(err.contains(expect), "{err}");
    assert_eq!(host_state(h0), state, "a refused switch changes nothing");

    // Another build's `up` swaps the programs at the same filter, no packet lost.
    another_build::pretend(h0);
    let ping = traffic::ContinuousPing::start(&from.ns, to.addr, 300).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let up: Value =
        serde_json::from_str(&h0.up_with(&["--attach", "netlink", "--json"]).unwrap()).unwrap();
    assert_eq!(up["attached"]["dr_bridge_ingress"], "replaced", "{up}");
    assert_eq!(up["attached"]["dr_uplink_ingress"], "replaced", "{up}");
    ping.finish_without_loss().unwrap();
    let after = status(h0);
    for i in 0..2 {
        let (b, a) = (&before["hooks"][i], &after["hooks"][i]);
        assert_eq!(a["tc_handle"], b["tc_handle"], "the filter stays");
        assert_ne!(a["program_id"], b["program_id"], "the program is new");
    }
    let filters = ingress_filters(h0, "eth0");
    assert_eq!(
        filters.matches(DR_PREF).count(),
        uplink_filters.matches(DR_PREF).count(),
        "replaced, not added: {filters}"
    );

    // `down` removes dr's filters and leaves the other tool's.
    h0.dr(&["down"]).unwrap();
    let left = ingress_filters(h0, "eth0");
    assert!(!left.contains(DR_PREF), "dr filter left: {left}");
    assert!(
        left.contains("pref 100 u32"),
        "foreign filter removed: {left}"
    );
    assert!(!Path::new(&pin_dir(h0)).exists(), "pins left behind");
}

#[test]
fn a_kernel_below_the_minimum_is_refused_and_the_host_is_unchanged() {
    require_root();
    let c = Cluster::new("drold", 1, &dr_ctl_path()).expect("cluster");
    let h = &c.hosts[0];
    let up_args = h.up_args();
    let up_args: Vec<&str> = up_args.iter().map(String::as_str).collect();
    let before = host_state(h);
    let out = dr_on_kernel(h, "5.4.0-150-generic", &up_args);
    let err = one_line_error(&out);
    assert!(err.contains("kernel 5.4.0-150-generic is too old"), "{err}");
    assert!(
        err.contains("5.10") && err.contains("bpf_redirect_neigh"),
        "{err}"
    );
    assert_eq!(host_state(h), before, "the host changed");

    // TCX asked for on a kernel without it: refused, nothing changed either.
    let mut tcx = up_args.clone();
    tcx.extend(["--attach", "tcx"]);
    let err = one_line_error(&dr_on_kernel(h, "6.1.0-56-amd64", &tcx));
    assert!(err.contains("needs Linux 6.6"), "{err}");
    assert_eq!(host_state(h), before, "the host changed");

    // Automatic mode on 6.1 degrades to netlink and says so.
    let out = dr_on_kernel(h, "6.1.0-56-amd64", &up_args);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("TCX needs Linux 6.6"), "{stdout}");
    assert_eq!(status(h)["attach_mode"], "netlink");
}
