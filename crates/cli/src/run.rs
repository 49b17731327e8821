//! `hyperclone run`: the whole experiment (small → expand → large, plus baseline) and its
//! report, from one TOML file.

use std::path::PathBuf;

use anyhow::Result;
use hyperclone_model::GptAutodiffBackend;
use hyperclone_training::experiment::ExperimentSummary;
use hyperclone_training::{
    run_experiment, BackendKind, ExperimentConfig, ExperimentOptions, Precision, Stage,
};

use crate::backend::{check_available, run_job, Env, Job};

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
    fn run<AB: GptAutodiffBackend>(self, device: &AB::Device, env: Env) -> Result<Self::Output> {
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
    let small = (config.small.run.backend, config.small.run.precision);
    let large = (config.large.run.backend, config.large.run.precision);
    // Each stage runs on the backend and precision of its own [*.run] section. When they agree
    // (the usual case) one job runs every stage; otherwise the small stage runs on its own,
    // then the rest on the large section's backend.
    let plan: Vec<(Option<Stage>, (BackendKind, Precision))> = match args.stage {
        Some(Stage::Small) => vec![(Some(Stage::Small), small)],
        Some(stage) => vec![(Some(stage), large)],
        None if small == large => vec![(None, small)],
        None => [
            Stage::Small,
            Stage::Expand,
            Stage::Large,
            Stage::Baseline,
            Stage::Report,
        ]
        .into_iter()
        .map(|s| (Some(s), if s == Stage::Small { small } else { large }))
        .collect(),
    };
    for (_, (backend, precision)) in &plan {
        check_available(*backend, *precision)?;
    }
    let mut summary = ExperimentSummary {
        stages: Vec::new(),
        report: None,
    };
    for (only, (backend, precision)) in plan {
        let part = run_job(
            backend,
            precision,
            RunJob {
                config: config.clone(),
                only,
            },
        )?;
        summary.stages.extend(part.stages);
        summary.report = part.report.or(summary.report);
    }
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
