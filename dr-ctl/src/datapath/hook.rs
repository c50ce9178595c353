//! Which program goes where: each hook's interface, direction, pins and
//! netlink filter handle.
use aya::programs::{tc::TcHandle, TcAttachType};
use dr_common::program_names;

use crate::kernel::AttachMode;

/// The interface a hook's program is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The container bridge (docker0).
    Bridge,
    /// The interface toward the other hosts.
    Uplink,
}

impl Side {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Bridge => "bridge",
            Self::Uplink => "uplink",
        }
    }
}

/// Which program goes where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    BridgeIngress,
    UplinkIngress,
    BridgeEgress,
    UplinkEgress,
}

/// cls_bpf priority of every dr filter in netlink mode. Filters without an
/// explicit priority get 49152 and below from the kernel, and tools that
/// pick one (Cilium, Calico, tc users) pick small numbers; 0x6472 ("dr")
/// is far from both. A hook is identified by its interface and direction
/// plus this priority and its [`Hook::tc_handle`].
pub const TC_PRIORITY: u16 = 0x6472;

impl Hook {
    pub const ALL: [Hook; 4] = [
        Hook::BridgeIngress,
        Hook::UplinkIngress,
        Hook::BridgeEgress,
        Hook::UplinkEgress,
    ];

    pub const fn program(self) -> &'static str {
        match self {
            Hook::BridgeIngress => program_names::BRIDGE_INGRESS,
            Hook::UplinkIngress => program_names::UPLINK_INGRESS,
            Hook::BridgeEgress => program_names::BRIDGE_EGRESS,
            Hook::UplinkEgress => program_names::UPLINK_EGRESS,
        }
    }

    /// The part of its pins' names that names the hook.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::BridgeIngress => "bridge_ingress",
            Hook::UplinkIngress => "uplink_ingress",
            Hook::BridgeEgress => "bridge_egress",
            Hook::UplinkEgress => "uplink_egress",
        }
    }

    pub const fn side(self) -> Side {
        match self {
            Hook::BridgeIngress | Hook::BridgeEgress => Side::Bridge,
            Hook::UplinkIngress | Hook::UplinkEgress => Side::Uplink,
        }
    }

    pub const fn attach_type(self) -> TcAttachType {
        match self {
            Hook::BridgeIngress | Hook::UplinkIngress => TcAttachType::Ingress,
            Hook::BridgeEgress | Hook::UplinkEgress => TcAttachType::Egress,
        }
    }

    pub const fn direction(self) -> &'static str {
        match self.attach_type() {
            TcAttachType::Egress => "egress",
            _ => "ingress",
        }
    }

    /// The cls_bpf filter handle of this hook in netlink mode ("dr" and a
    /// number per hook, shown by `tc filter show` as `0x6472000N`).
    pub const fn tc_handle(self) -> TcHandle {
        let number = match self {
            Hook::BridgeIngress => 1,
            Hook::UplinkIngress => 2,
            Hook::BridgeEgress => 3,
            Hook::UplinkEgress => 4,
        };
        TcHandle::new(TC_PRIORITY, number)
    }

    /// What this hook's attachment leaves pinned in `mode`: the TCX link,
    /// or (netlink) the program the filter runs.
    pub fn pin(self, mode: AttachMode) -> String {
        match mode {
            AttachMode::Tcx => format!("link_{}", self.name()),
            AttachMode::Netlink => format!("prog_{}", self.name()),
        }
    }
}
