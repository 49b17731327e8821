//! `hyperclone`: pretrain a small GPT, HyperClone it into a wider one, train that, and compare
//! against a randomly initialised baseline in measured device-hours.

mod alloc;
mod backend;
mod bench;
mod eval;
mod expand;
mod interop;
mod prepare;
mod report;
mod run;
mod train;

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
    /// The main job: train small → expand → train large, plus the random-init baseline, and
    /// write the report.
    Run(run::RunArgs),
    /// Tokenise text, JSONL, parquet or hub datasets into checksummed token shards.
    Prepare(prepare::PrepareArgs),
    /// Train a model from a TOML config (resumes automatically).
    Train(train::TrainArgs),
    /// Sample text from a trained model.
    Generate(train::GenerateArgs),
    /// HyperClone a trained model into a wider one that computes the same function.
    Expand(expand::ExpandArgs),
    /// Import a Hugging Face GPT-2/Llama checkpoint (hf:owner/name[@rev] or a folder) as a
    /// model folder.
    Import(interop::ImportArgs),
    /// Export a model folder or run as a Hugging Face folder (config.json + model.safetensors).
    Export(interop::ExportArgs),
    /// Validation loss and perplexity of a model folder or run on any prepared data.
    Eval(eval::EvalArgs),
    /// Measure training-step throughput (tokens/s, TFLOP/s, MFU) for a preset.
    Bench(bench::BenchArgs),
    /// Write report.md / report.html with plots for an experiment directory.
    Report(report::ReportArgs),
}

fn main() -> Result<()> {
    init_tracing();
    let cli = Cli::parse();
    // Training loops reuse their buffers step after step; `expand` frees the source for good.
    if matches!(cli.command, Command::Expand(_)) {
        alloc::return_freed_memory();
    } else {
        alloc::keep_freed_memory();
    }
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Prepare(args) => prepare::run(args),
        Command::Expand(args) => expand::run(args),
        Command::Train(args) => train::run(args),
        Command::Generate(args) => train::run_generate(args),
        Command::Report(args) => report::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Import(args) => interop::run_import(args),
        Command::Export(args) => interop::run_export(args),
    }
}

/// Logs go to stderr through `tracing`; `RUST_LOG` overrides the default `info` level.
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
