//! Bounded traffic between namespaces: ping, a TCP transfer, a UDP exchange.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::netns::Netns;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// `count` pings from `from` to `to`; Ok only if every one is answered.
pub fn ping(from: &Netns, to: Ipv4Addr, count: u32) -> Result<()> {
    let out = from.exec_output(
        "ping",
        &[
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "1",
            &to.to_string(),
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.contains(&format!("{count} received")),
        "ping {} -> {to}: {}",
        from.name,
        text.lines().rev().nth(1).unwrap_or("no output")
    );
    Ok(())
}

/// Whether a single ping from `from` to `to` gets an answer within a second.
pub fn reachable(from: &Netns, to: Ipv4Addr) -> Result<bool> {
    let out = from.exec_output("ping", &["-n", "-q", "-c", "1", "-W", "1", &to.to_string()])?;
    Ok(out.status.success())
}

/// A deterministic byte pattern, so corruption is detected.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 11)) as u8
}

/// Sends `bytes` over TCP from `client` to a server in `server` at `addr`;
/// the server checks every byte and reports the count back.
/// Returns the elapsed time.
pub fn tcp_transfer(
    client: &Netns,
    server: &Netns,
    addr: Ipv4Addr,
    bytes: usize,
) -> Result<Duration> {
    let listener = server.enter(|| TcpListener::bind((addr, 0)))??;
    let port = listener.local_addr()?.port();
    let receiver = std::thread::spawn(move || -> Result<u64> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut seen = 0usize;
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            for (k, b) in buf[..n].iter().enumerate() {
                if *b != pattern(seen + k) {
                    bail!("byte {} corrupted", seen + k);
                }
            }
            seen += n;
        }
        conn.write_all(&(seen as u64).to_be_bytes())?;
        Ok(seen as u64)
    });
    let start = Instant::now();
    let target = SocketAddr::from((addr, port));
    let mut conn = client
        .enter(|| TcpStream::connect_timeout(&target, IO_TIMEOUT))?
        .with_context(|| format!("connecting {} -> {target}", client.name))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut sent = 0;
    while sent < bytes {
        let n = (bytes - sent).min(1 << 20);
        let chunk: Vec<u8> = (sent..sent + n).map(pattern).collect();
        conn.write_all(&chunk)?;
        sent += n;
    }
    conn.shutdown(std::net::Shutdown::Write)?;
    let mut ack = [0u8; 8];
    conn.read_exact(&mut ack)
        .context("reading the server's byte count")?;
    let elapsed = start.elapsed();
    let received = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    ensure!(
        received == bytes as u64,
        "sent {bytes} bytes, server got {received}"
    );
    ensure!(
        u64::from_be_bytes(ack) == bytes as u64,
        "bad acknowledgement"
    );
    Ok(elapsed)
}

/// `count` UDP request/response exchanges from `client` to an echo server in
/// `server` at `addr`. Returns the source address the server saw.
pub fn udp_exchange(
    client: &Netns,
    server: &Netns,
    addr: Ipv4Addr,
    count: u32,
) -> Result<SocketAddr> {
    let sock = server.enter(|| UdpSocket::bind((addr, 0)))??;
    let port = sock.local_addr()?.port();
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    let echo = std::thread::spawn(move || -> Result<SocketAddr> {
        let mut buf = [0u8; 1500];
        let mut peer = None;
        for _ in 0..count {
            let (n, from) = sock.recv_from(&mut buf)?;
            sock.send_to(&buf[..n], from)?;
            peer = Some(from);
        }
        peer.context("no datagram")
    });
    let local = client.enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))??;
    local.set_read_timeout(Some(Duration::from_secs(2)))?;
    for i in 0..count {
        let msg = format!("dr udp {i}");
        local.send_to(msg.as_bytes(), (addr, port))?;
        let mut buf = [0u8; 1500];
        let (n, _) = local
            .recv_from(&mut buf)
            .with_context(|| format!("no UDP reply {i} from {addr}:{port}"))?;
        ensure!(&buf[..n] == msg.as_bytes(), "UDP reply {i} differs");
    }
    echo.join()
        .map_err(|_| anyhow::anyhow!("echo server panicked"))?
}
