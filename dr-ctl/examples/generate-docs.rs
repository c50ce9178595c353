//! Writes dr-ctl's shell completions and man pages, generated from its clap
//! definitions, into OUT_DIR/completions and OUT_DIR/man for the Debian
//! package (`cargo xtask package`). An example rather than part of xtask:
//! xtask builds before `bootstrap` installs the eBPF toolchain dr-ctl needs.
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;
use clap_complete::Shell;
use dr_ctl::cli::Cli;

fn main() -> Result<()> {
    let out = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .context("usage: generate-docs OUT_DIR")?,
    );
    let completions = out.join("completions");
    let man = out.join("man");
    for dir in [&completions, &man] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "dr-ctl", &completions)
            .with_context(|| format!("{shell} completion"))?;
    }
    clap_mangen::generate_to(Cli::command(), &man).context("man pages")?;
    Ok(())
}
