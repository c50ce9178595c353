use clap::Parser;
use dr_ctl::{
    cli::{error_code, run, Cli},
    logging,
};

fn main() -> std::process::ExitCode {
    logging::init();
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
            let e = anyhow::Error::from(e);
            if json {
                let error = serde_json::json!({ "error": format!("{e:#}"), "exit_code": code });
                println!("{error}");
            } else {
                eprintln!("{}", logging::error_line(&e));
            }
            code.into()
        }
    }
}
