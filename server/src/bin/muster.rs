//! `muster`: the operator CLI. All logic lives in `muster_server::cli`.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = muster_server::cli::Cli::parse();
    match muster_server::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("muster: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
