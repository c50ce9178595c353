//! Serves the metrics over HTTP/1.1 with hyper: `GET` and `HEAD` on
//! `/metrics` (and `/`), query strings ignored. A client gets 5 s to send
//! its request head and 30 s for the whole exchange; at most
//! [`MAX_CONNECTIONS`] are served at once (more wait in the listen backlog),
//! and a failed accept (e.g. out of file descriptors) is logged and retried,
//! never the end of the server. Readiness goes to systemd (`READY=1` on
//! `$NOTIFY_SOCKET`) once the socket listens.
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header, Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, info, warn};

use crate::error::{io_context, Result};

pub const MAX_CONNECTIONS: usize = 16;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed accept, so a persistent error (EMFILE) does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves until killed (`service::until_terminated` stops it); dr need not be up (see [`super::render`]).
pub async fn serve(addr: SocketAddr, peer_series: usize) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(io_context(format!("listening on {addr}")))?;
    info!("serving metrics on http://{addr}/metrics");
    crate::service::ready("the metrics server");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = Arc::clone(&slots)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!("accepting a metrics connection: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(
                    TokioIo::new(stream),
                    hyper::service::service_fn(move |request| respond(request, peer_series)),
                );
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Ok(())) => {}
                // A scanner or a dead client, not worth a warning each.
                Ok(Err(e)) => debug!("metrics connection from {client}: {e}"),
                Err(_) => debug!("metrics connection from {client}: timed out"),
            }
            drop(slot);
        });
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(CONTENT_TYPE),
    );
    response
}

/// hyper sends no body for `HEAD`, keeping the headers of the `GET` answer.
async fn respond(
    request: Request<Incoming>,
    peer_series: usize,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    if !matches!(request.uri().path(), "/metrics" | "/") {
        return Ok(text(StatusCode::NOT_FOUND, "try /metrics\n".into()));
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD\n".into());
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return Ok(response);
    }
    // Reading big maps makes syscalls per entry: off the runtime's only thread.
    Ok(
        match tokio::task::spawn_blocking(move || super::render(peer_series)).await {
            Ok(Ok(body)) => text(StatusCode::OK, body),
            Ok(Err(e)) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
    )
}
