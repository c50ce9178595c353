//! Load generators for the benchmarks, each bounded by a duration: TCP
//! request/response on one connection, TCP connect-request-close, small UDP
//! datagrams, and iperf3 for bulk throughput. Servers stop when dropped, so
//! no socket keeps a deleted namespace alive.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::netns::Netns;

const POLL: Duration = Duration::from_millis(20);

/// A server thread that runs until dropped.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Server {
    /// Datagrams counted so far (UDP sink).
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Echoes every byte back on each connection, a thread per connection
    /// (request/response on long connections).
    pub fn tcp_echo(ns: &Netns, addr: Ipv4Addr) -> Result<Self> {
        Self::tcp(ns, addr, 1, |conn, stop| echo(conn, stop, false))
    }

    /// `tcp_echo` with each connection's thread moved to the CPU its
    /// client's packets are processed on (`SO_INCOMING_CPU`): with clients
    /// pinned by `parallel_pinned`, a client, its server and both ways of
    /// the path share one CPU, and the rate is set by what a transaction
    /// costs, not by where the scheduler happened to place 8 threads on 2
    /// CPUs (which made 4-connection rates bimodal, 100k or 200k for the
    /// same setup).
    pub fn tcp_echo_pinned(ns: &Netns, addr: Ipv4Addr) -> Result<Self> {
        Self::tcp(ns, addr, 1, |conn, stop| echo(conn, stop, true))
    }

    /// Answers one byte per connection, then closes (connect-request-close),
    /// on one accepting thread per CPU and no thread per connection: a
    /// connection costs its packets and socket. With a thread started per
    /// connection (`tcp_echo`), every setup here topped out at about 12,000
    /// connections a second and the rates could not tell setups apart.
    pub fn tcp_answer_once(ns: &Netns, addr: Ipv4Addr) -> Result<Self> {
        let cpus = std::thread::available_parallelism()?.get();
        Self::tcp(ns, addr, cpus, answer_once)
    }

    /// A listener on `addr` in `ns` with `acceptors` threads accepting,
    /// each handing its connections to `serve`, which runs on a thread of
    /// its own when it returns `Some` (the thread's handle is joined on
    /// drop) or inline when it returns `None`.
    fn tcp(
        ns: &Netns,
        addr: Ipv4Addr,
        acceptors: usize,
        serve: fn(TcpStream, Arc<AtomicBool>) -> Option<JoinHandle<()>>,
    ) -> Result<Self> {
        let listener = ns.enter(|| TcpListener::bind((addr, 0)))??;
        // accept() honours the receive timeout: the threads see `stop`.
        socket2::SockRef::from(&listener).set_read_timeout(Some(POLL))?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for _ in 0..acceptors {
            let (listener, stop) = (listener.try_clone()?, stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut workers: Vec<JoinHandle<()>> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((conn, _)) = listener.accept() {
                        workers.extend(serve(conn, stop.clone()));
                        workers.retain(|w| !w.is_finished());
                    }
                }
                for w in workers {
                    let _ = w.join();
                }
            }));
        }
        let handle = std::thread::spawn(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        Ok(Self {
            addr,
            stop,
            received: Arc::default(),
            handle: Some(handle),
        })
    }

    /// Counts datagrams.
    pub fn udp_sink(ns: &Netns, addr: Ipv4Addr) -> Result<Self> {
        Self::udp(ns, (addr, 0).into(), |_, _, _| {})
    }

    /// Echoes every datagram back to its sender; `addr`'s port 0 lets the
    /// kernel choose.
    pub fn udp_echo(ns: &Netns, addr: SocketAddr) -> Result<Self> {
        Self::udp(ns, addr, |sock, datagram, from| {
            let _ = sock.send_to(datagram, from);
        })
    }

    /// A UDP server on `addr` in `ns` that counts each datagram and hands
    /// it to `answer`.
    fn udp(
        ns: &Netns,
        addr: SocketAddr,
        answer: impl Fn(&UdpSocket, &[u8], SocketAddr) + Send + 'static,
    ) -> Result<Self> {
        let sock = ns.enter(|| UdpSocket::bind(addr))??;
        sock.set_read_timeout(Some(POLL))?;
        let addr = sock.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (stop_flag, count) = (stop.clone(), received.clone());
        let handle = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop_flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    count.fetch_add(1, Ordering::Relaxed);
                    answer(&sock, &buf[..n], from);
                }
            }
        });
        Ok(Self {
            addr,
            stop,
            received,
            handle: Some(handle),
        })
    }
}

/// A thread echoing `conn` until the client closes or the server stops;
/// with `follow_client`, it moves to the CPU the client's first request
/// was processed on.
fn echo(conn: TcpStream, stop: Arc<AtomicBool>, follow_client: bool) -> Option<JoinHandle<()>> {
    Some(std::thread::spawn(move || {
        let _ = echo_until_closed(conn, &stop, follow_client);
    }))
}

fn echo_until_closed(mut conn: TcpStream, stop: &AtomicBool, follow_client: bool) -> Result<()> {
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(POLL))?;
    let mut buf = [0u8; 4096];
    let mut placed = !follow_client;
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                if !placed {
                    pin_to_cpu(socket2::SockRef::from(&conn).cpu_affinity()?)?;
                    placed = true;
                }
                conn.write_all(&buf[..n])?;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads the request byte, writes it back and closes, on the accepting
/// thread.
fn answer_once(mut conn: TcpStream, _stop: Arc<AtomicBool>) -> Option<JoinHandle<()>> {
    let mut exchange = || -> std::io::Result<()> {
        conn.set_nodelay(true)?;
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut byte = [0u8; 1];
        conn.read_exact(&mut byte)?;
        conn.write_all(&byte)
    };
    let _ = exchange();
    None
}

/// Runs `f` with the calling thread on `cpu` only, and with it every
/// thread and process `f` starts (they inherit the affinity), then puts the
/// thread back on the CPUs it had.
pub fn on_cpu<T>(cpu: usize, f: impl FnOnce() -> T) -> Result<T> {
    let before = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))?;
    pin_to_cpu(cpu)?;
    let out = f();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &before)?;
    Ok(out)
}

/// Runs the calling thread on `cpu` only.
fn pin_to_cpu(cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(())
}

fn connect(client: &Netns, target: SocketAddr) -> Result<TcpStream> {
    let conn = client
        .enter(|| TcpStream::connect_timeout(&target, Duration::from_secs(2)))?
        .with_context(|| format!("connecting {} -> {target}", client.name))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(conn)
}

/// Round trips of one byte per second on one TCP connection.
pub fn tcp_rr(client: &Netns, target: SocketAddr, duration: Duration) -> Result<f64> {
    let mut conn = connect(client, target)?;
    let mut byte = [7u8; 1];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        conn.write_all(&byte)?;
        conn.read_exact(&mut byte)?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// `f` run by `streams` threads at once; the sum of their rates. With more
/// streams than CPUs the machine is saturated and the rate reflects the
/// whole per-transaction cost, forwarding included.
pub fn parallel(streams: usize, f: impl Fn() -> Result<f64> + Sync) -> Result<f64> {
    spawn_all(streams, |_| f())
}

/// `parallel` with thread k pinned to CPU k mod the CPU count, for servers
/// that follow their clients (`Server::tcp_echo_pinned`).
pub fn parallel_pinned(streams: usize, f: impl Fn() -> Result<f64> + Sync) -> Result<f64> {
    let cpus = std::thread::available_parallelism()?.get();
    spawn_all(streams, |k| {
        pin_to_cpu(k % cpus)?;
        f()
    })
}

fn spawn_all(streams: usize, f: impl Fn(usize) -> Result<f64> + Sync) -> Result<f64> {
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..streams).map(|k| s.spawn(move || f(k))).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("load thread panicked"))?
            })
            .sum()
    })
}

/// Connections per second: connect, one byte each way, close (with RST).
pub fn tcp_crr(client: &Netns, target: SocketAddr, duration: Duration) -> Result<f64> {
    // Sockets are created in the namespace once per connection; keep a
    // thread there instead of entering it each time.
    client.enter(|| -> Result<f64> {
        let start = Instant::now();
        let mut n = 0u64;
        let mut byte = [7u8; 1];
        while start.elapsed() < duration {
            let mut conn = TcpStream::connect_timeout(&target, Duration::from_secs(2))
                .with_context(|| format!("connection {n} to {target}"))?;
            conn.set_nodelay(true)?;
            conn.set_read_timeout(Some(Duration::from_secs(2)))?;
            conn.write_all(&byte)?;
            conn.read_exact(&mut byte)?;
            // Close with RST: no TIME_WAIT piles up, so the rate measures the
            // path and not the client's ephemeral port space running out.
            socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO))?;
            drop(conn);
            n += 1;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    })?
}

/// Small (64-byte payload) UDP datagrams sent as fast as one thread can for
/// `duration`; returns the rate the server received.
pub fn udp_rate(client: &Netns, server: &Netns, addr: Ipv4Addr, duration: Duration) -> Result<f64> {
    let sink = Server::udp_sink(server, addr)?;
    let sock = client.enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))??;
    sock.connect(sink.addr)?;
    let payload = [0x5au8; 64];
    let start = Instant::now();
    while start.elapsed() < duration {
        for _ in 0..64 {
            // A full socket buffer is a drop, as on a wire.
            let _ = sock.send(&payload);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(100));
    Ok(sink.received() as f64 / elapsed)
}

/// The machine's busy CPU time between two samples, in seconds: wall time
/// times online CPUs minus the time they spent idle. /proc/stat's busy
/// fields are sampled by the tick and alias with paced bursts (3 s of 750
/// ICMP errors through the recipe's NAT read as 0 ticks busy), so idle time
/// is what is read:
/// - where a cpuidle driver runs (haltpoll on this VM), from each CPU's
///   per-state residency in us, read by a thread on that CPU: its residency
///   grows only when the CPU leaves idle, and the reader running there is
///   what ends the idle period in progress (read from elsewhere, a CPU idle
///   across the first sample had that whole period counted in the interval:
///   1 s of spinning read as 0.5 s busy);
/// - else from /proc/stat's idle and iowait, which a NO_HZ kernel measures
///   at idle entry and exit and prints in 10 ms units: 10-20 ms of error per
///   interval, a fifth of a 0.5 s paced run's busy time.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    wall: Instant,
    idle_us: u64,
    cpus: u64,
}

impl CpuSample {
    pub fn now() -> Result<Self> {
        let cpus = std::thread::available_parallelism()?.get();
        let wall = Instant::now();
        let idle_us = match cpuidle_idle_us(cpus)? {
            Some(us) => us,
            None => proc_stat_idle_us()?,
        };
        Ok(Self {
            wall,
            idle_us,
            cpus: cpus as u64,
        })
    }

    /// Busy CPU-seconds from `earlier` to this sample.
    pub fn busy_since(&self, earlier: &CpuSample) -> f64 {
        let wall = self.wall.duration_since(earlier.wall).as_secs_f64() * self.cpus as f64;
        let idle = self.idle_us.saturating_sub(earlier.idle_us) as f64 / 1e6;
        (wall - idle).max(0.0)
    }
}

/// Every CPU's idle residency over all its cpuidle states, in us, each read
/// on its CPU; None without a cpuidle driver.
fn cpuidle_idle_us(cpus: usize) -> Result<Option<u64>> {
    let dir = |cpu: usize| format!("/sys/devices/system/cpu/cpu{cpu}/cpuidle");
    if !std::path::Path::new(&dir(0)).exists() {
        return Ok(None);
    }
    let mut total = 0;
    for cpu in 0..cpus {
        let read = move || -> Result<u64> {
            // This thread ends here: it need not get its CPUs back.
            pin_to_cpu(cpu)?;
            let mut us = 0;
            for state in std::fs::read_dir(dir(cpu))? {
                let time = std::fs::read_to_string(state?.path().join("time"))?;
                us += time.trim().parse::<u64>().context("cpuidle state time")?;
            }
            Ok(us)
        };
        total += std::thread::spawn(read)
            .join()
            .map_err(|_| anyhow::anyhow!("cpuidle reader panicked"))??;
    }
    Ok(Some(total))
}

/// /proc/stat's idle and iowait (USER_HZ, 100 a second), in us.
fn proc_stat_idle_us() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = v.get(3).context("/proc/stat idle")? + v.get(4).context("/proc/stat iowait")?;
    Ok(idle * 10_000)
}

/// Bulk TCP throughput with iperf3 from `client` to a one-off server in
/// `server` at `addr`: (bits per second, CPU seconds per gigabyte moved,
/// machine-wide, see [`CpuSample`]).
pub fn iperf3(
    client: &Netns,
    server: &Netns,
    addr: Ipv4Addr,
    duration: Duration,
) -> Result<(f64, f64)> {
    let (bps, cpu_secs, bytes) = run_iperf3(client, server, addr, duration, None)?;
    Ok((bps, cpu_secs / (bytes / 1e9).max(1e-9)))
}

/// One iperf3 run, as fast as it goes or `paced` at bits per second (not at
/// real-time priority as `paced`'s senders: a bulk sender that keeps its
/// receiver off a shared CPU until the window is full cost 4.5-9.4 CPU-s/GB
/// here, against 1-2 without): (bits per second received, machine-wide CPU
/// seconds during the run, bytes received).
fn run_iperf3(
    client: &Netns,
    server: &Netns,
    addr: Ipv4Addr,
    duration: Duration,
    paced: Option<u64>,
) -> Result<(f64, f64, f64)> {
    let port = "5201";
    let mut srv = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &server.name,
            "iperf3",
            "-s",
            "-1",
            "-B",
            &addr.to_string(),
            "-p",
            port,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let secs = duration.as_secs_f64().max(1.0).to_string();
    let cpu0 = CpuSample::now()?;
    let addr = addr.to_string();
    let mut args = vec!["-c", &addr, "-p", port, "-t", &secs, "-J"];
    let bitrate = paced.map(|rate| rate.to_string());
    if let Some(bitrate) = &bitrate {
        args.extend(["-b", bitrate]);
    }
    let out = client.exec_output("iperf3", &args);
    let cpu_secs = CpuSample::now()?.busy_since(&cpu0);
    let _ = srv.kill();
    let _ = srv.wait();
    let out = out?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 gave no result: {}", json["error"]))?;
    let bytes = json["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
    Ok((bps, cpu_secs, bytes))
}

/// Calls `step` `rate` times a second for `duration`, in 1 ms slots, so an
/// offered load stays fixed whatever the path costs (as long as it stays
/// below the path's ceiling). Returns how many calls succeeded. The caller
/// runs at real-time priority meanwhile: a server it wakes on the same CPU
/// (see `on_cpu`) then runs when the slot's calls are done, answering them
/// all at once, every slot alike (context switches per run then stay within
/// a few percent); left to the fair scheduler, whether a woken server
/// preempted the sender, a switch per packet or one per slot, could change
/// from run to run and with it the CPU a packet costs.
fn paced(rate: u64, duration: Duration, mut step: impl FnMut() -> bool) -> Result<u64> {
    let _real_time = RealTime::enter()?;
    let start = Instant::now();
    let (mut due, mut done) = (0u64, 0u64);
    while start.elapsed() < duration {
        let target = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while due < target {
            due += 1;
            done += u64::from(step());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(done)
}

/// The calling thread under `SCHED_FIFO` (priority 1) while alive, back
/// under `SCHED_OTHER` when dropped. Threads it starts meanwhile would
/// inherit the policy: start servers before.
struct RealTime;

impl RealTime {
    fn enter() -> Result<Self> {
        set_scheduler(libc::SCHED_FIFO, 1).context("real-time priority for the paced sender")?;
        Ok(Self)
    }
}

impl Drop for RealTime {
    fn drop(&mut self) {
        let _ = set_scheduler(libc::SCHED_OTHER, 0);
    }
}

/// The calling thread's scheduling policy (nix has no wrapper for it).
fn set_scheduler(policy: libc::c_int, priority: libc::c_int) -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0
    // is the calling thread.
    match unsafe { libc::sched_setscheduler(0, policy, &param) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Small UDP datagrams (64-byte payload) at `pps` for `duration` from
/// `client` to a sink in `server`; returns how many arrived.
pub fn udp_paced(
    client: &Netns,
    server: &Netns,
    addr: Ipv4Addr,
    pps: u64,
    duration: Duration,
) -> Result<u64> {
    let sink = Server::udp_sink(server, addr)?;
    let sock = client.enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))??;
    sock.connect(sink.addr)?;
    let payload = [0x5au8; 64];
    paced(pps, duration, || sock.send(&payload).is_ok())?;
    std::thread::sleep(Duration::from_millis(100));
    Ok(sink.received())
}

/// UDP datagrams at `pps` for `duration` from an unconnected socket in
/// `client` to `target`: for a port nobody listens on, each comes back as
/// an ICMP port unreachable (an unconnected socket takes no error, so no
/// send fails for the one before). Returns the destination unreachables
/// that arrived in `client`, from its ICMP counters.
pub fn icmp_errors_paced(
    client: &Netns,
    target: SocketAddr,
    pps: u64,
    duration: Duration,
) -> Result<u64> {
    let sock = client.enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))??;
    let payload = [0x5au8; 64];
    let before = dest_unreachables_in(client)?;
    paced(pps, duration, || sock.send_to(&payload, target).is_ok())?;
    std::thread::sleep(Duration::from_millis(100));
    Ok(dest_unreachables_in(client)? - before)
}

/// ICMP destination unreachables received in `ns` so far (`/proc/net/snmp`
/// as the namespace sees it).
fn dest_unreachables_in(ns: &Netns) -> Result<u64> {
    let snmp = ns.enter(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))??;
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (icmp.next(), icmp.next());
    let names = names.context("no Icmp header in snmp")?.split_whitespace();
    let values = values.context("no Icmp values in snmp")?.split_whitespace();
    names
        .zip(values)
        .find(|(n, _)| *n == "InDestUnreachs")
        .context("no InDestUnreachs in snmp")?
        .1
        .parse()
        .context("InDestUnreachs")
}

/// Connect-request-close at `cps` connections a second for `duration`;
/// returns how many completed.
pub fn tcp_crr_paced(
    client: &Netns,
    target: SocketAddr,
    cps: u64,
    duration: Duration,
) -> Result<u64> {
    client.enter(|| {
        let mut byte = [7u8; 1];
        paced(cps, duration, || {
            let mut exchange = || -> std::io::Result<()> {
                let mut conn = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
                conn.set_nodelay(true)?;
                conn.set_read_timeout(Some(Duration::from_secs(2)))?;
                conn.write_all(&byte)?;
                conn.read_exact(&mut byte)?;
                socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO))
            };
            exchange().is_ok()
        })
    })?
}

/// Bulk TCP at a fixed `rate` (bits per second, iperf3's pacing) for
/// `duration`: the bytes that arrived.
pub fn iperf3_paced(
    client: &Netns,
    server: &Netns,
    addr: Ipv4Addr,
    rate: u64,
    duration: Duration,
) -> Result<f64> {
    let (_, _, bytes) = run_iperf3(client, server, addr, duration, Some(rate))?;
    Ok(bytes)
}

/// UDP request/response at `pps` requests a second for `duration` against
/// an echo server at `target`; returns the answers that came back.
pub fn udp_rr_paced(
    client: &Netns,
    target: SocketAddr,
    pps: u64,
    duration: Duration,
) -> Result<u64> {
    let sock = client.enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))??;
    sock.connect(target)?;
    sock.set_nonblocking(true)?;
    let payload = [0x5au8; 64];
    let mut buf = [0u8; 128];
    let mut answers = 0u64;
    paced(pps, duration, || {
        while sock.recv(&mut buf).is_ok() {
            answers += 1;
        }
        sock.send(&payload).is_ok()
    })?;
    std::thread::sleep(Duration::from_millis(100));
    while sock.recv(&mut buf).is_ok() {
        answers += 1;
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread that spins for 300 ms shows as at least that much busy time,
    /// and no sample reads more than the CPUs could have done.
    #[test]
    fn busy_time_counts_a_spinning_thread() {
        let before = CpuSample::now().unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(300) {
            std::hint::spin_loop();
        }
        let after = CpuSample::now().unwrap();
        let busy = after.busy_since(&before);
        let wall = after.wall.duration_since(before.wall).as_secs_f64();
        assert!(
            busy >= 0.25,
            "busy {busy:.3} s over {wall:.3} s of spinning"
        );
        assert!(busy <= wall * before.cpus as f64 + 0.02, "busy {busy:.3} s");
    }

    /// Spinning right after a quiet spell (the CPUs deep in idle when the
    /// first sample is taken) still reads as busy: the idle period in
    /// progress at the first sample is not counted after it.
    #[test]
    fn busy_time_after_a_quiet_spell_counts_the_spinning() {
        std::thread::sleep(Duration::from_millis(1500));
        let before = CpuSample::now().unwrap();
        // On a thread of its own, as a workload's processes: the scheduler
        // may wake the CPU that was idle at the sample.
        std::thread::spawn(|| {
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(500) {
                std::hint::spin_loop();
            }
        })
        .join()
        .unwrap();
        let busy = CpuSample::now().unwrap().busy_since(&before);
        assert!(busy >= 0.45, "busy {busy:.3} s over 500 ms of spinning");
    }

    fn loopback() -> (Netns, Ipv4Addr) {
        crate::require_root();
        let ns = Netns::add(&crate::netns::unique_prefix("drload")).unwrap();
        (ns, Ipv4Addr::LOCALHOST)
    }

    /// Every connection gets its byte back from the accepting threads,
    /// from several clients at once.
    #[test]
    fn answer_once_server_answers_every_connection() {
        let (ns, addr) = loopback();
        let srv = Server::tcp_answer_once(&ns, addr).unwrap();
        let rate = parallel(4, || tcp_crr(&ns, srv.addr, Duration::from_millis(300))).unwrap();
        assert!(rate > 100.0, "{rate:.0} connections/s");
    }

    /// Pinned clients, each on one CPU, keep their exchanges going after
    /// each server thread moves to its client's CPU.
    #[test]
    fn pinned_echo_answers_pinned_clients() {
        let (ns, addr) = loopback();
        let srv = Server::tcp_echo_pinned(&ns, addr).unwrap();
        let rate = parallel_pinned(4, || {
            let cpus = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))?;
            let allowed = (0..nix::sched::CpuSet::count())
                .filter(|&c| cpus.is_set(c).unwrap_or(false))
                .count();
            anyhow::ensure!(allowed == 1, "client allowed on {allowed} CPUs");
            tcp_rr(&ns, srv.addr, Duration::from_millis(300))
        })
        .unwrap();
        assert!(rate > 100.0, "{rate:.0} round trips/s");
    }

    /// Inside `on_cpu`, the threads and processes a workload starts run on
    /// that CPU alone; after it, the caller has its CPUs back.
    #[test]
    fn on_cpu_holds_what_the_workload_starts() {
        let allowed = || std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let list = |status: &str| {
            let line = status.lines().find(|l| l.starts_with("Cpus_allowed_list:"));
            line.unwrap().split_whitespace().nth(1).unwrap().to_string()
        };
        let before = list(&allowed());
        let (thread, process) = on_cpu(0, || {
            let thread = std::thread::spawn(move || list(&allowed())).join().unwrap();
            let out = std::process::Command::new("cat")
                .arg("/proc/self/status")
                .output()
                .unwrap();
            (thread, list(&String::from_utf8(out.stdout).unwrap()))
        })
        .unwrap();
        assert_eq!((thread.as_str(), process.as_str()), ("0", "0"));
        assert_eq!(list(&allowed()), before);
    }

    /// Every datagram to a closed port comes back as an error, counted
    /// where it arrives.
    #[test]
    fn icmp_errors_are_counted_as_they_arrive() {
        let (ns, addr) = loopback();
        ns.exec(
            "sysctl",
            &[
                "-q",
                "-w",
                "net.ipv4.icmp_ratelimit=0",
                "net.ipv4.icmp_msgs_burst=100000",
            ],
        )
        .unwrap();
        let closed = SocketAddr::from((addr, 9));
        let errors = icmp_errors_paced(&ns, closed, 400, Duration::from_millis(250)).unwrap();
        assert!(
            (98..=101).contains(&errors),
            "{errors} errors for 100 datagrams"
        );
    }
}
