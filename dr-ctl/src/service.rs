//! dr-ctl's long-running commands (`agent`, `metrics --listen`) as systemd
//! `Type=notify` services: `READY=1` once their work is ready (the agent has
//! reconciled the peer map with etcd, the metrics server listens), and
//! `STOPPING=1` when SIGTERM (systemd's stop) or SIGINT ends them. Without
//! `$NOTIFY_SOCKET`, outside systemd, nothing is sent (sd-notify).
use std::future::Future;

use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::error::{io_context, Result};

/// Tells systemd that `what` is ready: units ordered after it start now.
pub fn ready(what: &str) {
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready]) {
        warn!("telling systemd {what} is ready: {e}");
    }
}

/// Runs `work` until it ends or SIGTERM/SIGINT arrives; on a signal tells
/// systemd it is stopping and returns `Ok(None)`, so that a stop exits 0.
pub async fn until_terminated<T>(work: impl Future<Output = Result<T>>) -> Result<Option<T>> {
    let handler = |kind| signal(kind).map_err(io_context("installing a signal handler"));
    let (mut term, mut int) = (
        handler(SignalKind::terminate())?,
        handler(SignalKind::interrupt())?,
    );
    tokio::select! {
        done = work => return done.map(Some),
        _ = term.recv() => info!("SIGTERM: stopping"),
        _ = int.recv() => info!("SIGINT: stopping"),
    }
    if let Err(e) = sd_notify::notify(&[NotifyState::Stopping]) {
        warn!("telling systemd dr-ctl is stopping: {e}");
    }
    Ok(None)
}
