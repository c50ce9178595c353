//! etcd (Debian's etcd-server) in the switch namespace, and `dr-ctl agent`
//! processes on the hosts: for the agent tests and benchmarks.
use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{netns::unique_prefix, Cluster, Host};

pub const ETCD_ADDR: &str = "192.168.91.250";

/// etcd in the switch namespace, with its data in a directory of ours.
pub struct Etcd {
    child: Option<Child>,
    data: PathBuf,
    ns: String,
}

impl Etcd {
    /// Starts etcd; `data` reuses a killed instance's directory (a restart).
    pub fn start(c: &Cluster, data: Option<PathBuf>) -> Etcd {
        if data.is_none() {
            c.switch
                .ip(&["addr", "add", &format!("{ETCD_ADDR}/24"), "dev", "br0"])
                .unwrap();
        }
        let data = data.unwrap_or_else(|| std::env::temp_dir().join(unique_prefix("dr-etcd-")));
        let url = format!("http://{ETCD_ADDR}:2379");
        let child = Command::new("ip")
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
            .args(["--initial-cluster", "dr-test=http://127.0.0.1:2380"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian's etcd-server)");
        let etcd = Etcd {
            child: Some(child),
            data,
            ns: c.switch.name.clone(),
        };
        let ready = wait_for(Duration::from_secs(20), || {
            c.switch
                .enter(|| TcpStream::connect((ETCD_ADDR, 2379)).is_ok())
                .unwrap_or(false)
        });
        assert!(ready, "etcd did not start in {}", etcd.ns);
        etcd
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

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
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

/// `dr-ctl agent` on `host` with its own subnet (or a leased one).
pub fn agent(host: &Host, own_subnet: bool) -> Child {
    let mut args = vec![
        "agent".to_string(),
        "--etcd".into(),
        format!("http://{ETCD_ADDR}:2379"),
        "--cluster-cidr".into(),
        "10.0.0.0/16".into(),
        "--uplink".into(),
        "eth0".into(),
        "--name".into(),
        format!("h{}", host.id),
        "--lease-ttl".into(),
        "2".into(),
    ];
    if own_subnet {
        args.extend(["--subnet".into(), host.bip()]);
    }
    Command::new("ip")
        .args(["netns", "exec", &host.ns.name])
        .arg(host.dr_ctl())
        .args(&args)
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
