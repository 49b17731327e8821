//! `hyperclone run`: the whole experiment (small → expand → large, plus baseline) and its
//! report, from one TOML file.

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use hyperclone_training::experiment::ExperimentSummary;
use hyperclone_training::{run_experiment, ExperimentConfig, ExperimentOptions, Stage};

use crate::backend::{run_job, Env, Job};

/// Run an experiment: train small, expand, train large and baseline, write the report.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Experiment file (TOML: [experiment], [data], [small.*], [expand], [large.*]).
    pub experiment: PathBuf,
    /// Override a value, type-checked: `--set small.run.max_steps=100` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Run only this stage: small, expand, large, baseline or report.
    #[arg(long, value_parser = |s: &str| s.parse::<Stage>())]
    pub stage: Option<Stage>,
}

struct RunJob {
    config: ExperimentConfig,
    only: Option<Stage>,
}

impl Job for RunJob {
    type Output = ExperimentSummary;
    fn run<AB: AutodiffBackend>(self, device: &AB::Device, env: Env) -> Result<Self::Output> {
        tracing::info!(
            "experiment {:?} on {} ({}) into {}",
            self.config.experiment.name,
            env.backend_name,
            env.device_name,
            self.config.experiment.out.display()
        );
        let options = ExperimentOptions {
            only: self.only,
            backend_name: env.backend_name.to_string(),
            device_name: env.device_name,
        };
        Ok(run_experiment::<AB>(&self.config, &options, device)?)
    }
}

/// `hyperclone run`.
pub fn run(args: RunArgs) -> Result<()> {
    let config = ExperimentConfig::load(&args.experiment, &args.overrides)?;
    let out = config.experiment.out.clone();
    // The small and large stages may name different backends; the small stage's choice runs
    // the pipeline (one process, one device).
    let (backend, precision) = (config.small.run.backend, config.small.run.precision);
    let summary = run_job(
        backend,
        precision,
        RunJob {
            config,
            only: args.stage,
        },
    )?;
    for o in &summary.stages {
        println!(
            "{:<9} {}",
            o.stage.dir_name(),
            if o.skipped {
                "skipped (finished earlier)"
            } else {
                "done"
            }
        );
    }
    if let Some(report) = &summary.report {
        println!("{}", report.table());
        println!("report: {}", out.join("report.md").display());
    }
    Ok(())
}
