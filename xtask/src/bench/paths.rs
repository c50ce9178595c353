//! Each datapath path's own cost per packet, apart from everything around
//! it: the datapath suite's ignored `program_cost_per_path` runs every
//! path's program on a crafted frame 20,000 times through
//! BPF_PROG_TEST_RUN (warm, one frame per run, the kernel's run time) and
//! prints one `program-cost {json}` line per path, read here.
use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use super::Bench;

const TEST: &str = "cost::program_cost_per_path";

impl Bench {
    pub(super) fn paths_round(&mut self, round: usize) -> Result<()> {
        let out = std::process::Command::new("cargo")
            .args([
                "test",
                "-p",
                "dr-tests",
                "--test",
                "datapath",
                "--",
                "--ignored",
                "--exact",
                TEST,
                "--nocapture",
            ])
            .current_dir(crate::workspace_root())
            .output()
            .context("running the datapath's cost test")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "{TEST} failed: {}\n{stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut paths = 0;
        for line in stdout.lines() {
            let Some(json) = line.strip_prefix("program-cost ") else {
                continue;
            };
            let v: Value = serde_json::from_str(json)?;
            let path = v["path"].as_str().context("path")?;
            let ns = v["median_ns"].as_f64().context("median_ns")?;
            self.record("path", "dr", round, path, "ns/packet", ns);
            paths += 1;
        }
        if paths == 0 {
            bail!("{TEST} printed no costs:\n{stdout}");
        }
        Ok(())
    }
}
