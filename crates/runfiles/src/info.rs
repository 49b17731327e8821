//! `run_info.json`: the hardware, backend and model of a training run, written when the run
//! starts and read by the report. A resumed run leaves it as it was, except that a
//! data-parallel run records its newest one-peer reference (and its number of devices).

use serde::{Deserialize, Serialize};

/// `run_info.json`. Every field may be missing in files of older versions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// burn backend name (`flex`, `cuda`, `wgpu`).
    #[serde(default)]
    pub backend: Option<String>,
    /// Device kind (`cpu`, `gpu`).
    #[serde(default)]
    pub device: Option<String>,
    /// Human name of the device (CPU model, GPU name).
    #[serde(default)]
    pub device_name: Option<String>,
    /// Number of devices the run used.
    #[serde(default)]
    pub devices: Option<u64>,
    /// Trainable parameters.
    #[serde(default)]
    pub param_count: Option<u64>,
    /// Training FLOPs per token used for the FLOP counters (PaLM convention, see the model
    /// crate).
    #[serde(default)]
    pub flops_per_token: Option<f64>,
    /// Run seed.
    #[serde(default)]
    pub seed: Option<u64>,
    /// `f32`, `bf16` (mixed) or `bf16-pure`.
    #[serde(default)]
    pub precision: Option<String>,
    /// How training differentiated attention: `fused` or `composed`.
    #[serde(default)]
    pub attention: Option<String>,
    /// How the weights started: `random`, `expanded`, `init-from` or `resume`.
    #[serde(default)]
    pub init: Option<String>,
    /// Peak FLOP/s used for MFU.
    #[serde(default)]
    pub peak_flops: Option<f64>,
    /// True when `peak_flops` is an estimate (CPU, unknown GPU).
    #[serde(default)]
    pub peak_estimated: Option<bool>,
    /// Data-parallel runs only (more than one peer): tokens/s of one device running one peer's
    /// share of every micro-batch alone (`single_peer_rows` rows, the run's sequence length,
    /// gradient accumulation, model and kernels, AdamW; no communication), the median of a few
    /// timed steps measured before the peers started (again on every resume: the newest). The
    /// report's scaling efficiency is the run's global tokens/s ÷ (`devices` × this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single_peer_tokens_per_s: Option<f64>,
    /// Rows per micro-batch of the one-peer reference (`run.batch_size` ÷ peers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single_peer_rows: Option<u64>,
}
