//! Keeping the registration's lease alive, on a task of its own.
use std::time::Duration;

use etcd_client::Client;
use tracing::warn;

use super::etcd_err;

/// Renews `lease` every third of its TTL until etcd says it is gone, then
/// reports on `lost`. Runs on its own task: neither a stalled etcd nor a
/// reconcile waiting on the pin lock delays it. Each call is bounded, so a
/// stalled etcd is retried rather than waited on.
pub(super) async fn keep_alive(
    mut client: Client,
    lease: i64,
    ttl: i64,
    lost: tokio::sync::oneshot::Sender<()>,
) {
    let period = Duration::from_millis((ttl as u64 * 1000 / 3).max(200));
    loop {
        // Opening the keepalive stream renews the lease once.
        match tokio::time::timeout(period, client.lease_keep_alive(lease)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                // "Gone" is an error like any other: ask etcd what it means.
                let left =
                    tokio::time::timeout(period, client.lease_time_to_live(lease, None)).await;
                if let Ok(Ok(left)) = left {
                    if left.ttl() <= 0 {
                        let _ = lost.send(());
                        return;
                    }
                }
                warn!("renewing the lease: {}", etcd_err(e));
            }
            Err(_) => warn!("renewing the lease: no answer from etcd in {period:?}"),
        }
        tokio::time::sleep(period).await;
    }
}

/// Aborts the keepalive when the session ends (the next one decides whether
/// the lease is still worth keeping).
pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
