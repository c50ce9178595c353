//! Bounded traffic between namespaces: ping, TCP transfers, UDP exchanges.
//! Servers serve several clients on one port, so tests can aim two flows at
//! the same destination; they report the source addresses they saw.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use socket2::{Domain, Socket, Type};

use crate::netns::Netns;

const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a test server waits for its next client: a test may start its
/// clients long after its servers (publishing ports, `dr-ctl sync`,
/// transfers before), which on a loaded emulated VM took more than
/// `IO_TIMEOUT` (CI's 6.1 VM, two tests at once).
const CLIENT_WAIT: Duration = Duration::from_secs(60);

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

/// A ping running in the background, one packet every 10 ms.
pub struct ContinuousPing {
    child: std::process::Child,
    count: u32,
}

impl ContinuousPing {
    /// Starts `count` pings from `from` to `to`.
    pub fn start(from: &Netns, to: Ipv4Addr, count: u32) -> Result<Self> {
        let child = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &from.name,
                "ping",
                "-n",
                "-q",
                "-i",
                "0.01",
                "-c",
                &count.to_string(),
            ])
            .arg(to.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting ping")?;
        Ok(Self { child, count })
    }

    /// Waits for the last ping; Ok only if not one packet was lost.
    pub fn finish_without_loss(self) -> Result<()> {
        let out = self.child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let count = self.count;
        ensure!(
            text.contains(&format!("{count} packets transmitted, {count} received")),
            "packets lost: {}",
            text.trim()
        );
        Ok(())
    }
}

/// Whether a single ping from `from` to `to` gets an answer within a second.
/// Only a ping that sent its request and got nothing back means "no"
/// (ping exits 1); anything else (a missing namespace, no route, a bad
/// address: exit 2) is an error, so `!reachable` cannot pass by accident.
pub fn reachable(from: &Netns, to: Ipv4Addr) -> Result<bool> {
    let out = from.exec_output("ping", &["-n", "-q", "-c", "1", "-W", "1", &to.to_string()])?;
    let text = String::from_utf8_lossy(&out.stdout);
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) if text.contains("1 packets transmitted, 0 received") => Ok(false),
        _ => bail!(
            "ping {} -> {to} failed: {} {}",
            from.name,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

/// A deterministic byte pattern, so corruption is detected.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 11)) as u8
}

/// A socket in `ns` bound to `src_port` (0: any), for `ty`.
fn bound_socket(ns: &Netns, ty: Type, src_port: u16) -> Result<Socket> {
    ns.enter(|| -> Result<Socket> {
        let s = Socket::new(Domain::IPV4, ty, None)?;
        s.set_reuse_address(true)?;
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, src_port)).into())?;
        Ok(s)
    })?
}

/// A bounded test server in a namespace that records the client addresses
/// it saw: a TCP sink that checks every byte, or a UDP echo.
pub struct TestServer {
    pub addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    handle: JoinHandle<Result<()>>,
}

impl TestServer {
    fn spawn<S: Send + 'static>(
        socket: S,
        addr: SocketAddr,
        serve: impl FnOnce(S, &Mutex<Vec<SocketAddr>>) -> Result<()> + Send + 'static,
    ) -> Self {
        let peers = Arc::new(Mutex::new(Vec::new()));
        let seen = peers.clone();
        let handle = std::thread::spawn(move || serve(socket, &seen));
        Self {
            addr,
            peers,
            handle,
        }
    }

    /// Accepts `connections` TCP connections on `addr` (kernel-chosen port)
    /// in `ns`; checks every byte of each and answers with the byte count.
    /// Gives up (and frees the port) when no connection comes for
    /// `CLIENT_WAIT`, as the UDP echo does when no datagram comes.
    pub fn tcp_sink(ns: &Netns, addr: Ipv4Addr, connections: usize) -> Result<Self> {
        Self::tcp_sink_at(ns, (addr, 0).into(), connections)
    }

    /// [`Self::tcp_sink`] on a given port (0: kernel-chosen), e.g. a
    /// container port that Docker publishes.
    pub fn tcp_sink_at(ns: &Netns, addr: SocketAddr, connections: usize) -> Result<Self> {
        let listener = ns.enter(|| TcpListener::bind(addr))??;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        Ok(Self::spawn(listener, addr, move |listener, seen| {
            let mut workers = Vec::new();
            for _ in 0..connections {
                let (conn, peer) = accept_within(&listener, CLIENT_WAIT)?;
                seen.lock().unwrap().push(peer);
                workers.push(std::thread::spawn(move || receive(conn)));
            }
            for w in workers {
                w.join()
                    .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
            }
            Ok(())
        }))
    }

    /// Echoes `datagrams` UDP datagrams on `addr` (kernel-chosen port) in `ns`.
    pub fn udp_echo(ns: &Netns, addr: Ipv4Addr, datagrams: u32) -> Result<Self> {
        Self::udp_echo_at(ns, (addr, 0).into(), datagrams)
    }

    /// [`Self::udp_echo`] on a given port (0: kernel-chosen).
    pub fn udp_echo_at(ns: &Netns, addr: SocketAddr, datagrams: u32) -> Result<Self> {
        let sock = ns.enter(|| UdpSocket::bind(addr))??;
        sock.set_read_timeout(Some(CLIENT_WAIT))?;
        let addr = sock.local_addr()?;
        Ok(Self::spawn(sock, addr, move |sock, seen| {
            let mut buf = [0u8; 1500];
            for _ in 0..datagrams {
                let (n, from) = sock.recv_from(&mut buf)?;
                sock.send_to(&buf[..n], from)?;
                let mut seen = seen.lock().unwrap();
                if !seen.contains(&from) {
                    seen.push(from);
                }
            }
            Ok(())
        }))
    }

    /// Waits for the server to finish; returns the distinct clients it saw.
    pub fn finish(self) -> Result<Vec<SocketAddr>> {
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("server panicked"))??;
        Ok(self.peers.lock().unwrap().clone())
    }
}

/// The next connection on a non-blocking `listener`, as a blocking stream.
fn accept_within(listener: &TcpListener, limit: Duration) -> Result<(TcpStream, SocketAddr)> {
    let start = Instant::now();
    loop {
        match listener.accept() {
            Ok((conn, peer)) => {
                conn.set_nonblocking(false)?;
                return Ok((conn, peer));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                ensure!(start.elapsed() < limit, "no connection within {limit:?}");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn receive(mut conn: TcpStream) -> Result<()> {
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
    Ok(())
}

/// Sends `bytes` from `client` (source port `src_port`, 0: any) to `target`
/// and waits for the server's count. Returns the elapsed time.
pub fn tcp_send(
    client: &Netns,
    src_port: u16,
    target: SocketAddr,
    bytes: usize,
) -> Result<Duration> {
    let socket = bound_socket(client, Type::STREAM, src_port)?;
    let start = Instant::now();
    socket
        .connect_timeout(&target.into(), IO_TIMEOUT)
        .with_context(|| format!("connecting {} -> {target}", client.name))?;
    let mut conn: TcpStream = socket.into();
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
    ensure!(
        u64::from_be_bytes(ack) == bytes as u64,
        "server counted {} of {bytes} bytes",
        u64::from_be_bytes(ack)
    );
    Ok(start.elapsed())
}

/// One TCP transfer of `bytes` from `client` to a server in `server` at `addr`.
/// Returns the elapsed time and the client address the server saw.
pub fn tcp_transfer(
    client: &Netns,
    server: &Netns,
    addr: Ipv4Addr,
    bytes: usize,
) -> Result<(Duration, SocketAddr)> {
    let sink = TestServer::tcp_sink(server, addr, 1)?;
    let elapsed = tcp_send(client, 0, sink.addr, bytes)?;
    let seen = sink.finish()?;
    Ok((elapsed, seen[0]))
}

/// `count` request/response exchanges from `client` (source port `src_port`,
/// 0: any) with the echo server at `target`; every reply must come from
/// `target`.
pub fn udp_requests(client: &Netns, src_port: u16, target: SocketAddr, count: u32) -> Result<()> {
    let sock: UdpSocket = bound_socket(client, Type::DGRAM, src_port)?.into();
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    for i in 0..count {
        let msg = format!("dr udp {i} from {}", client.name);
        sock.send_to(msg.as_bytes(), target)?;
        let mut buf = [0u8; 1500];
        let (n, from) = sock
            .recv_from(&mut buf)
            .with_context(|| format!("no UDP reply {i} from {target}"))?;
        // A connected client (a resolver, say) would drop a reply from
        // another address or port.
        ensure!(
            from == target,
            "UDP reply {i} came from {from}, not {target}"
        );
        ensure!(&buf[..n] == msg.as_bytes(), "UDP reply {i} differs");
    }
    Ok(())
}

/// `count` UDP exchanges from `client` with an echo server in `server` at
/// `addr`. Returns the source address the server saw.
pub fn udp_exchange(
    client: &Netns,
    server: &Netns,
    addr: Ipv4Addr,
    count: u32,
) -> Result<SocketAddr> {
    let echo = TestServer::udp_echo(server, addr, count)?;
    udp_requests(client, 0, echo.addr, count)?;
    let seen = echo.finish()?;
    ensure!(seen.len() == 1, "expected one source, saw {seen:?}");
    Ok(seen[0])
}
