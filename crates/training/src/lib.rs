//! The training engine of hyperclone: typed TOML configuration with command-line overrides,
//! AdamW with decay groups and global-norm clipping, learning-rate schedules, a resumable
//! token-budgeted loop, checkpoints, and `metrics.jsonl` with device-hours and MFU.

pub mod checkpoint;
pub mod config;
pub mod lock;
pub mod metrics;
pub mod optim;
pub mod parallel;
mod progress;
pub mod scaling;
pub mod schedule;
pub mod trainer;

pub use config::{BackendKind, ConfigFileError, Precision, TrainConfig};
pub use hyperclone_runfiles::CostOffset;
pub use parallel::{register_device_sum, AllReduceChoice, DeviceSumFn, Launch, ParallelError};
pub use scaling::{measure_single_peer, SinglePeerReference};
pub use trainer::{
    evaluate, time_data_parallel_steps, train, train_data_parallel, DataParallelBench, InitKind,
    StepTensors, SymmetryFn, TrainError, TrainOptions, TrainSummary, Trainer,
};
