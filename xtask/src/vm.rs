//! The VM subset: integration tests run on Debian 12's stock 6.1 kernel (no
//! TCX: dr attaches over netlink) in QEMU, through scripts/vm.sh.
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::{run, workspace_root};

/// (test target, test) pairs: forwarding (through docker0, and straight
/// into learned containers: `bpf_redirect_peer` changed after 6.1), SNAT,
/// published ports translated by dr (TC, and XDP: every program loaded),
/// restart safety, down and cleanup, netlink attach mode. Each takes 1-2
/// minutes in the emulated guest, so the subset is chosen to keep CI well
/// inside its time limit.
const VM_TESTS: [(&str, &str); 8] = [
    (
        "forwarding",
        "ping_tcp_udp_across_three_hosts_without_routes_or_forwarding",
    ),
    (
        "forwarding",
        "peer_traffic_between_learned_containers_skips_docker0",
    ),
    (
        "nat",
        "external_server_sees_the_host_address_for_tcp_udp_and_ping",
    ),
    (
        "inbound",
        "published_ports_answer_external_clients_and_peer_hosts",
    ),
    ("inbound", "published_ports_answer_with_the_xdp_fast_path"),
    (
        "restart",
        "up_with_another_build_swaps_programs_in_place_without_a_gap",
    ),
    ("cli", "down_removes_everything_up_created_and_nothing_else"),
    (
        "kernel",
        "netlink_mode_is_persistent_idempotent_replaced_in_place_and_removed_exactly",
    ),
];

/// Builds the test binaries of [`VM_TESTS`] and returns each target's executable.
fn build_test_binaries() -> Result<Vec<(String, String)>> {
    let mut args = vec![
        "test",
        "--no-run",
        "--message-format=json",
        "-p",
        "dr-tests",
    ];
    let mut targets: Vec<&str> = VM_TESTS.iter().map(|(target, _)| *target).collect();
    targets.dedup();
    for target in targets {
        args.extend(["--test", target]);
    }
    eprintln!("+ cargo {}", args.join(" "));
    let out = Command::new("cargo")
        .args(&args)
        .current_dir(workspace_root())
        .output()
        .context("running cargo")?;
    if !out.status.success() {
        bail!(
            "building the VM subset's tests failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if let (Some(name), Some(exe)) =
            (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            if msg["target"]["kind"][0] == "test" {
                binaries.push((name.to_string(), exe.to_string()));
            }
        }
    }
    Ok(binaries)
}

/// The guest's script: every test of the subset, one at a time (two
/// emulated vCPUs), all of them even after a failure; fails if any did.
fn guest_script(dr_ctl: &str, binaries: &[(String, String)]) -> Result<String> {
    let root = workspace_root();
    let mut script = format!(
        "export DR_CTL='{dr_ctl}'\ncd '{}'\nfailed=0\n",
        root.join("tests").display()
    );
    for (target, test) in VM_TESTS {
        let exe = binaries
            .iter()
            .find(|(name, _)| name == target)
            .map(|(_, exe)| exe)
            .with_context(|| format!("no test binary for {target}"))?;
        script += &format!(
            "echo '== vm: {target}::{test}'\n'{exe}' --exact '{test}' --test-threads=1 || failed=1\n"
        );
    }
    script += "exit $failed\n";
    Ok(script)
}

/// Runs the VM subset; fails if the guest's tests failed or it did not finish.
pub fn run_subset(dr_ctl: &str) -> Result<()> {
    let binaries = build_test_binaries()?;
    let dir = workspace_root().join("target").join("vm");
    std::fs::create_dir_all(&dir).context("creating target/vm")?;
    let script = dir.join("tests.sh");
    std::fs::write(&script, guest_script(dr_ctl, &binaries)?)
        .context("writing target/vm/tests.sh")?;
    let script = script.to_str().context("non-UTF-8 path")?;
    run("bash", &["scripts/vm.sh", "bash", script], &[])
}
