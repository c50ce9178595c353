//! The library's typed errors. Messages are one line and name the problem;
//! wrapped errors carry their cause as `source`, which the binary prints
//! after the message (`{:#}`), so messages do not repeat it.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: a command-line value or plan entry that fails validation.
    #[error("{0}")]
    Invalid(String),
    /// dr's own state or the system broke an assumption: not the input's fault.
    #[error("{0}")]
    Internal(String),
    #[error("no interface named {0:?} in this network namespace")]
    NoSuchInterface(String),
    #[error("dr is not up in this network namespace (run `dr-ctl up` first)")]
    NotUp,
    #[error("{0}")]
    Conflict(String),
    /// The running kernel lacks what was asked for.
    #[error("{0}")]
    Unsupported(String),
    #[error("netlink")]
    Netlink(#[from] rtnetlink::Error),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the eBPF object")]
    Ebpf(#[from] aya::EbpfError),
    #[error("eBPF program")]
    Program(#[from] aya::programs::ProgramError),
    #[error("eBPF link")]
    Link(#[from] aya::programs::links::LinkError),
    #[error("eBPF map")]
    Map(#[from] aya::maps::MapError),
    #[error("pinning under {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("{path}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an `io::Error` with what was being done.
pub fn io_context(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
