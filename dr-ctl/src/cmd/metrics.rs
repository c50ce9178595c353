//! `dr-ctl metrics`: the counters in the Prometheus format (see `crate::metrics`).
use std::net::SocketAddr;

use crate::{error::Result, metrics, service};

#[derive(Clone, Copy, Debug, clap::Args)]
pub struct Args {
    /// Address to serve `GET /metrics` on, e.g. 127.0.0.1:9464; without it, print once.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// Per-peer series for at most this many peer subnets (4 series each,
    /// the first by subnet); 0 turns them off. Bounds the series count of
    /// large clusters; `dr_peer_series_omitted` says how many were left out.
    #[arg(long, value_name = "N", default_value_t = 100)]
    peer_series: usize,
}

/// Prints the metrics once, or serves them until SIGTERM or SIGINT.
pub async fn run(args: Args) -> Result<String> {
    match args.listen {
        None => metrics::render(args.peer_series),
        Some(addr) => service::until_terminated(metrics::serve(addr, args.peer_series))
            .await
            .map(|_| String::new()),
    }
}
