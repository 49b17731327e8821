//! The main job of hyperclone: one experiment file, its stages, one report.
//!
//! ```text
//! small     train the small model from random init              → <out>/small/
//! expand    HyperClone small/final into the wide model          → <out>/expand/
//!           (with `[large.cloned] optimizer_state = "transfer"`: the small run's last
//!           checkpoint, and its AdamW state too, see [`transfer`])
//! large     train the wide model from the expanded weights      → <out>/large/
//! baseline  train the same wide model from random init          → <out>/baseline/
//! control   train the small model on, to the baseline's FLOPs   → <out>/control/   ([control])
//! report    report.md, report.html and plots                    → <out>/
//! ```
//!
//! With a growth chain (`[[growth]]` tables, see [`config`]) the expand and large stages repeat,
//! one pair per growth stage, each growing the model the previous one trained:
//!
//! ```text
//! expand-1  HyperClone small/final                                → <out>/expand-1/
//! large-1   train it for growth stage 1's budget                  → <out>/large-1/
//! expand-2  HyperClone large-1/final                              → <out>/expand-2/
//! large-2   train it for growth stage 2's budget                  → <out>/large-2/
//! baseline  the final shape from random init, on [large.*]        → <out>/baseline/
//! ```
//!
//! The cloned run and the baseline share the data order, batch, budget and seed of `[large.run]`;
//! each may have its own optimiser and schedule (`[large.cloned.*]`). With several seeds the
//! stages live under `<out>/seed-N/`. The stages are resumable one by one: see [`pipeline`].

pub mod config;
pub mod pipeline;
pub mod transfer;

pub use config::{
    ClonedArm, ClonedOptimizerState, ControlSection, ExperimentConfig, ExperimentSection,
    GrowthLink, GrowthStage, LargeSection, ReplicaSeeds, SmallSection, WIDE_SEED_OFFSET,
};
pub use pipeline::{
    run_experiment, symmetry_metric, ExperimentError, ExperimentOptions, ExperimentSummary, Stage,
    StageOutcome,
};
pub use transfer::{
    expand_adamw_state, map_optimizer_state, transfer_optimizer_state, write_optimizer_state,
    MappedState, OptimizerTransfer, TransferError,
};
