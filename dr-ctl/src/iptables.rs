//! Reading the host's iptables rules (Docker's DNAT for published ports),
//! through `iptables-save`: Docker writes its rules with the iptables
//! command, and its save output is the same for the nft and legacy
//! backends.
use std::process::Command;

/// The rules of `table` as `iptables-save -t <table>` prints them, or why
/// they could not be read.
pub fn save(table: &str) -> Result<String, String> {
    let out = Command::new("iptables-save")
        .args(["-t", table])
        .output()
        .map_err(|e| format!("iptables-save: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "iptables-save -t {table}: {} ({})",
            stderr.trim(),
            out.status
        ));
    }
    String::from_utf8(out.stdout).map_err(|_| format!("iptables-save -t {table}: not UTF-8"))
}
