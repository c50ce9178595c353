//! The shipped units' capability bounding sets are enough for what they
//! run: each command runs under `setpriv` with exactly the unit's set and no
//! new privileges, as systemd would start it, in a fresh network namespace.
use std::{path::Path, process::Command};

use dr_tests::{dr_ctl_path, require_root};

/// `CapabilityBoundingSet=` of a dist/ unit, in setpriv's form (`-all,+bpf,...`).
fn bounding_set(unit: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dist")
        .join(unit);
    let text = std::fs::read_to_string(&path).unwrap();
    let caps = text
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap_or_else(|| panic!("{unit} has no CapabilityBoundingSet="));
    let mut set = String::from("-all");
    for cap in caps.split_whitespace() {
        set += &format!(",+{}", cap.trim_start_matches("CAP_").to_lowercase());
    }
    set
}

#[test]
fn the_units_capabilities_are_enough_for_their_commands() {
    require_root();
    // The datapath units' set for bringing dr up, peers, sync, gc and down;
    // the metrics unit's (smaller) set for reading the maps.
    let script = r#"
set -e
ip link add dru0 type veth peer name dru1
ip addr add 192.0.2.10/24 dev dru0
ip link set dru0 up; ip link set dru1 up
# Whatever fails, dr goes down with the namespace's pins.
trap '"$DR_CTL" down >/dev/null 2>&1 || true' EXIT
run() { caps=$1; shift; setpriv --bounding-set "$caps" --inh-caps -all --no-new-privs "$DR_CTL" "$@"; }
run "$DATAPATH" up --bridge drub0 --subnet 10.77.0.1/24 --uplink dru0 --cluster-cidr 10.77.0.0/16 >/dev/null
run "$DATAPATH" peer add 10.77.1.0/24 via 192.0.2.11 >/dev/null
run "$DATAPATH" sync >/dev/null
run "$DATAPATH" nat gc >/dev/null
run "$METRICS" metrics | grep -qx "dr_peers 1"
run "$DATAPATH" status >/dev/null
run "$DATAPATH" down >/dev/null
"#;
    // unshare --net keeps the host's mount namespace (and bpffs), as systemd does.
    let out = Command::new("unshare")
        .args(["--net", "sh", "-c", script])
        .env("DR_CTL", dr_ctl_path())
        .env("DATAPATH", bounding_set("dr.service"))
        .env("METRICS", bounding_set("dr-metrics.service"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
