//! The Debian package (`cargo xtask package`, passed in as `$DR_DEB` by
//! `cargo xtask test`): installs on this machine, ships what it should,
//! its units verify, and `dpkg -r` / `dpkg -P` remove it cleanly. It never
//! enables or starts a unit, and leaves the machine as it found it, also
//! when it fails.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use dr_tests::require_root;

const PACKAGE: &str = "dr";
const UNITS: [&str; 5] = [
    "dr.service",
    "dr-agent.service",
    "dr-metrics.service",
    "dr-sync.service",
    "dr-sync.timer",
];
/// Above this `systemd-analyze security` exposure (0 safest, 10 least) a
/// unit has lost its hardening; README lists the actual scores.
const MAX_EXPOSURE: f64 = 4.5;

fn deb() -> PathBuf {
    let path = PathBuf::from(
        std::env::var_os("DR_DEB")
            .expect("DR_DEB: run through `cargo xtask test`, which builds the package"),
    );
    assert!(path.is_file(), "{} is not a file", path.display());
    path
}

fn output(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

/// Runs a command, failing the test on a non-zero exit; returns stdout.
fn run(program: &str, args: &[&str]) -> String {
    let out = output(program, args);
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn installed() -> bool {
    let out = output("dpkg-query", &["-W", "-f=${Status}", PACKAGE]);
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("installed")
}

fn known_to_dpkg() -> bool {
    output("dpkg-query", &["-W", PACKAGE]).status.success()
}

fn which_dr_ctl() -> Option<String> {
    let out = output("sh", &["-c", "command -v dr-ctl"]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Purges the package when dropped, so a failed assertion leaves nothing behind.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        if known_to_dpkg() {
            let _ = output("dpkg", &["--purge", PACKAGE]);
        }
    }
}

/// The files the package ships (no directories), as absolute paths.
fn shipped_files(deb: &Path) -> Vec<PathBuf> {
    run("dpkg-deb", &["--contents", deb.to_str().unwrap()])
        .lines()
        .filter(|l| l.starts_with('-'))
        .map(|l| {
            let path = l.split_whitespace().last().unwrap();
            PathBuf::from(path.trim_start_matches('.'))
        })
        .collect()
}

fn unit_path(unit: &str) -> PathBuf {
    PathBuf::from("/usr/lib/systemd/system").join(unit)
}

#[test]
fn the_package_installs_verifies_and_removes_cleanly() {
    require_root();
    let deb = deb();
    let deb_str = deb.to_str().unwrap();
    assert!(
        !known_to_dpkg(),
        "the {PACKAGE} package is already on this machine: the test will not replace it"
    );
    let files = shipped_files(&deb);
    for f in &files {
        assert!(
            !f.exists(),
            "{} exists outside the package: the test will not overwrite it",
            f.display()
        );
    }
    let which_before = which_dr_ctl();
    let _purge = Purge;

    run("dpkg", &["--install", deb_str]);
    assert!(installed());
    for f in &files {
        assert!(f.is_file(), "{} not installed", f.display());
    }
    let version = run("/usr/bin/dr-ctl", &["--version"]);
    assert_eq!(
        version.trim(),
        format!("dr-ctl {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(run("/usr/bin/dr-ctl", &["--help"]).contains("peer"));
    // Statically linked (`cargo xtask package` builds with +crt-static): no
    // interpreter, no shared library, so any glibc (or none) will do, and
    // the package depends on nothing.
    let file = run("file", &["-L", "/usr/bin/dr-ctl"]);
    assert!(file.contains("static-pie linked"), "{file}");
    let ldd = output("ldd", &["/usr/bin/dr-ctl"]);
    assert!(
        String::from_utf8_lossy(&ldd.stdout).contains("statically linked"),
        "{ldd:?}"
    );
    let depends = run("dpkg-deb", &["--field", deb_str, "Depends"]);
    assert_eq!(depends.trim(), "", "a static binary needs no package");
    // Completions and man pages generated from the CLI, for every subcommand.
    let bash = std::fs::read_to_string("/usr/share/bash-completion/completions/dr-ctl").unwrap();
    assert!(
        bash.contains("peer") && bash.contains("--cluster-cidr"),
        "{bash}"
    );
    assert!(Path::new("/usr/share/zsh/vendor-completions/_dr-ctl").is_file());
    assert!(Path::new("/usr/share/fish/vendor_completions.d/dr-ctl.fish").is_file());
    for page in ["dr-ctl", "dr-ctl-up", "dr-ctl-peer-add", "dr-ctl-metrics"] {
        let roff = run(
            "sh",
            &["-c", &format!("zcat /usr/share/man/man1/{page}.1.gz")],
        );
        assert!(roff.contains(".TH"), "{page}: {roff}");
    }
    // The plan and the options file are conffiles: kept on remove, gone on purge.
    let conffiles = run("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE]);
    for conffile in ["/etc/dr/cluster.toml", "/etc/default/dr"] {
        assert!(
            conffiles.contains(conffile),
            "{conffile} not a conffile: {conffiles}"
        );
    }
    // Installed, not enabled (the plan or the agent's options come first).
    let mut unit_paths = Vec::new();
    for unit in UNITS {
        let path = unit_path(unit);
        assert!(path.is_file(), "{} not installed", path.display());
        let enabled = output("systemctl", &["is-enabled", unit]);
        let state = String::from_utf8_lossy(&enabled.stdout);
        assert!(
            matches!(state.trim(), "disabled" | "static"),
            "{unit} is {state}"
        );
        unit_paths.push(path.to_str().unwrap().to_string());
    }
    let paths: Vec<&str> = unit_paths.iter().map(String::as_str).collect();
    let verify = output("systemd-analyze", &[&["verify"], paths.as_slice()].concat());
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    for unit in UNITS.iter().filter(|u| u.ends_with(".service")) {
        let path = unit_path(unit);
        let report = output(
            "systemd-analyze",
            &[
                "security",
                "--offline=true",
                "--no-pager",
                path.to_str().unwrap(),
            ],
        );
        let text = String::from_utf8_lossy(&report.stdout);
        let exposure: f64 = text
            .lines()
            .find_map(|l| {
                l.split_once("Overall exposure level for ")?
                    .1
                    .split_once(": ")
            })
            .and_then(|(_, score)| score.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level for {unit}: {text}"));
        eprintln!("systemd-analyze security {unit}: {exposure}");
        assert!(
            exposure <= MAX_EXPOSURE,
            "{unit}: exposure {exposure}\n{text}"
        );
    }
    // Errors only: README explains the warnings lintian leaves.
    run(
        "lintian",
        &["--fail-on", "error", "--no-tag-display-limit", deb_str],
    );

    run("dpkg", &["--remove", PACKAGE]);
    assert!(!installed());
    assert!(!Path::new("/usr/bin/dr-ctl").exists());
    assert!(!unit_path("dr.service").exists());
    assert!(
        Path::new("/etc/dr/cluster.toml").is_file(),
        "remove took the plan"
    );
    assert_eq!(which_dr_ctl(), which_before);

    run("dpkg", &["--purge", PACKAGE]);
    assert!(!known_to_dpkg());
    assert!(!Path::new("/etc/dr").exists(), "purge left /etc/dr");
    assert!(!Path::new("/etc/default/dr").exists());
    for f in &files {
        assert!(!f.exists(), "{} left after purge", f.display());
    }
    // deb-systemd-helper's records of the units (written by postinst).
    for dir in ["enabled", "masked"] {
        let dir = Path::new("/var/lib/systemd").join(format!("deb-systemd-helper-{dir}"));
        for entry in std::fs::read_dir(&dir).into_iter().flatten() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                !UNITS.iter().any(|u| name.starts_with(u)),
                "{name} left in {}",
                dir.display()
            );
        }
    }
    assert_eq!(which_dr_ctl(), which_before);
}
