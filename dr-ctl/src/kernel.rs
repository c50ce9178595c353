//! What the datapath needs from the running kernel, and which TC attach mode
//! it gets. Everything here but [`running_release`] is pure, so the version
//! rules are unit-tested without booting kernels.
use std::fmt;

use serde::Serialize;

use crate::error::{io_context, Error, Result};

/// A kernel version as `uname -r` starts it (`6.1.0-56-amd64` → 6.1.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl KernelVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// Parses a kernel release (`uname -r`): `MAJOR.MINOR[.PATCH]` followed
    /// by anything that is not a digit (`-56-amd64`, `+`, `-rc3`, ...).
    pub fn parse(release: &str) -> Result<Self> {
        let bad = || {
            Error::Invalid(format!(
                "cannot read the kernel version from release {release:?}"
            ))
        };
        let end = release
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(release.len());
        let mut parts = release[..end].split('.');
        let mut number = |required: bool| -> Result<u32> {
            match parts.next() {
                Some(p) if !p.is_empty() => p.parse().map_err(|_| bad()),
                None if !required => Ok(0),
                _ => Err(bad()),
            }
        };
        let version = Self::new(number(true)?, number(true)?, number(false)?);
        Ok(version)
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// One kernel feature the datapath relies on, and the release that added it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub feature: &'static str,
    pub since: KernelVersion,
}

const fn needs(feature: &'static str, major: u32, minor: u32) -> Requirement {
    Requirement {
        feature,
        since: KernelVersion::new(major, minor, 0),
    }
}

/// What `dr-ctl up` needs (README's kernel table lists the same). The
/// minimum kernel is the newest of these.
pub const CORE_REQUIREMENTS: [Requirement; 13] = [
    needs("TC clsact qdisc with direct-action cls_bpf filters", 4, 5),
    needs("BPF_MAP_TYPE_PERCPU_ARRAY (counters)", 4, 6),
    needs("BPF_MAP_TYPE_LRU_HASH (SNAT tables)", 4, 10),
    needs(
        "BPF_MAP_TYPE_LPM_TRIE (peer subnets, SNAT exclusions)",
        4,
        11,
    ),
    needs("bpf_skb_change_tail (ICMP fragmentation needed)", 4, 9),
    needs(
        "bpf_fib_lookup (host traffic to peers, SNAT's route check)",
        4,
        18,
    ),
    needs("global data in .rodata (aya-log level, clock switch)", 5, 2),
    needs("bounded loops (SNAT port allocation)", 5, 3),
    needs("gso_size in __sk_buff (path MTU of GSO packets)", 5, 7),
    needs("BPF_MAP_TYPE_RINGBUF (aya-log event buffer)", 5, 8),
    needs(
        "BPF_MAP_TYPE_DEVMAP_HASH with bpf_devmap_val (XDP ports)",
        5,
        8,
    ),
    needs("XDP bpf_link (up --xdp)", 5, 9),
    needs(
        "bpf_redirect_neigh with a next hop (peer forwarding)",
        5,
        10,
    ),
];

/// TCX links (`bpf_mprog`): without them, TC programs attach over netlink.
pub const TCX_SINCE: KernelVersion = KernelVersion::new(6, 6, 0);

/// `bpf_ktime_get_coarse_ns`: without it, flows are timed by
/// `bpf_ktime_get_ns`, which costs more per packet.
pub const COARSE_CLOCK_SINCE: KernelVersion = KernelVersion::new(5, 11, 0);

/// The datapath's clock switch for the running kernel (`dr_common::clock`):
/// 1 for the coarse clock where it exists. A release that cannot be read
/// gets the clock every supported kernel has.
pub fn coarse_clock() -> u8 {
    running_release()
        .and_then(|release| KernelVersion::parse(&release))
        .is_ok_and(has_coarse_clock)
        .into()
}

/// Whether `version` has `bpf_ktime_get_coarse_ns`.
pub fn has_coarse_clock(version: KernelVersion) -> bool {
    version >= COARSE_CLOCK_SINCE
}

/// The oldest kernel dr runs on: the newest of [`CORE_REQUIREMENTS`].
pub fn minimum() -> KernelVersion {
    CORE_REQUIREMENTS
        .iter()
        .map(|r| r.since)
        .max()
        .expect("requirements are listed")
}

/// Refuses a kernel older than [`minimum`], naming it and what it lacks.
pub fn check_supported(release: &str) -> Result<KernelVersion> {
    let version = KernelVersion::parse(release)?;
    let missing: Vec<String> = CORE_REQUIREMENTS
        .iter()
        .filter(|r| r.since > version)
        .map(|r| format!("{} ({})", r.feature, r.since))
        .collect();
    if missing.is_empty() {
        return Ok(version);
    }
    Err(Error::Unsupported(format!(
        "kernel {release} is too old: dr needs Linux {} or newer; missing: {}",
        minimum(),
        missing.join(", ")
    )))
}

/// How TC programs are attached to the bridge and the uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AttachMode {
    /// Pinned TCX links (Linux 6.6+): replaced atomically with `bpf_link_update`.
    Tcx,
    /// clsact qdisc and cls_bpf direct-action filters at dr's own priority
    /// and handle, which outlive the process without a pin.
    Netlink,
}

impl AttachMode {
    pub const fn name(self) -> &'static str {
        match self {
            AttachMode::Tcx => "tcx",
            AttachMode::Netlink => "netlink",
        }
    }
}

/// The attach mode `up` uses, and why when it is not the one asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachChoice {
    pub mode: AttachMode,
    /// Set when the kernel made `up` fall back from TCX.
    pub note: Option<String>,
}

/// Chooses the attach mode: `requested` (None: automatic) on a kernel of
/// `version`, where dr is already attached in `current` mode if any. Auto
/// keeps the current mode, else takes TCX where the kernel has it. A switch
/// of mode on a datapath that is up is refused: it would need a moment
/// with both or neither attached.
pub fn choose_attach(
    requested: Option<AttachMode>,
    current: Option<AttachMode>,
    version: KernelVersion,
) -> Result<AttachChoice> {
    let has_tcx = version >= TCX_SINCE;
    if requested == Some(AttachMode::Tcx) && !has_tcx {
        return Err(Error::Unsupported(format!(
            "--attach tcx needs Linux {TCX_SINCE} or newer (this kernel is {version}); use --attach netlink or auto"
        )));
    }
    if let (Some(want), Some(have)) = (requested, current) {
        if want != have {
            return Err(Error::Conflict(format!(
                "dr is attached in {} mode here; switching to {} needs `dr-ctl down` first",
                have.name(),
                want.name()
            )));
        }
    }
    Ok(match requested.or(current) {
        Some(mode) => AttachChoice { mode, note: None },
        None if has_tcx => AttachChoice {
            mode: AttachMode::Tcx,
            note: None,
        },
        None => AttachChoice {
            mode: AttachMode::Netlink,
            note: Some(format!(
                "TCX needs Linux {TCX_SINCE}, this kernel is {version}: attached with netlink (clsact + cls_bpf)"
            )),
        },
    })
}

/// Environment variable that stands in for `uname -r`, so tests can show
/// what `up` does on a kernel this machine does not run.
pub const RELEASE_OVERRIDE_ENV: &str = "DR_KERNEL_RELEASE";

/// The running kernel's release, or [`RELEASE_OVERRIDE_ENV`]'s value.
pub fn running_release() -> Result<String> {
    if let Some(release) = std::env::var_os(RELEASE_OVERRIDE_ENV) {
        return Ok(release.to_string_lossy().into_owned());
    }
    let path = "/proc/sys/kernel/osrelease";
    let text = std::fs::read_to_string(path).map_err(io_context(format!("reading {path}")))?;
    Ok(text.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_as_distributions_spell_them() {
        for (release, want) in [
            ("6.1.0-56-amd64", KernelVersion::new(6, 1, 0)),
            ("5.15.0-122-generic", KernelVersion::new(5, 15, 0)),
            ("5.14.0-427.13.1.el9_4.x86_64", KernelVersion::new(5, 14, 0)),
            ("6.18.44-fc-v657", KernelVersion::new(6, 18, 44)),
            ("6.6", KernelVersion::new(6, 6, 0)),
            ("6.10.0-rc3+", KernelVersion::new(6, 10, 0)),
            ("4.19.0+", KernelVersion::new(4, 19, 0)),
        ] {
            assert_eq!(KernelVersion::parse(release).unwrap(), want, "{release}");
        }
        for bad in ["", "six", "6", "6.", ".1", "-6.1"] {
            assert!(KernelVersion::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn versions_order_numerically() {
        assert!(KernelVersion::new(5, 10, 0) > KernelVersion::new(5, 9, 99));
        assert!(KernelVersion::new(6, 1, 0) < KernelVersion::new(6, 10, 0));
    }

    #[test]
    fn the_minimum_is_5_10_and_older_kernels_are_refused_naming_what_is_missing() {
        assert_eq!(minimum(), KernelVersion::new(5, 10, 0));
        assert!(check_supported("5.10.0-30-amd64").is_ok());
        assert!(check_supported("6.1.0-56-amd64").is_ok());
        let err = check_supported("5.4.0-150-generic")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kernel 5.4.0-150-generic is too old"), "{err}");
        assert!(err.contains("Linux 5.10 or newer"), "{err}");
        assert!(err.contains("bpf_redirect_neigh"), "{err}");
        assert!(err.contains("RINGBUF"), "{err}");
        assert!(!err.contains("LPM_TRIE"), "5.4 has LPM tries: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
        assert!(check_supported("garbage").is_err());
    }

    #[test]
    fn auto_takes_tcx_from_6_6_and_netlink_below_with_a_note() {
        let v61 = KernelVersion::new(6, 1, 0);
        let v66 = KernelVersion::new(6, 6, 0);
        let auto_new = choose_attach(None, None, v66).unwrap();
        assert_eq!(auto_new.mode, AttachMode::Tcx);
        assert_eq!(auto_new.note, None);
        let auto_old = choose_attach(None, None, v61).unwrap();
        assert_eq!(auto_old.mode, AttachMode::Netlink);
        assert!(auto_old.note.unwrap().contains("TCX needs Linux 6.6"));
        // Forcing netlink on a new kernel is allowed, and auto keeps it.
        let forced = choose_attach(Some(AttachMode::Netlink), None, v66).unwrap();
        assert_eq!(forced.mode, AttachMode::Netlink);
        let kept = choose_attach(None, Some(AttachMode::Netlink), v66).unwrap();
        assert_eq!(kept.mode, AttachMode::Netlink);
    }

    #[test]
    fn tcx_below_6_6_and_mode_switches_are_refused() {
        let v61 = KernelVersion::new(6, 1, 0);
        let v618 = KernelVersion::new(6, 18, 0);
        let err = choose_attach(Some(AttachMode::Tcx), None, v61).unwrap_err();
        assert!(err.to_string().contains("--attach tcx needs Linux 6.6"));
        let err = choose_attach(Some(AttachMode::Netlink), Some(AttachMode::Tcx), v618)
            .unwrap_err()
            .to_string();
        assert!(err.contains("attached in tcx mode"), "{err}");
        assert!(err.contains("dr-ctl down"), "{err}");
        let same = choose_attach(Some(AttachMode::Tcx), Some(AttachMode::Tcx), v618).unwrap();
        assert_eq!(same.mode, AttachMode::Tcx);
    }

    #[test]
    fn the_coarse_clock_from_5_11() {
        let at = |release| has_coarse_clock(KernelVersion::parse(release).unwrap());
        assert!(!at("5.10.0-30-amd64"));
        assert!(at("5.11.0"));
        assert!(at("6.1.0-56-amd64"));
    }
}
