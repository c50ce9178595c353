//! The counters in the Prometheus text exposition format, printed once or
//! served on `GET /metrics`.
//!
//! The HTTP side is hand-written: one read-only endpoint on a socket the
//! operator chooses does not warrant a web framework, and tokio is already here.
use std::{fmt::Write as _, net::SocketAddr};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tracing::{info, warn};

use crate::{
    error::{io_context, Result},
    maps,
    node::{xdp_mode_name, NodeDir},
};

/// Escapes a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The current counters, read from the pinned maps.
pub fn render() -> Result<String> {
    // Without the lock: a scrape never waits behind a long `up`.
    let node = NodeDir::unlocked()?.open()?;
    let (maps, config) = (&node.maps, &node.config);
    let mut out = String::new();
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    let counters = maps.counters()?;
    family(
        &mut out,
        "dr_packets_total",
        "counter",
        "Packets by datapath verdict or drop reason.",
    );
    for (c, t) in &counters {
        let _ = writeln!(
            out,
            "dr_packets_total{{verdict=\"{}\"}} {}",
            c.name(),
            t.packets
        );
    }
    family(
        &mut out,
        "dr_bytes_total",
        "counter",
        "Bytes by datapath verdict or drop reason.",
    );
    for (c, t) in &counters {
        let _ = writeln!(
            out,
            "dr_bytes_total{{verdict=\"{}\"}} {}",
            c.name(),
            t.bytes
        );
    }
    let peers = maps.peers()?;
    family(
        &mut out,
        "dr_peer_packets_total",
        "counter",
        "Packets to and from each peer subnet.",
    );
    let mut bytes = String::new();
    for p in &peers {
        let t = maps.peer_traffic(p.slot)?;
        for (dir, tr) in [("to_peer", t.to_peer), ("from_peer", t.from_peer)] {
            let labels = format!(
                "subnet=\"{}\",via=\"{}\",direction=\"{dir}\"",
                label(&p.subnet.to_string()),
                p.via
            );
            let _ = writeln!(out, "dr_peer_packets_total{{{labels}}} {}", tr.packets);
            let _ = writeln!(bytes, "dr_peer_bytes_total{{{labels}}} {}", tr.bytes);
        }
    }
    family(
        &mut out,
        "dr_peer_bytes_total",
        "counter",
        "Bytes to and from each peer subnet.",
    );
    out += &bytes;
    let now = maps::monotonic_ns();
    let live = maps
        .nat_flows()?
        .iter()
        .filter(|(_, f)| !f.expired(now, &config.nat_timeouts))
        .count();
    for (name, help, value) in [
        ("dr_peers", "Peer subnets in the map.", peers.len() as u64),
        (
            "dr_nat_translations",
            "Live SNAT translations.",
            live as u64,
        ),
        (
            "dr_nat_table_size",
            "Capacity of each SNAT table.",
            u64::from(maps::nat_table_size(node.pins().path())?),
        ),
        (
            "dr_xdp_endpoints",
            "Local containers the XDP fast path knows.",
            maps.endpoints()?.len() as u64,
        ),
    ] {
        family(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
    family(
        &mut out,
        "dr_xdp_info",
        "gauge",
        "The XDP fast path's attach mode.",
    );
    let _ = writeln!(
        out,
        "dr_xdp_info{{mode=\"{}\"}} 1",
        xdp_mode_name(config.xdp_mode)
    );
    Ok(out)
}

/// Serves `GET /metrics` on `addr` until killed.
pub async fn serve(addr: SocketAddr) -> Result<()> {
    render()?; // fail now, not at the first scrape, when dr is not up
    let listener = TcpListener::bind(addr)
        .await
        .map_err(io_context(format!("listening on {addr}")))?;
    info!("serving metrics on http://{addr}/metrics");
    loop {
        let (mut conn, peer) = listener.accept().await.map_err(io_context("accepting"))?;
        tokio::spawn(async move {
            let mut head = Vec::with_capacity(1024);
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let (status, body) =
                if head.starts_with(b"GET /metrics ") || head.starts_with(b"GET / ") {
                    match render() {
                        Ok(text) => ("200 OK", text),
                        Err(e) => ("503 Service Unavailable", format!("{e}\n")),
                    }
                } else {
                    ("404 Not Found", "try /metrics\n".to_string())
                };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = conn.write_all(response.as_bytes()).await {
                warn!("metrics response to {peer}: {e}");
            }
        });
    }
}
