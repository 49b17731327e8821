//! `expand.json`: the summary of an expansion, written beside the expanded model by the cloning
//! crate and read by the report (its cost and check) and by training (the factors the symmetry
//! metric needs).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// File name of the expansion summary inside an expanded model folder.
pub const EXPAND_FILE: &str = "expand.json";

/// `expand.json`. The verification fields are `null` when verification was skipped; every field
/// may be missing in files of older versions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExpandRecord {
    /// Wall-clock seconds of the expansion itself: load and expand (not the optional
    /// verification, see `verify_s`, nor the final write). The cost the report charges.
    #[serde(default)]
    pub wall_s: Option<f64>,
    /// `wall_s / 3600 × 1 device`.
    #[serde(default)]
    pub device_hours: Option<f64>,
    /// Parameters of the source model.
    #[serde(default)]
    pub source_params: Option<u64>,
    /// Parameters of the expanded model.
    #[serde(default)]
    pub target_params: Option<u64>,
    /// Width factor n.
    #[serde(default)]
    pub width_factor: Option<u32>,
    /// FFN factor m.
    #[serde(default)]
    pub ffn_factor: Option<u32>,
    /// The cloning variant (`symmetric`, `noisy-symmetric`, `diagonal`, `noisy-diagonal`).
    #[serde(default)]
    pub variant: Option<String>,
    /// SNR in dB of the noise (`null` for the noiseless variants).
    #[serde(default)]
    pub snr_db: Option<f64>,
    /// Seed of the noise.
    #[serde(default)]
    pub seed: Option<u64>,
    /// `max |Δlogit|` on the probe batch.
    #[serde(default)]
    pub max_abs_logit_diff: Option<f64>,
    /// `max |Δlogit| / max |source logit|` on the probe batch.
    #[serde(default)]
    pub rel_err: Option<f64>,
    /// `KL(source ‖ target)`, nats, mean over probe positions.
    #[serde(default)]
    pub kl: Option<f64>,
    /// The device the expansion ran on, in words.
    #[serde(default)]
    pub device: Option<String>,
    /// The relative tolerance the verification was held to (`null` when skipped).
    #[serde(default)]
    pub tolerance: Option<f64>,
    /// The source model folder.
    #[serde(default)]
    pub source_dir: Option<PathBuf>,
    /// Wall-clock seconds of the verification forward passes (`null` when skipped). Kept out
    /// of `wall_s`: it is an optional check, and on GPU backends it is where the wide shapes'
    /// kernels get compiled (seen through wgpu on a CPU: 24 s against 0.05 s of expansion).
    #[serde(default)]
    pub verify_s: Option<f64>,
    /// Depth factor K (`null`/absent: 1, width only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth_factor: Option<u32>,
    /// How the new layers were filled: `zero` or `stack` (absent without depth growth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth_mode: Option<String>,
    /// Where `zero` growth put the new blocks: `interleave` or `top`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth_placement: Option<String>,
    /// Which growth came first with both: `width-first` or `depth-first`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
    /// `false` when the expansion is not meant to preserve the function (`stack` depth
    /// growth): the logit change and KL are then measurements, not a check (absent: true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_preserving: Option<bool>,
}

impl ExpandRecord {
    /// Device-hours of the expansion: `device_hours`, else `wall_s / 3600`, else `None`.
    pub fn cost_hours(&self) -> Option<f64> {
        self.device_hours.or(self.wall_s.map(|s| s / 3600.0))
    }

    /// The (width, FFN) factors, when both are recorded.
    pub fn factors(&self) -> Option<(usize, usize)> {
        Some((self.width_factor? as usize, self.ffn_factor? as usize))
    }
}
