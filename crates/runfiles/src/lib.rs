//! The files of a hyperclone run, declared once for the code that writes them (training, the
//! expansion) and the code that reads them (the report):
//!
//! ```text
//! metrics.jsonl   one line per training step, evaluation and warm-up   (metrics)
//! run_info.json   hardware, backend, model of the run                  (info)
//! expand.json     cost and check of an expansion                       (expand)
//! events.out.tfevents.*   the same scalars for TensorBoard, live          (tensorboard)
//! ```
//!
//! Fields are `Option`s on both sides: the writer fills every one it knows, the reader tolerates
//! files of older versions and lines cut short by a kill.

pub mod error;
pub mod expand;
pub mod info;
pub mod metrics;
pub mod tensorboard;

pub use error::RunFileError;
pub use expand::{ExpandRecord, EXPAND_FILE};
pub use info::RunInfo;
pub use metrics::{
    parse_metrics, read_metrics, EvalLine, Line, Metrics, MetricsWriter, SymmetryLine, TrainLine,
    WarmupLine,
};
pub use tensorboard::{CostOffset, RunLog};

#[cfg(test)]
mod tests {
    use super::*;

    /// What the trainer writes is what the report reads, field for field.
    #[test]
    fn lines_written_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let train = TrainLine {
            step: 1,
            tokens: Some(4096),
            loss: Some(6.5),
            lr: Some(1e-3),
            grad_norm: Some(0.9),
            step_time_s: Some(0.1),
            tokens_per_s: Some(40960.0),
            wall_s: Some(0.2),
            device_hours: Some(0.2 / 3600.0),
            flops: Some(8e9),
            tflops_per_s: Some(0.08),
            mfu: None,
            mfu_estimated: Some(true),
            peak_memory_bytes: Some(1 << 28),
            data_time_s: Some(0.001),
        };
        let eval = EvalLine {
            step: 1,
            tokens: Some(4096),
            val_loss: Some(6.4),
            val_ppl: Some(6.4f64.exp()),
            wall_s: Some(0.3),
            device_hours: Some(0.3 / 3600.0),
            flops: Some(8e9),
            symmetry: Some(SymmetryLine {
                mean: 0.9,
                per_layer: vec![0.8, 1.0],
            }),
        };
        let warmup = WarmupLine {
            step: 0,
            seconds: 1.5,
        };
        let mut writer = MetricsWriter::open(&path).unwrap();
        for line in [
            Line::Warmup(warmup.clone()),
            Line::Train(train.clone()),
            Line::Eval(eval.clone()),
        ] {
            writer.write(&line).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\"kind\":\"warmup\""), "{text}");
        let read = read_metrics(&path).unwrap();
        assert_eq!(read.train, vec![train]);
        assert_eq!(read.eval, vec![eval]);
        assert_eq!(read.warmup_s, Some(1.5));
        assert_eq!(read.relogged, 0);
    }

    #[test]
    fn run_info_and_expand_record_round_trip() {
        let info = RunInfo {
            backend: Some("flex".into()),
            device: Some("cpu".into()),
            device_name: Some("cpu: Test".into()),
            devices: Some(1),
            param_count: Some(87_744),
            flops_per_token: Some(7.2e5),
            seed: Some(1),
            precision: Some("f32".into()),
            attention: Some("fused".into()),
            init: Some("random".into()),
            peak_flops: Some(1e11),
            peak_estimated: Some(true),
            single_peer_tokens_per_s: None,
            single_peer_rows: None,
        };
        let text = serde_json::to_string_pretty(&info).unwrap();
        assert_eq!(serde_json::from_str::<RunInfo>(&text).unwrap(), info);
        // A single-device run writes no reference fields: its file is as before.
        assert!(!text.contains("single_peer"), "{text}");
        let parallel = RunInfo {
            devices: Some(2),
            single_peer_tokens_per_s: Some(5120.5),
            single_peer_rows: Some(4),
            ..info.clone()
        };
        let text = serde_json::to_string(&parallel).unwrap();
        assert_eq!(serde_json::from_str::<RunInfo>(&text).unwrap(), parallel);
        let record = ExpandRecord {
            wall_s: Some(0.5),
            device_hours: Some(0.5 / 3600.0),
            width_factor: Some(2),
            ffn_factor: Some(4),
            variant: Some("noisy-symmetric".into()),
            snr_db: Some(10.0),
            ..ExpandRecord::default()
        };
        let text = serde_json::to_string(&record).unwrap();
        let back: ExpandRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.factors(), Some((2, 4)));
        assert_eq!(back.cost_hours(), Some(0.5 / 3600.0));
        // Older files lack fields.
        let old: RunInfo = serde_json::from_str(r#"{"backend":"flex"}"#).unwrap();
        assert_eq!(old.attention, None);
        assert_eq!(old.single_peer_tokens_per_s, None);
    }
}
