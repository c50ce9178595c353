//! Which program goes where: each hook's interface, how it attaches (TC in
//! a direction, or XDP), its pins and netlink filter handle.
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
    /// The XDP fast path (`up --xdp`).
    UplinkXdp,
}

/// How a hook's program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A TC program, in [`AttachMode`], in this direction.
    Tc(TcAttachType),
    /// An XDP program, always through a pinned link.
    Xdp,
}

/// cls_bpf priority of every dr filter in netlink mode. Filters without an
/// explicit priority get 49152 and below from the kernel, and tools that
/// pick one (Cilium, Calico, tc users) pick small numbers; 0x6472 ("dr")
/// is far from both. A hook is identified by its interface and direction
/// plus this priority and its [`Hook::tc_handle`].
pub const TC_PRIORITY: u16 = 0x6472;

impl Hook {
    /// Every hook, in the order `up` attaches them (`down` detaches in
    /// reverse): XDP last, so that it only starts delivering to containers
    /// once the TC programs handle what it passes.
    pub const ALL: [Hook; 5] = [
        Hook::BridgeIngress,
        Hook::UplinkIngress,
        Hook::BridgeEgress,
        Hook::UplinkEgress,
        Hook::UplinkXdp,
    ];

    /// The TC hooks: the ones [`AttachMode`] applies to, and the ones
    /// `status` lists (it reports XDP by its mode).
    pub const TC: [Hook; 4] = [
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
            Hook::UplinkXdp => program_names::UPLINK_XDP,
        }
    }

    /// The part of its pins' names that names the hook.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::BridgeIngress => "bridge_ingress",
            Hook::UplinkIngress => "uplink_ingress",
            Hook::BridgeEgress => "bridge_egress",
            Hook::UplinkEgress => "uplink_egress",
            Hook::UplinkXdp => "uplink_xdp",
        }
    }

    pub const fn side(self) -> Side {
        match self {
            Hook::BridgeIngress | Hook::BridgeEgress => Side::Bridge,
            Hook::UplinkIngress | Hook::UplinkEgress | Hook::UplinkXdp => Side::Uplink,
        }
    }

    pub const fn kind(self) -> Kind {
        match self {
            Hook::BridgeIngress | Hook::UplinkIngress => Kind::Tc(TcAttachType::Ingress),
            Hook::BridgeEgress | Hook::UplinkEgress => Kind::Tc(TcAttachType::Egress),
            Hook::UplinkXdp => Kind::Xdp,
        }
    }

    pub const fn direction(self) -> &'static str {
        match self.kind() {
            Kind::Tc(TcAttachType::Egress) => "egress",
            _ => "ingress",
        }
    }

    /// The cls_bpf filter handle of this hook in netlink mode ("dr" and a
    /// number per hook, shown by `tc filter show` as `0x6472000N`). XDP
    /// has no filter: its number is never used.
    pub const fn tc_handle(self) -> TcHandle {
        let number = match self {
            Hook::BridgeIngress => 1,
            Hook::UplinkIngress => 2,
            Hook::BridgeEgress => 3,
            Hook::UplinkEgress => 4,
            Hook::UplinkXdp => 5,
        };
        TcHandle::new(TC_PRIORITY, number)
    }

    /// What this hook's attachment leaves pinned in `mode`: the TCX or XDP
    /// link, or (a TC hook in netlink mode) the program the filter runs.
    pub fn pin(self, mode: AttachMode) -> String {
        match (self.kind(), mode) {
            (Kind::Tc(_), AttachMode::Netlink) => format!("prog_{}", self.name()),
            _ => format!("link_{}", self.name()),
        }
    }
}
