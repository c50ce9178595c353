//! Where dr-ctl's logs go: to journald with their severity when systemd
//! connected stderr to the journal, as plain text on stderr otherwise.
//! `DR_LOG` filters them (tracing's EnvFilter syntax; default `warn`).
use std::os::{fd::AsFd as _, unix::fs::MetadataExt as _};

use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _, EnvFilter};

/// Whether stderr is the journal stream systemd set up for this service:
/// `$JOURNAL_STREAM` names its device and inode (`DEV:INODE`), and a child
/// whose stderr was redirected elsewhere must not count (sd_journal docs).
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(stderr).metadata() else {
        return false;
    };
    stream.to_str() == Some(&format!("{}:{}", meta.dev(), meta.ino()))
}

/// Installs the global subscriber.
pub fn init() {
    let filter = EnvFilter::try_from_env("DR_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    if stderr_is_journal() {
        // No journald socket (e.g. in a container): plain text still reaches the stream.
        if let Ok(journal) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(filter)
                .with(journal)
                .init();
            return;
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The line for a failed command. In the journal it carries the error
/// severity through the stream's `<3>` prefix (sd-daemon(3)).
pub fn error_line(error: &anyhow::Error) -> String {
    let prefix = if stderr_is_journal() { "<3>" } else { "" };
    format!("{prefix}dr-ctl: error: {error:#}")
}
