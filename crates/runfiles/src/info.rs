//! `run_info.json`: the hardware, backend and model of a training run, written once when the
//! run starts (not on resume) and read by the report.

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
}
