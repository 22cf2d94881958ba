//! `muster`: the operator CLI. Parses the command line, runs it ([`muster_cli::run()`]), and on failure prints
//! `muster: <why>` on stderr and exits 1.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = muster_cli::Cli::parse();
    match muster_cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("muster: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
