use clap::Parser;
use dr_ctl::cli::{error_code, run, Cli};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("DR_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let json = cli.json;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(outcome) => {
            print!("{}", outcome.output);
            outcome.code.into()
        }
        Err(e) => {
            let code = error_code(&e);
            let message = format!("{:#}", anyhow::Error::from(e));
            if json {
                let error = serde_json::json!({ "error": message, "exit_code": code });
                println!("{error}");
            } else {
                eprintln!("dr-ctl: error: {message}");
            }
            code.into()
        }
    }
}
