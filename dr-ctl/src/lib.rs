//! dr-ctl: the control plane of dr. See ARCHITECTURE.md.
pub mod agent;
pub mod bpffs;
pub mod cli;
pub mod cmd;
pub mod datapath;
pub mod docker_config;
pub mod error;
pub mod kernel;
pub mod logging;
pub mod maps;
pub mod metrics;
pub mod migrate;
pub mod nat_plan;
pub mod netlink;
pub mod node;
pub mod plan;
pub mod subnet;
