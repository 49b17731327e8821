//! `hyperclone`: pretrain a small GPT, HyperClone it into a wider one, train that, and compare
//! against a randomly initialised baseline in measured device-hours.

mod backend;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "hyperclone", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
}

fn main() -> Result<()> {
    init_tracing();
    let cli = Cli::parse();
    match cli.command {}
}

/// Logs go to stderr through `tracing`; `RUST_LOG` overrides the default `info` level.
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
