//! Debian's dockerd (docker.io) inside an emulated host, for the real-dockerd
//! tests: its own containerd, data and exec roots, socket, daemon.json and
//! logs in a directory of the test's, a busybox image built locally (no
//! registry is reachable), and on drop every container, daemon, mount and
//! file of it gone, also when a test fails.
//!
//! Both daemons enter only the host's network namespace (`nsenter --net`):
//! `ip netns exec` would remount /sys and hide the cgroup hierarchy that runc
//! needs. Containers outlive a stopped dockerd (`--live-restore`), so a test
//! can restart the daemon under running containers.
use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use nix::{
    mount::{umount2, MntFlags},
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use crate::{
    cluster::Container,
    etcd::wait_for,
    netns::{run, unique_prefix, Netns},
};

/// The image every test container runs: busybox-static and its applets.
pub const IMAGE: &str = "dr-busybox:test";
/// docker.io's client, by path: a machine may have another (newer) docker
/// earlier on PATH.
const DOCKER: &str = "/usr/bin/docker";
const BUSYBOX: &str = "/bin/busybox";
const APPLETS: [&str; 9] = [
    "sh", "sleep", "cat", "echo", "ip", "ping", "nc", "wget", "httpd",
];
/// overlay2 where the kernel and the data root's filesystem allow it; vfs
/// (full copies, slower) anywhere.
const STORAGE_DRIVERS: [&str; 2] = ["overlay2", "vfs"];
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A dockerd and its containerd for one emulated host; not running until
/// [`Dockerd::start`].
pub struct Dockerd {
    dir: PathBuf,
    netns: String,
    containerd: Option<Child>,
    dockerd: Option<Child>,
    /// Fixed by the first start: the data root is in this driver's format.
    storage_driver: Option<&'static str>,
}

impl Dockerd {
    /// Prepares a daemon for the host namespace `ns`: its directory, and a
    /// daemon.json that keeps dockerd's identity key there (by default it
    /// goes to /etc/docker). `up --docker-config` merges the bip into it.
    pub fn new(ns: &Netns) -> Result<Self> {
        let dir = std::env::temp_dir().join(unique_prefix("dr-dockerd-"));
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let dockerd = Self {
            dir,
            netns: ns.name.clone(),
            containerd: None,
            dockerd: None,
            storage_driver: None,
        };
        let config = serde_json::json!({
            "deprecated-key-path": dockerd.dir.join("key.json"),
        });
        fs::write(dockerd.daemon_json(), format!("{config:#}\n"))?;
        Ok(dockerd)
    }

    /// The daemon.json dockerd reads.
    pub fn daemon_json(&self) -> PathBuf {
        self.dir.join("daemon.json")
    }

    fn host_socket(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }

    fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd").join("containerd.sock")
    }

    /// Starts containerd (unless running) and dockerd, waits until dockerd
    /// answers, and imports the image on the first start.
    pub fn start(&mut self) -> Result<()> {
        if self.dockerd.is_some() {
            bail!("dockerd in {} is already running", self.netns);
        }
        if self.containerd.is_none() {
            self.start_containerd()?;
        }
        if let Some(driver) = self.storage_driver {
            return self.start_dockerd(driver);
        }
        let mut failures = Vec::new();
        for driver in STORAGE_DRIVERS {
            match self.start_dockerd(driver) {
                Ok(()) => {
                    self.storage_driver = Some(driver);
                    return self.import_image();
                }
                Err(e) => failures.push(format!("{driver}: {e:#}")),
            }
        }
        bail!(
            "dockerd did not start with any storage driver:\n{}",
            failures.join("\n")
        )
    }

    /// A containerd of our own (dockerd would start one with its state in
    /// the exec root, but also take /opt/containerd and leave it running if
    /// dockerd is killed). The CRI plugin is off: it would listen on TCP.
    fn start_containerd(&mut self) -> Result<()> {
        let dir = self.dir.join("containerd");
        fs::create_dir_all(&dir)?;
        let socket = self.containerd_socket();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            socket = socket.display(),
            opt = dir.join("opt").display(),
        );
        let config_path = dir.join("config.toml");
        fs::write(&config_path, config)?;
        let log = dir.join("containerd.log");
        let child = self.spawn_in_host(
            Command::new("containerd").arg("--config").arg(&config_path),
            &log,
        )?;
        let containerd = self.containerd.insert(child);
        let socket_arg = socket.to_str().context("non-UTF-8 path")?;
        wait_until_ready(containerd, &log, || {
            run("ctr", &["--address", socket_arg, "version"]).is_ok()
        })
        .context("containerd did not start")
    }

    fn start_dockerd(&mut self, storage_driver: &str) -> Result<()> {
        let log = self.dir.join("dockerd.log");
        let mut cmd = Command::new("dockerd");
        cmd.arg("--config-file")
            .arg(self.daemon_json())
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("dockerd.pid"))
            .args(["-H", &self.host_socket()])
            .arg("--containerd")
            .arg(self.containerd_socket())
            .args(["--storage-driver", storage_driver, "--live-restore"]);
        let child = self.spawn_in_host(&mut cmd, &log)?;
        let host = self.host_socket();
        let dockerd = self.dockerd.insert(child);
        let ready = wait_until_ready(dockerd, &log, || {
            run(DOCKER, &["-H", &host, "info"]).is_ok()
        });
        if ready.is_err() {
            // Leaves nothing running for the next attempt or the drop.
            stop_child(&mut self.dockerd)?;
        }
        ready.with_context(|| format!("dockerd ({storage_driver}) did not start"))
    }

    /// Spawns `cmd` in the host's network namespace, logging to `log`.
    fn spawn_in_host(&self, cmd: &mut Command, log: &Path) -> Result<Child> {
        let program = cmd.get_program().to_owned();
        let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(&program)
            .args(cmd.get_args())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {program:?} in {}", self.netns))
    }

    /// Stops dockerd (SIGTERM); containers keep running, as do containerd
    /// and its shims.
    pub fn stop(&mut self) -> Result<()> {
        if self.dockerd.is_none() {
            bail!("dockerd in {} is not running", self.netns);
        }
        stop_child(&mut self.dockerd)
    }

    /// `docker` against this daemon; an error carries its stderr.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        let host = self.host_socket();
        let mut full = vec!["-H", &host];
        full.extend_from_slice(args);
        Ok(run(DOCKER, &full)?.trim().to_string())
    }

    /// A root filesystem of busybox-static and links to its applets, imported.
    fn import_image(&self) -> Result<()> {
        let bin = self.dir.join("rootfs").join("bin");
        fs::create_dir_all(&bin)?;
        fs::copy(BUSYBOX, bin.join("busybox"))
            .with_context(|| format!("copying {BUSYBOX} (busybox-static)"))?;
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", bin.join(applet))?;
        }
        let (tar, rootfs) = (self.dir.join("rootfs.tar"), self.dir.join("rootfs"));
        let tar = path_str(&tar)?;
        run("tar", &["-C", path_str(&rootfs)?, "-cf", tar, "."])?;
        self.docker(&["import", tar, IMAGE])?;
        Ok(())
    }

    /// `docker run -d --name NAME OPTIONS... IMAGE COMMAND...`; returns the
    /// container's address on docker0 and its network namespace, named
    /// after the host's.
    pub fn run_container(
        &self,
        name: &str,
        options: &[&str],
        command: &[&str],
    ) -> Result<Container> {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(options);
        args.push(IMAGE);
        args.extend_from_slice(command);
        self.docker(&args)?;
        self.container(name)
    }

    /// A running container's address and network namespace.
    pub fn container(&self, name: &str) -> Result<Container> {
        let addr: Ipv4Addr = self
            .docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", name])?
            .parse()
            .with_context(|| format!("address of container {name}"))?;
        let ns = Netns::attach(&format!("{}-{name}", self.netns), self.pid(name)?)?;
        Ok(Container { ns, addr })
    }

    /// The host pid of a running container's first process.
    pub fn pid(&self, name: &str) -> Result<u32> {
        let pid: u32 = self
            .docker(&["inspect", "-f", "{{.State.Pid}}", name])?
            .parse()?;
        if pid == 0 {
            bail!("container {name} is not running");
        }
        Ok(pid)
    }

    /// Everything [`Drop`] does; every step runs, whatever failed before.
    fn tear_down(&mut self) -> Vec<String> {
        let mut failures = Vec::new();
        let mut note = |step: &str, result: Result<()>| {
            if let Err(e) = result {
                failures.push(format!("{step}: {e:#}"));
            }
        };
        if self.dockerd.is_some() {
            note("removing containers", self.remove_containers());
            note("stopping dockerd", stop_child(&mut self.dockerd));
        }
        if self.containerd.is_some() {
            note("killing containers left running", self.kill_tasks());
            note("stopping containerd", stop_child(&mut self.containerd));
        }
        note("killing shims", self.kill_leftover_shims());
        note("unmounting", unmount_under(&self.dir));
        note(
            "removing the directory",
            fs::remove_dir_all(&self.dir).map_err(Into::into),
        );
        failures
    }

    /// `docker rm -f` of every container: dockerd also unmounts their root
    /// filesystems and deletes their veths.
    fn remove_containers(&self) -> Result<()> {
        let ids = self.docker(&["ps", "-aq"])?;
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.lines());
            self.docker(&args)?;
        }
        Ok(())
    }

    /// Containers that a stopped dockerd left running: their shims' tasks.
    fn kill_tasks(&self) -> Result<()> {
        let socket = self.containerd_socket();
        let ctr = |args: &[&str]| {
            let mut full = vec!["--address", path_str(&socket)?, "--namespace", "moby"];
            full.extend_from_slice(args);
            run("ctr", &full)
        };
        for task in ctr(&["tasks", "ls", "-q"])?.lines() {
            ctr(&["tasks", "delete", "--force", task])?;
        }
        Ok(())
    }

    /// Shims outlive containerd; ours name its socket on their command line.
    fn kill_leftover_shims(&self) -> Result<()> {
        let socket = self.containerd_socket();
        let marker = path_str(&socket)?;
        for entry in fs::read_dir("/proc")? {
            let Some(pid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
                continue; // exited meanwhile
            };
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.starts_with("/usr/bin/containerd-shim") && cmdline.contains(marker) {
                kill(Pid::from_raw(pid), Signal::SIGKILL)
                    .with_context(|| format!("killing shim {pid}"))?;
            }
        }
        Ok(())
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        for failure in self.tear_down() {
            eprintln!(
                "cleaning up dockerd in {} ({}): {failure}",
                self.netns,
                self.dir.display()
            );
        }
    }
}

/// Polls `ready` until it holds; fails with the log's tail if `child`
/// exits first or the time runs out.
fn wait_until_ready(child: &mut Child, log: &Path, mut ready: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    let mut exited = None;
    let ok = wait_for(START_TIMEOUT, || {
        if let Ok(Some(status)) = child.try_wait() {
            exited = Some(status);
            return true;
        }
        ready()
    });
    let tail = || {
        let text = fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    };
    match (exited, ok) {
        (Some(status), _) => bail!("exited ({status}):\n{}", tail()),
        (None, false) => bail!("not ready after {:?}:\n{}", start.elapsed(), tail()),
        (None, true) => Ok(()),
    }
}

/// SIGTERM, then SIGKILL if the process is still there after
/// [`STOP_TIMEOUT`]; `None` afterwards.
fn stop_child(slot: &mut Option<Child>) -> Result<()> {
    let Some(mut child) = slot.take() else {
        return Ok(());
    };
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGTERM).context("SIGTERM")?;
    let mut exited = false;
    wait_for(STOP_TIMEOUT, || {
        exited = matches!(child.try_wait(), Ok(Some(_)));
        exited
    });
    if !exited {
        child.kill()?;
        child.wait()?;
        bail!("pid {pid} ignored SIGTERM for {STOP_TIMEOUT:?}; killed");
    }
    Ok(())
}

/// Unmounts every mount at or below `dir`, deepest first (a point mounted
/// twice is listed, and unmounted, twice).
fn unmount_under(dir: &Path) -> Result<()> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|point| point.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in points {
        umount2(&point, MntFlags::MNT_DETACH)
            .with_context(|| format!("unmounting {}", point.display()))?;
    }
    Ok(())
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("non-UTF-8 path {}", path.display()))
}
