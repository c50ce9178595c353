//! `dr-ctl metrics`: the counters in the Prometheus format (see `crate::metrics`).
use std::net::SocketAddr;

use crate::{error::Result, metrics};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to serve `GET /metrics` on, e.g. 127.0.0.1:9464; without it, print once.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
}

/// Prints the metrics once, or serves them until killed.
pub async fn run(args: Args) -> Result<String> {
    match args.listen {
        None => metrics::render(),
        Some(addr) => metrics::serve(addr).await.map(|()| String::new()),
    }
}
