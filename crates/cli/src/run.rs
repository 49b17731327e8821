//! `hyperclone run`: the whole experiment (small → expand → large, plus baseline) and its
//! report, from one TOML file.

use std::path::PathBuf;

use anyhow::Result;
use hyperclone_experiment::{
    run_experiment, ExperimentConfig, ExperimentOptions, ExperimentSummary, Stage,
};
use hyperclone_model::GptAutodiffBackend;
use hyperclone_training::{BackendKind, Precision};

use crate::backend::{check_available, run_job, Env, Job};

/// Run an experiment: train small, expand, train large and baseline, write the report.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Experiment file (TOML: [experiment], [data], [small.*], [expand], [large.*]).
    pub experiment: PathBuf,
    /// Override a value, type-checked: `--set small.run.max_steps=100` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Run only this stage: small, expand, large, baseline, control or report (with a growth
    /// chain, expand and large select every growth stage's, in order).
    #[arg(long, value_parser = |s: &str| s.parse::<Stage>())]
    pub stage: Option<Stage>,
    /// Repeat every stage for seeds 1..=N, each replica in `<out>/seed-N/` (sets
    /// `experiment.seeds`); the report gives every figure as mean and range over the seeds.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub seeds: Option<u64>,
    /// Data-parallel peers for every training stage (sets small.run.devices and
    /// large.run.devices; see `hyperclone train --devices`).
    #[arg(long, value_name = "N")]
    pub devices: Option<usize>,
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
    let mut overrides = args.overrides.clone();
    if let Some(n) = args.seeds {
        let seeds: Vec<String> = (1..=n).map(|s| s.to_string()).collect();
        overrides.push(format!("experiment.seeds=[{}]", seeds.join(", ")));
    }
    if let Some(n) = args.devices {
        overrides.push(format!("small.run.devices={n}"));
        overrides.push(format!("large.run.devices={n}"));
    }
    let config = ExperimentConfig::load(&args.experiment, &overrides)?;
    let out = config.experiment.out.clone();
    let small = (config.small.run.backend, config.small.run.precision);
    let large = (config.large.run.backend, config.large.run.precision);
    // Each stage runs on the backend and precision of its own [*.run] section. When they agree
    // (the usual case) one job runs every stage; otherwise the small stage runs on its own,
    // then the rest (which skips the finished small stage) on the large section's backend, in
    // one job, so that a growth chain's expand and large stages alternate as they must.
    let plan: Vec<(Option<Stage>, (BackendKind, Precision))> = match args.stage {
        Some(Stage::Small) => vec![(Some(Stage::Small), small)],
        Some(stage) => vec![(Some(stage), large)],
        None if small == large => vec![(None, small)],
        None => vec![(Some(Stage::Small), small), (None, large)],
    };
    for (_, (backend, precision)) in &plan {
        check_available(*backend, *precision)?;
    }
    let mut summary = ExperimentSummary {
        stages: Vec::new(),
        report: None,
    };
    for (job, (only, (backend, precision))) in plan.into_iter().enumerate() {
        let part = run_job(
            backend,
            precision,
            RunJob {
                config: config.clone(),
                only,
            },
        )?;
        // The small stage of a later job is the one the first job ran, skipped: listed once.
        summary.stages.extend(
            part.stages
                .into_iter()
                .filter(|o| job == 0 || o.stage != Stage::Small),
        );
        summary.report = part.report.or(summary.report);
    }
    for o in &summary.stages {
        println!(
            "{:<9} {:<8} {}",
            o.name,
            o.seed.map_or(String::new(), |s| format!("seed {s}")),
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
