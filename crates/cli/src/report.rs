//! `hyperclone report DIR`: writes `report.md`, `report.html` and `plots/` for an experiment
//! directory and prints the headline numbers.

use std::path::PathBuf;

use anyhow::Context;

/// Arguments of `hyperclone report`.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Experiment directory (holding small/, expand/, large/, baseline/ or seed-<N>/).
    pub dir: PathBuf,
}

/// Writes the report of `args.dir` and prints a short summary table.
pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let summary = hyperclone_report::write_report(&args.dir)
        .with_context(|| format!("writing the report of {}", args.dir.display()))?;
    print!("{}", summary.table());
    println!();
    println!("{}", summary.verdict);
    Ok(())
}
