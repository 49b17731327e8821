//! `metrics.jsonl` (one line per optimiser step, one per evaluation, flushed as written),
//! `run_info.json`, and the per-device peak table behind MFU.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One training-step line of `metrics.jsonl`. Cumulative fields count the whole run, resumed
/// segments included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainLine {
    /// Always `"train"`.
    pub kind: String,
    /// Optimiser step, from 1.
    pub step: u64,
    /// Cumulative training tokens.
    pub tokens: u64,
    /// Mean training loss of this step's micro-batches.
    pub loss: f64,
    /// Learning rate used by this step.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Wall seconds of this step (data, forward, backward, update, metrics sync).
    pub step_time_s: f64,
    /// Tokens per second of this step.
    pub tokens_per_s: f64,
    /// Cumulative wall seconds spent in training steps, evaluations and checkpoints.
    pub wall_s: f64,
    /// Cumulative device-hours: wall hours × devices, measured.
    pub device_hours: f64,
    /// Cumulative training FLOPs (flops_per_token × tokens).
    pub flops: f64,
    /// Achieved TFLOP/s of this step.
    pub tflops_per_s: f64,
    /// Model FLOPs utilisation against the device's peak (null when unknown).
    pub mfu: Option<f64>,
    /// True when the peak is an estimate (CPU, unknown GPU).
    pub mfu_estimated: bool,
    /// Peak memory in bytes (process peak RSS on the CPU; null where the backend cannot say).
    pub peak_memory_bytes: Option<u64>,
    /// Seconds of this step spent drawing the batch and building its tensors.
    pub data_time_s: f64,
}

/// Mean cosine similarity between cloned sub-blocks (runs started from an expanded model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SymmetryLine {
    /// Mean over all cloned weights.
    pub mean: f64,
    /// Mean per transformer block.
    pub per_layer: Vec<f64>,
}

/// One evaluation line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalLine {
    /// Always `"eval"`.
    pub kind: String,
    /// Optimiser step after which the evaluation ran (0: before training).
    pub step: u64,
    /// Cumulative training tokens.
    pub tokens: u64,
    /// Mean validation loss over the fixed validation windows.
    pub val_loss: f64,
    /// exp(val_loss).
    pub val_ppl: f64,
    /// Cumulative wall seconds.
    pub wall_s: f64,
    /// Cumulative device-hours.
    pub device_hours: f64,
    /// Cumulative training FLOPs.
    pub flops: f64,
    /// Symmetry of the cloned copies, when the run started from an expanded model.
    pub symmetry: Option<SymmetryLine>,
}

fn composed() -> String {
    "composed".into()
}

/// Describes the run's hardware and model for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Backend name (`flex`, `cuda`, `wgpu`).
    pub backend: String,
    /// Device kind (`cpu`, `gpu`).
    pub device: String,
    /// Human name of the device (CPU model, GPU name).
    pub device_name: String,
    /// Number of devices the run used.
    pub devices: u32,
    /// Trainable parameters.
    pub param_count: u64,
    /// Training FLOPs per token (PaLM convention, see the model crate).
    pub flops_per_token: f64,
    /// Run seed.
    pub seed: u64,
    /// `f32`, `bf16` (mixed) or `bf16-pure`.
    pub precision: String,
    /// How training differentiated attention: `fused` or `composed` (runs recorded before the
    /// choice existed used `composed`).
    #[serde(default = "composed")]
    pub attention: String,
    /// `random`, `expanded` (from `--init-from` of an expanded model), `init-from` or `resume`.
    pub init: String,
    /// Peak FLOP/s used for MFU and whether it is an estimate.
    pub peak_flops: Option<f64>,
    /// True when `peak_flops` is an estimate.
    pub peak_estimated: bool,
}

/// Appends lines to `metrics.jsonl`, flushing each one.
#[derive(Debug)]
pub struct MetricsWriter {
    file: File,
    path: PathBuf,
}

impl MetricsWriter {
    /// Opens (creating or appending to) the file.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Writes one JSON line and flushes it.
    pub fn write<T: Serialize>(&mut self, line: &T) -> std::io::Result<()> {
        let mut text = serde_json::to_string(line).map_err(std::io::Error::other)?;
        text.push('\n');
        self.file.write_all(text.as_bytes())?;
        self.file.flush()
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads the train and eval lines of a metrics file, deduplicated by step (a resumed run
/// re-logs steps; the last occurrence wins), sorted by step.
pub fn read_metrics(path: &Path) -> std::io::Result<(Vec<TrainLine>, Vec<EvalLine>)> {
    let file = File::open(path)?;
    let mut train = std::collections::BTreeMap::new();
    let mut eval = std::collections::BTreeMap::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |e: serde_json::Error| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}:{}: {e}", path.display(), i + 1),
            )
        };
        let v: serde_json::Value = serde_json::from_str(&line).map_err(bad)?;
        match v.get("kind").and_then(|k| k.as_str()) {
            Some("train") => {
                let t: TrainLine = serde_json::from_value(v).map_err(bad)?;
                train.insert(t.step, t);
            }
            Some("eval") => {
                let e: EvalLine = serde_json::from_value(v).map_err(bad)?;
                eval.insert(e.step, e);
            }
            _ => {}
        }
    }
    Ok((train.into_values().collect(), eval.into_values().collect()))
}

/// Peak dense FLOP/s of a device by name and precision, and whether it is an estimate.
/// Known GPUs come from their data sheets (dense, no sparsity); f32 on tensor-core GPUs is
/// counted at the TF32 rate since burn's matmuls run f32 on tensor cores as TF32.
pub fn peak_flops(device_name: &str, bf16: bool) -> Option<(f64, bool)> {
    let n = device_name.to_ascii_lowercase();
    let table: [(&str, f64, f64); 6] = [
        // (name contains, bf16 dense, tf32 dense)
        ("h200", 989e12, 495e12),
        ("h100", 989e12, 495e12),
        ("a100", 312e12, 156e12),
        ("l40s", 362e12, 183e12),
        ("a10g", 125e12, 62.5e12),
        ("rtx 4090", 165e12, 82.6e12),
    ];
    for (key, bf, tf) in table {
        if n.contains(key) {
            return Some((if bf16 { bf } else { tf }, false));
        }
    }
    if n.starts_with("cpu") {
        // Estimate: cores × clock × 32 f32 FLOP/cycle (two AVX2 FMA units).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let mhz = cpu_mhz().unwrap_or(2500.0);
        return Some((cores * mhz * 1e6 * 32.0, true));
    }
    None
}

fn cpu_mhz() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
}

/// The CPU's model name from /proc/cpuinfo, prefixed with `cpu: `.
pub fn cpu_name() -> String {
    let name = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("cpu: {name} ({cores} threads)")
}

/// Peak resident memory of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = text
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_table_knows_h100_and_estimates_cpu() {
        assert_eq!(
            peak_flops("NVIDIA H100 80GB HBM3", true),
            Some((989e12, false))
        );
        assert_eq!(
            peak_flops("NVIDIA H100 80GB HBM3", false),
            Some((495e12, false))
        );
        let (cpu, est) = peak_flops(&cpu_name(), false).unwrap();
        assert!(est && cpu > 1e9);
        assert_eq!(peak_flops("Mystery Accelerator", false), None);
    }

    #[test]
    fn metrics_dedupe_keeps_the_last_line_of_a_step() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("metrics.jsonl");
        let mut w = MetricsWriter::open(&path).unwrap();
        let line = |step, loss| TrainLine {
            kind: "train".into(),
            step,
            tokens: step * 10,
            loss,
            lr: 1e-3,
            grad_norm: 1.0,
            step_time_s: 0.1,
            tokens_per_s: 100.0,
            wall_s: step as f64,
            device_hours: step as f64 / 3600.0,
            flops: 1.0,
            tflops_per_s: 1.0,
            mfu: None,
            mfu_estimated: true,
            peak_memory_bytes: None,
            data_time_s: 0.0,
        };
        for (s, l) in [(1, 5.0), (2, 4.0), (3, 3.5), (2, 4.1), (3, 3.6), (4, 3.0)] {
            w.write(&line(s, l)).unwrap();
        }
        let (train, eval) = read_metrics(&path).unwrap();
        assert!(eval.is_empty());
        let losses: Vec<f64> = train.iter().map(|t| t.loss).collect();
        assert_eq!(losses, vec![5.0, 4.1, 3.6, 3.0]);
        std::fs::write(&path, "{\"kind\":\"train\",\"step\":1}\n").unwrap();
        let e = read_metrics(&path).unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl:1"), "{e}");
    }
}
