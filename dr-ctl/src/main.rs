use clap::Parser;
use dr_ctl::{
    cli::{run, Cli},
    logging,
};

fn main() -> std::process::ExitCode {
    logging::init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(out) => {
            print!("{out}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}", logging::error_line(&anyhow::Error::from(e)));
            std::process::ExitCode::FAILURE
        }
    }
}
