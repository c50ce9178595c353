//! The Debian package on a machine without build tools: a debootstrapped
//! Debian 12 root (`tests/src/debian_root.rs`) gets the package with
//! `dpkg -i`, and its /usr/bin/dr-ctl, run chrooted inside each emulated
//! host's network namespace, brings up the demo's topology: three hosts
//! whose containers ping each other and an external server through SNAT.
use std::path::PathBuf;

use dr_tests::{cluster::EXTERNAL_ADDR, debian_root::DebianRoot, require_root, traffic, Cluster};

/// Programs and packages of a build machine; none may be in the root.
const BUILD_TOOLS: [&str; 9] = [
    "rustc",
    "cargo",
    "rustup",
    "clang",
    "gcc",
    "cc",
    "llc",
    "ld.lld",
    "bpf-linker",
];
/// Compilers, linkers and headers (`gcc-12-base`, in every Debian, is
/// libgcc's runtime base, not a compiler).
const BUILD_PACKAGES: [&str; 8] = [
    "gcc",
    "gcc-12",
    "cpp",
    "cpp-12",
    "binutils",
    "libc6-dev",
    "make",
    "bpftool",
];
const BUILD_PACKAGE_PREFIXES: [&str; 5] = ["rustc", "cargo", "llvm", "clang", "lld"];

#[test]
fn the_package_runs_the_demo_topology_from_a_debian_root_without_build_tools() {
    require_root();
    let deb = PathBuf::from(
        std::env::var_os("DR_DEB")
            .expect("DR_DEB: run through `cargo xtask test`, which builds the package"),
    );
    let root = DebianRoot::new().unwrap();
    std::fs::copy(&deb, root.path().join("tmp/dr.deb")).unwrap();
    root.run("dpkg", &["--install", "/tmp/dr.deb"]).unwrap();
    let version = root.run("/usr/bin/dr-ctl", &["--version"]).unwrap();
    assert_eq!(
        version.trim(),
        format!("dr-ctl {}", env!("CARGO_PKG_VERSION"))
    );

    for tool in BUILD_TOOLS {
        let found = root
            .output("sh", &["-c", &format!("command -v {tool}")])
            .unwrap();
        assert!(
            !found.status.success(),
            "{tool} in the root: {}",
            String::from_utf8_lossy(&found.stdout)
        );
    }
    let packages = root
        .run("dpkg-query", &["--show", "--showformat", "${Package}\n"])
        .unwrap();
    let build: Vec<&str> = packages
        .lines()
        .filter(|p| {
            BUILD_PACKAGES.contains(p) || BUILD_PACKAGE_PREFIXES.iter().any(|b| p.starts_with(b))
        })
        .collect();
    assert!(build.is_empty(), "build packages in the root: {build:?}");
    assert!(packages.lines().any(|p| p == "dr"), "{packages}");

    // The demo's topology: three hosts with two containers each, a router
    // and an external server; every dr-ctl command is the root's binary.
    let dr_ctl = root.dr_ctl().unwrap();
    let mut c = Cluster::new("drdebroot", 3, &dr_ctl).unwrap();
    c.add_external().unwrap();
    c.up_all(2).unwrap();
    for (from, to) in [(0, 1), (1, 2), (2, 0)] {
        let (src, dst) = (&c.hosts[from], &c.hosts[to]);
        traffic::ping(&src.containers[1].ns, dst.containers[0].addr, 3).unwrap();
    }
    // Through dr's SNAT to the external server.
    traffic::ping(&c.hosts[2].containers[0].ns, EXTERNAL_ADDR, 3).unwrap();
    for host in &c.hosts {
        let status = host.status().unwrap();
        assert_eq!(status["problems"], serde_json::json!([]), "{status}");
        assert!(host.counter("to_peer").unwrap() >= 3, "{status}");
    }
    assert!(c.hosts[2].counter("nat_out").unwrap() >= 3);
}
