//! `relayctl` entry point: parse flags, run, map the error to an exit code.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = relayctl::Cli::parse();
    match relayctl::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(relayctl::exit_code(&e))
        }
    }
}
