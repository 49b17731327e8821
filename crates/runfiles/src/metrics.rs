//! `metrics.jsonl`: one JSON object per line, `kind` = `"train"`, `"eval"` or `"warmup"`,
//! written by the trainer ([`MetricsWriter`], [`Line`]) and read by the report
//! ([`read_metrics`]) with the same types.
//!
//! A resumed run re-logs the steps between its last checkpoint and the interruption, so the
//! reader deduplicates by `(kind, step)` and keeps the LAST occurrence. `"warmup"` lines (the
//! trainer's discarded first step, kept off the device-hour clock) are summed. Unknown fields and
//! unknown kinds are ignored; every field except `kind` and `step` may be missing or null (files
//! of older versions, lines cut short), which is why they are `Option`s on both sides.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::RunFileError;

/// One `"kind":"train"` line: statistics of one optimiser step.
///
/// `tokens`, `wall_s`, `device_hours` and `flops` are cumulative for the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainLine {
    /// Optimiser step, counted from 1.
    pub step: u64,
    /// Tokens consumed so far (cumulative).
    #[serde(default)]
    pub tokens: Option<u64>,
    /// Training loss of this step.
    #[serde(default)]
    pub loss: Option<f64>,
    /// Learning rate used for this step.
    #[serde(default)]
    pub lr: Option<f64>,
    /// Global gradient norm before clipping.
    #[serde(default)]
    pub grad_norm: Option<f64>,
    /// Seconds spent in this step.
    #[serde(default)]
    pub step_time_s: Option<f64>,
    /// Throughput of this step.
    #[serde(default)]
    pub tokens_per_s: Option<f64>,
    /// Wall-clock seconds since the run started (cumulative).
    #[serde(default)]
    pub wall_s: Option<f64>,
    /// Device-hours used so far (cumulative; wall hours × devices).
    #[serde(default)]
    pub device_hours: Option<f64>,
    /// Training FLOPs so far (cumulative).
    #[serde(default)]
    pub flops: Option<f64>,
    /// Achieved TFLOP/s in this step.
    #[serde(default)]
    pub tflops_per_s: Option<f64>,
    /// Model FLOPs utilisation in this step (fraction of peak), when the peak is known.
    #[serde(default)]
    pub mfu: Option<f64>,
    /// Whether `mfu` used an estimated (not a table) device peak.
    #[serde(default)]
    pub mfu_estimated: Option<bool>,
    /// Peak device memory so far, in bytes.
    #[serde(default)]
    pub peak_memory_bytes: Option<u64>,
    /// Seconds of this step spent waiting for data.
    #[serde(default)]
    pub data_time_s: Option<f64>,
}

/// The symmetry metric of a cloned model: mean cosine similarity between cloned sub-blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SymmetryLine {
    /// Mean over layers (1.0 right after symmetric cloning).
    pub mean: f64,
    /// One value per layer.
    #[serde(default)]
    pub per_layer: Vec<f64>,
}

/// One `"kind":"eval"` line: a validation measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalLine {
    /// Optimiser step at which it was taken (0 = before training).
    pub step: u64,
    /// Tokens consumed so far (cumulative).
    #[serde(default)]
    pub tokens: Option<u64>,
    /// Validation loss (mean cross-entropy, nats).
    #[serde(default)]
    pub val_loss: Option<f64>,
    /// Validation perplexity.
    #[serde(default)]
    pub val_ppl: Option<f64>,
    /// Wall-clock seconds since the run started (cumulative).
    #[serde(default)]
    pub wall_s: Option<f64>,
    /// Device-hours used so far (cumulative).
    #[serde(default)]
    pub device_hours: Option<f64>,
    /// Training FLOPs so far (cumulative).
    #[serde(default)]
    pub flops: Option<f64>,
    /// Symmetry metric, only for runs initialised from an expanded checkpoint.
    #[serde(default)]
    pub symmetry: Option<SymmetryLine>,
}

/// One `"kind":"warmup"` line: the discarded first step of a training call (kernel compilation
/// and autotuning on GPU backends), timed but kept off the device-hour clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarmupLine {
    /// The step the run stood at (0 for a fresh run).
    pub step: u64,
    /// Wall seconds of the warm-up step.
    pub seconds: f64,
}

/// A line as written: its `kind` tag and its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Line {
    /// A training step.
    Train(TrainLine),
    /// An evaluation.
    Eval(EvalLine),
    /// The discarded warm-up step.
    Warmup(WarmupLine),
}

/// Appends [`Line`]s to `metrics.jsonl`, flushing each one (a killed run loses at most the line
/// being written, which the reader skips).
#[derive(Debug)]
pub struct MetricsWriter {
    file: File,
    path: PathBuf,
}

impl MetricsWriter {
    /// Opens (creating or appending to) the file.
    pub fn open(path: &Path) -> Result<Self, RunFileError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| RunFileError::Io {
                action: "opening",
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Writes one line and flushes it.
    pub fn write(&mut self, line: &Line) -> Result<(), RunFileError> {
        let mut text = serde_json::to_string(line).expect("metrics lines serialise");
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|source| RunFileError::Io {
                action: "appending to",
                path: self.path.clone(),
                source,
            })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The deduplicated content of one `metrics.jsonl`, each list sorted by step.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Metrics {
    /// Train lines, one per step, ascending.
    pub train: Vec<TrainLine>,
    /// Eval lines, one per step, ascending.
    pub eval: Vec<EvalLine>,
    /// How many lines were dropped because a later line re-logged the same (kind, step).
    pub relogged: usize,
    /// Whether an unterminated, unparsable last line (a write cut short) was skipped.
    pub truncated_last_line: bool,
    /// Seconds of the warm-up steps (one per training call; kernel compilation and autotuning
    /// on GPU backends), not counted in device-hours; `None` when the file has no warm-up line.
    pub warmup_s: Option<f64>,
}

impl Metrics {
    /// The run's final cumulative device-hours (largest value seen on any line).
    pub fn total_device_hours(&self) -> Option<f64> {
        max_opt(
            self.train
                .iter()
                .filter_map(|r| r.device_hours)
                .chain(self.eval.iter().filter_map(|r| r.device_hours)),
        )
    }

    /// The run's final cumulative FLOPs (largest value seen on any line).
    pub fn total_flops(&self) -> Option<f64> {
        max_opt(
            self.train
                .iter()
                .filter_map(|r| r.flops)
                .chain(self.eval.iter().filter_map(|r| r.flops)),
        )
    }

    /// The run's final cumulative token count (largest value seen on any line).
    pub fn total_tokens(&self) -> Option<u64> {
        self.train
            .iter()
            .filter_map(|r| r.tokens)
            .chain(self.eval.iter().filter_map(|r| r.tokens))
            .max()
    }

    /// The run's final cumulative wall-clock seconds (largest value seen on any line).
    pub fn total_wall_s(&self) -> Option<f64> {
        max_opt(
            self.train
                .iter()
                .filter_map(|r| r.wall_s)
                .chain(self.eval.iter().filter_map(|r| r.wall_s)),
        )
    }
}

fn max_opt(values: impl Iterator<Item = f64>) -> Option<f64> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc: Option<f64>, v| {
            Some(acc.map_or(v, |a| a.max(v)))
        })
}

/// Reads and deduplicates a `metrics.jsonl` file.
///
/// Blank lines are skipped, unknown `kind`s ignored. A line that is not a JSON object, or
/// whose fields have the wrong type, is an error naming the file and the 1-based line number;
/// the one exception is an unterminated last line that does not parse (a write interrupted by
/// a kill), which is skipped with a warning.
pub fn read_metrics(path: impl AsRef<Path>) -> Result<Metrics, RunFileError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| RunFileError::Io {
        action: "reading",
        path: path.to_path_buf(),
        source,
    })?;
    parse_metrics(&text, path)
}

/// Parses the text of a `metrics.jsonl` file; `path` is used in error messages only.
pub fn parse_metrics(text: &str, path: &Path) -> Result<Metrics, RunFileError> {
    let mut train: BTreeMap<u64, TrainLine> = BTreeMap::new();
    let mut eval: BTreeMap<u64, EvalLine> = BTreeMap::new();
    let mut relogged = 0usize;
    let mut truncated_last_line = false;
    let mut warmup_s: Option<f64> = None;
    let terminated = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let last_index = lines.len().saturating_sub(1);

    for (index, raw) in lines.iter().enumerate() {
        let line_no = index + 1;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let value: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(source) => {
                if index == last_index && !terminated {
                    tracing::warn!(
                        path = %path.display(),
                        line = line_no,
                        "skipping an unterminated, unparsable last line (interrupted write)"
                    );
                    truncated_last_line = true;
                    continue;
                }
                return Err(RunFileError::MetricsLine {
                    path: path.to_path_buf(),
                    line: line_no,
                    source,
                });
            }
        };
        let kind = match &value {
            serde_json::Value::Object(map) => match map.get("kind") {
                Some(serde_json::Value::String(kind)) => kind.clone(),
                Some(other) => {
                    return Err(RunFileError::MetricsValue {
                        path: path.to_path_buf(),
                        line: line_no,
                        key: "kind",
                        value: other.to_string(),
                    })
                }
                None => {
                    return Err(RunFileError::MetricsValue {
                        path: path.to_path_buf(),
                        line: line_no,
                        key: "kind",
                        value: "(missing)".to_string(),
                    })
                }
            },
            other => {
                return Err(RunFileError::MetricsValue {
                    path: path.to_path_buf(),
                    line: line_no,
                    key: "(line)",
                    value: format!("{} (expected a JSON object)", short(&other.to_string())),
                })
            }
        };
        let line_err = |source| RunFileError::MetricsLine {
            path: path.to_path_buf(),
            line: line_no,
            source,
        };
        // Train and eval lines carry the same cumulative counters.
        let check = |wall_s, device_hours, flops| {
            check_counters(
                path,
                line_no,
                &[
                    ("wall_s", wall_s),
                    ("device_hours", device_hours),
                    ("flops", flops),
                ],
            )
        };
        match kind.as_str() {
            "train" => {
                let record: TrainLine = serde_json::from_value(value).map_err(line_err)?;
                check(record.wall_s, record.device_hours, record.flops)?;
                if train.insert(record.step, record).is_some() {
                    relogged += 1;
                }
            }
            "eval" => {
                let record: EvalLine = serde_json::from_value(value).map_err(line_err)?;
                check(record.wall_s, record.device_hours, record.flops)?;
                if eval.insert(record.step, record).is_some() {
                    relogged += 1;
                }
            }
            "warmup" => {
                let seconds = value.get("seconds").and_then(|v| v.as_f64());
                let Some(seconds) = seconds.filter(|s| s.is_finite() && *s >= 0.0) else {
                    return Err(RunFileError::MetricsValue {
                        path: path.to_path_buf(),
                        line: line_no,
                        key: "seconds",
                        value: value
                            .get("seconds")
                            .map_or("(missing)".to_string(), |v| v.to_string()),
                    });
                };
                *warmup_s.get_or_insert(0.0) += seconds;
            }
            _ => {}
        }
    }
    if relogged > 0 {
        tracing::debug!(path = %path.display(), relogged, "deduplicated re-logged metrics lines");
    }
    Ok(Metrics {
        train: train.into_values().collect(),
        eval: eval.into_values().collect(),
        relogged,
        truncated_last_line,
        warmup_s,
    })
}

/// Cumulative counters must be finite and non-negative.
fn check_counters(
    path: &Path,
    line: usize,
    counters: &[(&'static str, Option<f64>)],
) -> Result<(), RunFileError> {
    for &(key, value) in counters {
        if let Some(v) = value {
            if !v.is_finite() || v < 0.0 {
                return Err(RunFileError::MetricsValue {
                    path: path.to_path_buf(),
                    line,
                    key,
                    value: v.to_string(),
                });
            }
        }
    }
    Ok(())
}

fn short(text: &str) -> String {
    if text.chars().count() > 60 {
        let head: String = text.chars().take(60).collect();
        format!("{head}…")
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("run/metrics.jsonl")
    }

    #[test]
    fn dedupes_relogged_steps_last_wins() {
        // A run logs steps 1..=4, is killed, resumes from its step-2 checkpoint and re-logs
        // steps 3 and 4 with different values, then continues to 5.
        let text = [
            r#"{"kind":"eval","step":0,"tokens":0,"val_loss":9.0,"device_hours":0.0}"#,
            r#"{"kind":"train","step":1,"tokens":10,"loss":5.0}"#,
            r#"{"kind":"train","step":2,"tokens":20,"loss":4.0}"#,
            r#"{"kind":"eval","step":2,"tokens":20,"val_loss":4.5}"#,
            r#"{"kind":"train","step":3,"tokens":30,"loss":3.9}"#,
            r#"{"kind":"train","step":4,"tokens":40,"loss":3.8}"#,
            r#"{"kind":"train","step":3,"tokens":30,"loss":3.5}"#,
            r#"{"kind":"train","step":4,"tokens":40,"loss":3.4}"#,
            r#"{"kind":"eval","step":4,"tokens":40,"val_loss":3.6}"#,
            r#"{"kind":"train","step":5,"tokens":50,"loss":3.3}"#,
        ]
        .join("\n")
            + "\n";
        let m = parse_metrics(&text, p()).unwrap();
        let steps: Vec<u64> = m.train.iter().map(|r| r.step).collect();
        assert_eq!(steps, vec![1, 2, 3, 4, 5]);
        assert_eq!(m.train[2].loss, Some(3.5));
        assert_eq!(m.train[3].loss, Some(3.4));
        assert_eq!(m.eval.len(), 3);
        assert_eq!(m.eval[0].step, 0);
        assert_eq!(m.relogged, 2);
        assert!(!m.truncated_last_line);
        assert_eq!(m.total_tokens(), Some(50));
    }

    #[test]
    fn ignores_unknown_fields_and_kinds_and_tolerates_nulls() {
        let text = concat!(
            r#"{"kind":"train","step":1,"loss":2.0,"mfu":null,"new_field":[1,2],"peak_memory_bytes":null}"#,
            "\n",
            r#"{"kind":"checkpoint","step":1,"path":"x"}"#,
            "\n\n",
            r#"{"kind":"eval","step":1,"val_loss":2.5,"symmetry":{"mean":0.99,"per_layer":[0.98,1.0]}}"#,
            "\n"
        );
        let m = parse_metrics(text, p()).unwrap();
        assert_eq!(m.train.len(), 1);
        assert_eq!(m.train[0].mfu, None);
        assert_eq!(
            m.eval[0].symmetry.as_ref().unwrap().per_layer,
            vec![0.98, 1.0]
        );
    }

    #[test]
    fn corrupt_line_names_file_and_line() {
        let text = concat!(
            r#"{"kind":"train","step":1,"loss":2.0}"#,
            "\n",
            r#"{"kind":"train","step":2,"loss":"#,
            "\n",
            r#"{"kind":"train","step":3,"loss":2.0}"#,
            "\n"
        );
        let err = parse_metrics(text, p()).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, RunFileError::MetricsLine { line: 2, .. }),
            "{msg}"
        );
        assert!(msg.contains("run/metrics.jsonl line 2"), "{msg}");
    }

    #[test]
    fn wrong_type_and_bad_counter_are_errors() {
        let err = parse_metrics("{\"kind\":\"train\",\"step\":\"one\"}\n", p()).unwrap_err();
        assert!(matches!(err, RunFileError::MetricsLine { line: 1, .. }));
        let err = parse_metrics(
            "{\"kind\":\"eval\",\"step\":1}\n{\"kind\":\"eval\",\"step\":2,\"flops\":-1.0}\n",
            p(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                RunFileError::MetricsValue {
                    line: 2,
                    key: "flops",
                    ..
                }
            ),
            "{err}"
        );
        let err = parse_metrics("[1,2]\n", p()).unwrap_err();
        assert!(matches!(err, RunFileError::MetricsValue { line: 1, .. }));
    }

    #[test]
    fn unterminated_truncated_last_line_is_skipped() {
        let text = concat!(
            r#"{"kind":"train","step":1,"loss":2.0}"#,
            "\n",
            r#"{"kind":"train","step":2,"lo"#
        );
        let m = parse_metrics(text, p()).unwrap();
        assert_eq!(m.train.len(), 1);
        assert!(m.truncated_last_line);
        // The same bytes with a newline after them are a real corruption.
        let err = parse_metrics(&format!("{text}\n"), p()).unwrap_err();
        assert!(matches!(err, RunFileError::MetricsLine { line: 2, .. }));
    }

    #[test]
    fn warmup_lines_are_summed_and_kept_apart_from_the_counters() {
        let text = concat!(
            r#"{"kind":"warmup","step":0,"seconds":75.5}"#,
            "\n",
            r#"{"kind":"train","step":1,"device_hours":0.001,"wall_s":3.6}"#,
            "\n",
            r#"{"kind":"warmup","step":1,"seconds":0.5}"#,
            "\n",
        );
        let m = parse_metrics(text, p()).unwrap();
        assert_eq!(m.warmup_s, Some(76.0));
        assert_eq!(m.total_device_hours(), Some(0.001));
        assert_eq!(m.train.len(), 1);
        assert_eq!(parse_metrics("", p()).unwrap().warmup_s, None);
        let err = parse_metrics("{\"kind\":\"warmup\",\"step\":0,\"seconds\":-1}\n", p())
            .unwrap_err()
            .to_string();
        assert!(err.contains("seconds") && err.contains("-1"), "{err}");
    }

    #[test]
    fn totals_take_the_largest_cumulative_value() {
        let text = concat!(
            r#"{"kind":"train","step":1,"device_hours":0.1,"flops":1e9,"wall_s":3.0}"#,
            "\n",
            r#"{"kind":"eval","step":1,"device_hours":0.12,"flops":1e9}"#,
            "\n",
            r#"{"kind":"train","step":2,"device_hours":0.2,"flops":2e9,"wall_s":7.0}"#,
            "\n"
        );
        let m = parse_metrics(text, p()).unwrap();
        assert_eq!(m.total_device_hours(), Some(0.2));
        assert_eq!(m.total_flops(), Some(2e9));
        assert_eq!(m.total_wall_s(), Some(7.0));
        assert_eq!(Metrics::default().total_device_hours(), None);
    }
}
