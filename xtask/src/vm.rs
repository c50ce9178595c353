//! The VM subset: integration tests run on Debian 12's stock 6.1 kernel (no
//! TCX: dr attaches over netlink) in QEMU, through scripts/vm.sh.
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::{run, workspace_root};

/// (test target, test) pairs: forwarding (through docker0, and straight
/// into learned containers: `bpf_redirect_peer` changed after 6.1), SNAT,
/// published ports translated by dr (TC, and XDP: every program loaded),
/// restart safety, down and cleanup, netlink attach mode, and every
/// program's verified instructions (6.1's verifier prunes less). Each takes
/// 1 to 6 minutes in the emulated guest, so the subset is chosen to keep CI
/// well inside its time limit.
const VM_TESTS: [(&str, &str); 9] = [
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
    (
        "datapath",
        "verifier::every_program_verifies_well_within_the_kernels_limit",
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

/// Lanes of the guest's script, run side by side: the guest's two vCPUs
/// are two host threads under TCG, and one test at a time kept one of
/// them (and one of the host's two CPUs) idle most of the time.
const LANES: usize = 2;

/// The guest's script: the subset's tests dealt round-robin into
/// [`LANES`] lanes that run side by side, each one test at a time, all of
/// them even after a failure (each line prefixed with its lane); fails if
/// any did.
fn guest_script(dr_ctl: &str, binaries: &[(String, String)]) -> Result<String> {
    let root = workspace_root();
    let mut script = format!(
        "set -o pipefail\nexport DR_CTL='{dr_ctl}'\ncd '{}'\n",
        root.join("tests").display()
    );
    let mut lanes = vec![String::new(); LANES];
    for (k, (target, test)) in VM_TESTS.iter().enumerate() {
        let exe = binaries
            .iter()
            .find(|(name, _)| name == target)
            .map(|(_, exe)| exe)
            .with_context(|| format!("no test binary for {target}"))?;
        lanes[k % LANES] += &format!(
            "  echo '== vm: {target}::{test}'\n  '{exe}' --exact '{test}' --test-threads=1 || failed=1\n"
        );
    }
    for (lane, tests) in lanes.iter().enumerate() {
        script += &format!(
            "lane{lane}() {{\n  failed=0\n{tests}  return $failed\n}}\n\
             lane{lane} 2>&1 | sed -u 's/^/[lane {lane}] /' &\npid{lane}=$!\n"
        );
    }
    script += "failed=0\n";
    for lane in 0..LANES {
        script += &format!("wait $pid{lane} || failed=1\n");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_test_runs_once_in_a_lane_and_every_lane_is_waited_for() {
        let binaries: Vec<(String, String)> = VM_TESTS
            .iter()
            .map(|(target, _)| (target.to_string(), format!("/bin/{target}")))
            .collect();
        let script = guest_script("/bin/dr-ctl", &binaries).unwrap();
        for (target, test) in VM_TESTS {
            let run = format!("'/bin/{target}' --exact '{test}' --test-threads=1 || failed=1");
            assert_eq!(
                script.matches(&run).count(),
                1,
                "{target}::{test}\n{script}"
            );
        }
        for lane in 0..LANES {
            assert!(
                script.contains(&format!("wait $pid{lane} || failed=1")),
                "{script}"
            );
        }
        assert!(script.ends_with("exit $failed\n"));
    }
}
