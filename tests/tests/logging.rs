//! dr-ctl's logs under systemd: to journald with their severity when stderr
//! is the journal stream. A private mount namespace stands in for a
//! systemd host: a tmpfs on /run with socat bound to journald's socket.
use std::process::Command;

use dr_tests::{dr_ctl_path, netns::unique_prefix, require_root};

/// The fields of journald's native protocol datagrams: `KEY=value\n`, or
/// `KEY\n`, a little-endian u64 length, the value and `\n`.
fn journal_fields(mut data: &[u8]) -> Vec<(String, String)> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut fields = Vec::new();
    while let Some(nl) = data.iter().position(|&b| b == b'\n') {
        let line = &data[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.push((text(&line[..eq]), text(&line[eq + 1..])));
            data = &data[nl + 1..];
        } else {
            let len = u64::from_le_bytes(data[nl + 1..nl + 9].try_into().unwrap()) as usize;
            fields.push((text(line), text(&data[nl + 9..nl + 9 + len])));
            data = &data[nl + 9 + len + 1..];
        }
    }
    fields
}

#[test]
fn logs_reach_journald_with_their_severity_under_systemd() {
    require_root();
    let dir = std::env::temp_dir().join(unique_prefix("dr-journal-"));
    std::fs::create_dir(&dir).unwrap();
    let (journal, stderr) = (dir.join("journal"), dir.join("stderr"));
    // In the private namespace only: /run is a fresh tmpfs there.
    let script = r#"
set -e
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/journal
socat -u UNIX-RECV:/run/systemd/journal/socket CREATE:"$JOURNAL" &
socat=$!
while [ ! -S /run/systemd/journal/socket ]; do kill -0 $socat || exit 1; sleep 0.05; done
exec 2>"$STDERR"
export JOURNAL_STREAM="$(stat -c %d:%i "$STDERR")" DR_LOG=info
"$DR_CTL" metrics --listen 127.0.0.1:0 &
server=$!
until grep -q "serving metrics" "$JOURNAL" 2>/dev/null; do kill -0 $server || exit 1; sleep 0.05; done
kill $server
! "$DR_CTL" peer add 10.0.0.0/33 via 192.0.2.1
kill $socat
"#;
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("JOURNAL", &journal)
        .env("STDERR", &stderr)
        .env("DR_CTL", dr_ctl_path())
        .output()
        .unwrap();
    let fields = journal_fields(&std::fs::read(&journal).unwrap_or_default());
    let stderr_text = std::fs::read_to_string(&stderr).unwrap_or_default();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The event went to journald with its severity (tracing-journald maps
    // info to notice, 5), not to the stream.
    let field = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        field("MESSAGE"),
        Some("serving metrics on http://127.0.0.1:0/metrics"),
        "{fields:?}"
    );
    assert_eq!(field("PRIORITY"), Some("5"), "{fields:?}");
    assert_eq!(field("SYSLOG_IDENTIFIER"), Some("dr-ctl"), "{fields:?}");
    assert!(!stderr_text.contains("serving metrics"), "{stderr_text}");
    // The final error line carries the error priority (3) for the stream.
    assert!(
        stderr_text.starts_with("<3>dr-ctl: error: "),
        "{stderr_text}"
    );
}

#[test]
fn logs_are_plain_text_elsewhere() {
    // A JOURNAL_STREAM inherited by a process whose stderr is a pipe is not the journal.
    let out = Command::new(dr_ctl_path())
        .args(["peer", "add", "10.0.0.0/33", "via", "192.0.2.1"])
        .env("JOURNAL_STREAM", "1:1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.starts_with("dr-ctl: error: "), "{stderr}");
}
