//! etcd (Debian's etcd-server) in the switch namespace, and `dr-ctl agent`
//! processes on the hosts: for the agent tests and benchmarks.
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use crate::{netns::unique_prefix, Cluster, Host};

pub const ETCD_ADDR: &str = "192.168.91.250";

/// A CA, a server certificate for `ETCD_ADDR` and a client certificate, made
/// with the openssl command (the format etcd's documentation uses).
pub struct Pki {
    dir: PathBuf,
}

/// openssl's extension sections for the three certificates.
const PKI_CONFIG: &str = "[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign
[server]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:192.168.91.250
[client]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
";

impl Pki {
    pub fn new() -> Pki {
        let dir = std::env::temp_dir().join(unique_prefix("dr-pki-"));
        std::fs::create_dir(&dir).unwrap();
        let pki = Pki { dir };
        std::fs::write(pki.path("openssl.cnf"), PKI_CONFIG).unwrap();
        pki.openssl(&[
            "req",
            "-x509",
            "-config",
            "openssl.cnf",
            "-extensions",
            "ca",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=dr-test-ca",
        ]);
        for leaf in ["server", "client"] {
            let (key, csr, crt) = (
                format!("{leaf}.key"),
                format!("{leaf}.csr"),
                format!("{leaf}.crt"),
            );
            pki.openssl(&[
                "req",
                "-new",
                "-config",
                "openssl.cnf",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN=dr-test-{leaf}"),
            ]);
            pki.openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "openssl.cnf",
                "-extensions",
                leaf,
                "-out",
                &crt,
            ]);
        }
        pki
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A file of the PKI: ca.crt, server.{crt,key}, client.{crt,key}.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// etcd in the switch namespace, with its data in a directory of ours.
pub struct Etcd {
    child: Option<Child>,
    data: PathBuf,
    ns: String,
    tls: bool,
}

impl Etcd {
    /// Starts etcd; `data` reuses a killed instance's directory (a restart).
    pub fn start(c: &Cluster, data: Option<PathBuf>) -> Etcd {
        Etcd::launch(c, data, None)
    }

    /// Starts etcd serving TLS and requiring client certificates of `pki`'s CA.
    pub fn start_tls(c: &Cluster, pki: &Pki) -> Etcd {
        Etcd::launch(c, None, Some(pki))
    }

    fn launch(c: &Cluster, data: Option<PathBuf>, pki: Option<&Pki>) -> Etcd {
        if data.is_none() {
            c.switch
                .ip(&["addr", "add", &format!("{ETCD_ADDR}/24"), "dev", "br0"])
                .unwrap();
        }
        let data = data.unwrap_or_else(|| std::env::temp_dir().join(unique_prefix("dr-etcd-")));
        let url = client_url(pki.is_some());
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &c.switch.name, "etcd", "--name", "dr-test"])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
            ])
            .args(["--initial-cluster", "dr-test=http://127.0.0.1:2380"]);
        if let Some(pki) = pki {
            command
                .arg("--cert-file")
                .arg(pki.path("server.crt"))
                .arg("--key-file")
                .arg(pki.path("server.key"))
                .arg("--trusted-ca-file")
                .arg(pki.path("ca.crt"))
                .arg("--client-cert-auth");
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian's etcd-server)");
        let etcd = Etcd {
            child: Some(child),
            data,
            ns: c.switch.name.clone(),
            tls: pki.is_some(),
        };
        let ready = wait_for(Duration::from_secs(20), || {
            c.switch
                .enter(|| TcpStream::connect((ETCD_ADDR, 2379)).is_ok())
                .unwrap_or(false)
        });
        assert!(ready, "etcd did not start in {}", etcd.ns);
        etcd
    }

    /// Writes `key` = `value` through etcd's JSON gateway (plain etcd only):
    /// what a hostile or broken writer could put there.
    pub fn put(&self, c: &Cluster, key: &str, value: &str) {
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            base64(key.as_bytes()),
            base64(value.as_bytes())
        );
        self.gateway(c, "/v3/kv/put", &body);
    }

    /// Turns on etcd's authentication with a `root` user (all rights) of
    /// this password.
    pub fn enable_auth(&self, c: &Cluster, password: &str) {
        self.gateway(c, "/v3/auth/role/add", r#"{"name":"root"}"#);
        let user = format!(r#"{{"name":"root","password":"{password}"}}"#);
        self.gateway(c, "/v3/auth/user/add", &user);
        self.gateway(c, "/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#);
        self.gateway(c, "/v3/auth/enable", "{}");
    }

    /// POSTs `body` to etcd's JSON gateway, unauthenticated.
    /// Whether `key` exists, read through etcd's JSON gateway.
    pub fn exists(&self, c: &Cluster, key: &str) -> bool {
        let body = format!(r#"{{"key":"{}"}}"#, base64(key.as_bytes()));
        let response = self.gateway(c, "/v3/kv/range", &body);
        let json = &response[response.find("\r\n\r\n").expect("HTTP body") + 4..];
        let v: serde_json::Value = serde_json::from_str(json).expect("etcd's JSON");
        v["count"].as_str().is_some_and(|n| n != "0")
    }

    /// Sends a request to etcd's JSON gateway; returns the whole response.
    fn gateway(&self, c: &Cluster, path: &str, body: &str) -> String {
        assert!(!self.tls, "the gateway is spoken in plain HTTP here");
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {ETCD_ADDR}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let response = c
            .switch
            .enter(|| {
                let mut stream = TcpStream::connect((ETCD_ADDR, 2379))?;
                stream.write_all(request.as_bytes())?;
                let mut response = String::new();
                stream.read_to_string(&mut response)?;
                Ok::<_, std::io::Error>(response)
            })
            .unwrap()
            .unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{path}: {response}");
        response
    }

    /// The client URL agents use.
    pub fn url(&self) -> String {
        client_url(self.tls)
    }

    /// Stops (SIGSTOP) or continues (SIGCONT) etcd: an etcd that hangs
    /// rather than refuses.
    pub fn signal(&self, signal: Signal) {
        let child = self.child.as_ref().expect("running");
        // `ip netns exec` execs etcd: the child is etcd itself.
        kill(Pid::from_raw(child.id() as i32), signal).unwrap();
    }

    /// Kills etcd and returns its data directory, for a restart.
    pub fn kill(mut self) -> PathBuf {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        std::mem::take(&mut self.data)
    }
}

/// Standard base64, as etcd's JSON gateway wants keys and values.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, &b| n << 8 | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn client_url(tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{ETCD_ADDR}:2379")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A stopped etcd must continue to die.
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.data.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.data);
        }
    }
}

/// Polls `ok` every 50 ms for up to `limit`.
pub fn wait_for(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// `dr-ctl agent` on `host` against `etcd_url`, with only `--etcd` and
/// `--uplink` set: the rest is the caller's.
pub fn agent_command(host: &Host, etcd_url: &str) -> Command {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &host.ns.name])
        .arg(host.dr_ctl())
        .args(["agent", "--etcd", etcd_url, "--uplink", "eth0"]);
    command
}

/// The cluster settings every test agent shares: the cluster CIDR, the
/// host's name and a short lease.
pub fn test_agent_args(host: &Host) -> Vec<String> {
    vec![
        "--cluster-cidr".into(),
        "10.0.0.0/16".into(),
        "--name".into(),
        format!("h{}", host.id),
        "--lease-ttl".into(),
        "2".into(),
        "--removal-grace".into(),
        "1".into(),
    ]
}

/// `dr-ctl agent` on `host` with its own subnet (or a leased one).
pub fn agent(host: &Host, own_subnet: bool) -> Child {
    let mut command = agent_command(host, &client_url(false));
    command.args(test_agent_args(host));
    if own_subnet {
        command.args(["--subnet", &host.bip()]);
    }
    command
        .stdout(Stdio::null())
        // Reconnection warnings while etcd restarts are expected.
        .stderr(Stdio::null())
        .spawn()
        .expect("dr-ctl agent")
}

/// Agent processes, killed on drop.
pub struct Agents(pub Vec<Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        for a in &mut self.0 {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

/// An agent whose log (its standard error) goes to a file the test reads;
/// killed on drop, its log printed if the test failed.
pub struct LoggedAgent {
    child: Child,
    log: PathBuf,
}

impl LoggedAgent {
    pub fn spawn(mut command: Command) -> LoggedAgent {
        let log = std::env::temp_dir().join(unique_prefix("dr-agent-log-"));
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .env("DR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("dr-ctl agent");
        LoggedAgent { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status, if the agent ended within `limit`.
    pub fn exited(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_for(limit, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status
    }

    /// Sends `signal` to the agent (`ip netns exec` execs dr-ctl: the child
    /// is the agent itself).
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Kills the agent (SIGKILL: no goodbye to etcd).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LoggedAgent {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- {}:\n{}", self.log.display(), self.log());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}
