//! TensorBoard event files: the scalars of a run, live, for `tensorboard --logdir runs/EXP`.
//!
//! An event file (`events.out.tfevents.<seconds>.<host>.<pid>`) is a sequence of TFRecords, each
//! holding one `tensorflow.Event` protocol buffer:
//!
//! ```text
//! record  = length: u64 LE | masked_crc32c(length): u32 LE | data | masked_crc32c(data): u32 LE
//! Event   = 1: wall_time (double) | 2: step (int64) | 3: file_version (string) | 5: summary
//! Summary = 1: value (repeated)
//! Value   = 1: tag (string) | 2: simple_value (float)
//! masked_crc32c(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8   (CRC-32C, wrapping)
//! ```
//!
//! The few fields needed are encoded here by hand (no protobuf code generator), and
//! [`read_events`] decodes them back, checking every CRC, for the tests and for tools.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::RunFileError;
use crate::metrics::{Line, MetricsWriter};

const MASK_DELTA: u32 = 0xa282_ead8;

fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A field key: field number and wire type (0 varint, 1 fixed64, 2 length-delimited, 5 fixed32).
fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// One `Event` protocol buffer: a wall time, a step and either the file version or scalars.
fn encode_event(wall_time: f64, step: i64, what: &EventBody) -> Vec<u8> {
    let mut out = Vec::new();
    put_key(&mut out, 1, 1);
    out.extend_from_slice(&wall_time.to_le_bytes());
    put_key(&mut out, 2, 0);
    put_varint(&mut out, step as u64);
    match what {
        EventBody::FileVersion(v) => put_bytes(&mut out, 3, v.as_bytes()),
        EventBody::Scalars(values) => {
            let mut summary = Vec::new();
            for (tag, value) in values.iter() {
                let mut v = Vec::new();
                put_bytes(&mut v, 1, tag.as_bytes());
                put_key(&mut v, 2, 5);
                v.extend_from_slice(&value.to_le_bytes());
                put_bytes(&mut summary, 1, &v);
            }
            put_bytes(&mut out, 5, &summary);
        }
    }
    out
}

enum EventBody<'a> {
    FileVersion(&'a str),
    Scalars(&'a [(String, f32)]),
}

/// Appends scalar events to a new event file in a run directory, flushing each step's events
/// so that TensorBoard shows them while the run goes on.
#[derive(Debug)]
pub struct EventWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<seconds>.<host>.<pid>` and writes the file-version event.
    /// A resumed run starts a new file: TensorBoard reads every file of the folder, and the
    /// newer line for a step shows.
    pub fn create(dir: &Path) -> Result<Self, RunFileError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty() && !h.contains('/'))
            .unwrap_or_else(|| "localhost".to_string());
        let path = dir.join(format!(
            "events.out.tfevents.{}.{host}.{}",
            now as u64,
            std::process::id()
        ));
        let file = File::create(&path).map_err(|source| RunFileError::Io {
            action: "creating",
            path: path.clone(),
            source,
        })?;
        let mut writer = Self {
            out: BufWriter::new(file),
            path,
        };
        writer.record(&encode_event(
            now,
            0,
            &EventBody::FileVersion("brain.Event:2"),
        ))?;
        writer.flush()?;
        Ok(writer)
    }

    fn io(&self, action: &'static str) -> impl FnOnce(std::io::Error) -> RunFileError + '_ {
        move |source| RunFileError::Io {
            action,
            path: self.path.clone(),
            source,
        }
    }

    fn record(&mut self, data: &[u8]) -> Result<(), RunFileError> {
        let len = (data.len() as u64).to_le_bytes();
        let mut frame = Vec::with_capacity(data.len() + 16);
        frame.extend_from_slice(&len);
        frame.extend_from_slice(&masked_crc(&len).to_le_bytes());
        frame.extend_from_slice(data);
        frame.extend_from_slice(&masked_crc(data).to_le_bytes());
        let result = self.out.write_all(&frame);
        result.map_err(self.io("appending to"))
    }

    /// Writes the scalars `(tag, value)` of one step (non-finite values are skipped: TensorBoard
    /// cannot draw them) and flushes.
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<(), RunFileError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let values: Vec<(String, f32)> = values
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(t, v)| (t.clone(), *v as f32))
            .collect();
        if values.is_empty() {
            return Ok(());
        }
        self.record(&encode_event(
            now,
            step as i64,
            &EventBody::Scalars(&values),
        ))?;
        self.flush()
    }

    fn flush(&mut self) -> Result<(), RunFileError> {
        let result = self.out.flush();
        result.map_err(self.io("flushing"))
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What a run's cost counters start from on the total-cost axes: the small run (and the
/// expansion) before a cloned run or the control, zero otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CostOffset {
    /// Training FLOPs paid before the run.
    pub flops: f64,
    /// Device-hours paid before the run.
    pub device_hours: f64,
}

/// The x value of a cost axis: TensorBoard's steps are integers, so FLOPs are counted in
/// MFLOPs and device-hours in device-milliseconds (fine enough for runs of seconds, and 1e20
/// FLOPs or 1e5 device-hours still fit an i64).
fn mflops(flops: f64) -> u64 {
    (flops / 1e6).round() as u64
}

fn device_ms(hours: f64) -> u64 {
    (hours * 3.6e6).round() as u64
}

impl EventWriter {
    /// Writes a metrics line's scalars. Train lines: `train/loss`, `train/lr`,
    /// `train/grad_norm`, `train/tokens_per_s`, `train/mfu`, `train/device_hours` (this run's
    /// own) at the optimiser step. Eval lines:
    /// `eval/val_loss`, `eval/val_ppl`, `eval/symmetry` at the step, and the val loss on four
    /// cost axes, whose "step" is the cost: `cost_mflops/val_loss` and
    /// `cost_device_ms/val_loss` (this run's own cost), `total_mflops/val_loss` and
    /// `total_device_ms/val_loss` (with `offset`: what the route paid before this run), so
    /// that `tensorboard --logdir runs/EXP` draws every stage of an experiment on one cost axis.
    pub fn line(&mut self, line: &Line, offset: CostOffset) -> Result<(), RunFileError> {
        let tagged = |pairs: &[(&str, Option<f64>)]| -> Vec<(String, f64)> {
            pairs
                .iter()
                .filter_map(|(t, v)| Some((t.to_string(), (*v)?)))
                .collect()
        };
        match line {
            Line::Train(t) => self.scalars(
                t.step,
                &tagged(&[
                    ("train/loss", t.loss),
                    ("train/lr", t.lr),
                    ("train/grad_norm", t.grad_norm),
                    ("train/tokens_per_s", t.tokens_per_s),
                    ("train/mfu", t.mfu),
                    ("train/device_hours", t.device_hours),
                ]),
            ),
            Line::Eval(e) => {
                self.scalars(
                    e.step,
                    &tagged(&[
                        ("eval/val_loss", e.val_loss),
                        ("eval/val_ppl", e.val_ppl),
                        ("eval/symmetry", e.symmetry.as_ref().map(|s| s.mean)),
                    ]),
                )?;
                let Some(loss) = e.val_loss else {
                    return Ok(());
                };
                if let Some(flops) = e.flops {
                    self.scalars(mflops(flops), &[("cost_mflops/val_loss".into(), loss)])?;
                    self.scalars(
                        mflops(flops + offset.flops),
                        &[("total_mflops/val_loss".into(), loss)],
                    )?;
                }
                if let Some(hours) = e.device_hours {
                    self.scalars(
                        device_ms(hours),
                        &[("cost_device_ms/val_loss".into(), loss)],
                    )?;
                    self.scalars(
                        device_ms(hours + offset.device_hours),
                        &[("total_device_ms/val_loss".into(), loss)],
                    )?;
                }
                Ok(())
            }
            Line::Warmup(_) => Ok(()),
        }
    }
}

/// Where a run's lines go: `metrics.jsonl`, and TensorBoard event files beside it when asked
/// for.
#[derive(Debug)]
pub struct RunLog {
    metrics: MetricsWriter,
    events: Option<EventWriter>,
    offset: CostOffset,
}

impl RunLog {
    /// Opens `dir/metrics.jsonl` for appending and, with `tensorboard`, a new event file in
    /// `dir`.
    pub fn open(dir: &Path, tensorboard: bool, offset: CostOffset) -> Result<Self, RunFileError> {
        Ok(Self {
            metrics: MetricsWriter::open(&dir.join("metrics.jsonl"))?,
            events: if tensorboard {
                Some(EventWriter::create(dir)?)
            } else {
                None
            },
            offset,
        })
    }

    /// Writes one line to `metrics.jsonl` and its scalars to TensorBoard.
    pub fn write(&mut self, line: &Line) -> Result<(), RunFileError> {
        self.metrics.write(line)?;
        if let Some(events) = &mut self.events {
            events.line(line, self.offset)?;
        }
        Ok(())
    }
}

/// One scalar read back from an event file.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    /// The event's step.
    pub step: i64,
    /// The value's tag.
    pub tag: String,
    /// The value.
    pub value: f32,
    /// The event's wall time, seconds since the Unix epoch.
    pub wall_time: f64,
}

fn bad(path: &Path, why: &str) -> RunFileError {
    RunFileError::Io {
        action: "decoding",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string()),
    }
}

/// A protocol-buffer field: its number and its value.
enum Field<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Fixed32([u8; 4]),
    Bytes(&'a [u8]),
}

fn varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

fn fields(bytes: &[u8]) -> Option<Vec<(u32, Field<'_>)>> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < bytes.len() {
        let key = varint(bytes, &mut pos)?;
        let (field, wire) = ((key >> 3) as u32, key & 7);
        let value = match wire {
            0 => Field::Varint(varint(bytes, &mut pos)?),
            1 => {
                let v = bytes.get(pos..pos + 8)?.try_into().ok()?;
                pos += 8;
                Field::Fixed64(v)
            }
            2 => {
                let len = varint(bytes, &mut pos)? as usize;
                let v = bytes.get(pos..pos.checked_add(len)?)?;
                pos += len;
                Field::Bytes(v)
            }
            5 => {
                let v = bytes.get(pos..pos + 4)?.try_into().ok()?;
                pos += 4;
                Field::Fixed32(v)
            }
            _ => return None,
        };
        out.push((field, value));
    }
    Some(out)
}

/// Reads every scalar of an event file, checking each record's CRCs; the file-version event is
/// skipped. An unknown field is ignored, as protocol buffers do.
pub fn read_events(path: &Path) -> Result<Vec<Scalar>, RunFileError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|source| RunFileError::Io {
            action: "reading",
            path: path.to_path_buf(),
            source,
        })?;
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let header = bytes
            .get(pos..pos + 12)
            .ok_or_else(|| bad(path, "truncated record header"))?;
        let len_bytes: [u8; 8] = header[..8].try_into().expect("8 bytes");
        let crc = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        if masked_crc(&len_bytes) != crc {
            return Err(bad(path, "record length CRC mismatch"));
        }
        let len = u64::from_le_bytes(len_bytes) as usize;
        let data = bytes
            .get(pos + 12..pos + 12 + len)
            .ok_or_else(|| bad(path, "truncated record"))?;
        let data_crc = bytes
            .get(pos + 12 + len..pos + 16 + len)
            .ok_or_else(|| bad(path, "truncated record CRC"))?;
        if masked_crc(data) != u32::from_le_bytes(data_crc.try_into().expect("4 bytes")) {
            return Err(bad(path, "record data CRC mismatch"));
        }
        pos += 16 + len;
        let event = fields(data).ok_or_else(|| bad(path, "malformed Event"))?;
        let (mut wall_time, mut step) = (0.0, 0i64);
        let mut values = Vec::new();
        for (field, value) in event {
            match (field, value) {
                (1, Field::Fixed64(b)) => wall_time = f64::from_le_bytes(b),
                (2, Field::Varint(v)) => step = v as i64,
                (5, Field::Bytes(summary)) => {
                    for (f, v) in fields(summary).ok_or_else(|| bad(path, "malformed Summary"))? {
                        if let (1, Field::Bytes(value)) = (f, v) {
                            values.push(value);
                        }
                    }
                }
                _ => {}
            }
        }
        for value in values {
            let (mut tag, mut simple) = (None, None);
            for (f, v) in fields(value).ok_or_else(|| bad(path, "malformed Value"))? {
                match (f, v) {
                    (1, Field::Bytes(t)) => tag = Some(String::from_utf8_lossy(t).into_owned()),
                    (2, Field::Fixed32(b)) => simple = Some(f32::from_le_bytes(b)),
                    _ => {}
                }
            }
            if let (Some(tag), Some(value)) = (tag, simple) {
                out.push(Scalar {
                    step,
                    tag,
                    value,
                    wall_time,
                });
            }
        }
    }
    Ok(out)
}

/// The event files of a folder, oldest first (their names start with the creation time).
pub fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("events.out.tfevents."))
        })
        .collect();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crc_is_crc32c() {
        // The CRC-32C (Castagnoli) check value of the standard test string; TensorFlow's mask
        // on top of it is the documented rotate-and-add of tensorflow/core/lib/hash/crc32c.h.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn scalars_written_read_back_with_their_steps_and_tags() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalars(1, &[("train/loss".into(), 6.5), ("train/lr".into(), 1e-3)])
            .unwrap();
        w.scalars(
            300,
            &[
                ("eval/val_loss".into(), 4.25),
                ("eval/nan".into(), f64::NAN),
            ],
        )
        .unwrap();
        let files = event_files(dir.path());
        assert_eq!(files, vec![w.path().to_path_buf()]);
        let name = files[0].file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        let scalars = read_events(&files[0]).unwrap();
        let got: Vec<(i64, &str, f32)> = scalars
            .iter()
            .map(|s| (s.step, s.tag.as_str(), s.value))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "train/loss", 6.5),
                (1, "train/lr", 1e-3),
                (300, "eval/val_loss", 4.25)
            ]
        );
        assert!(scalars.iter().all(|s| s.wall_time > 1.6e9));
    }

    #[test]
    fn metrics_lines_become_scalars_on_the_step_and_cost_axes() {
        use crate::metrics::{EvalLine, SymmetryLine, TrainLine};
        let dir = tempfile::tempdir().unwrap();
        let offset = CostOffset {
            flops: 5e12,
            device_hours: 0.01,
        };
        let mut log = RunLog::open(dir.path(), true, offset).unwrap();
        let train = TrainLine {
            step: 96,
            tokens: Some(96 * 4096),
            loss: Some(4.5),
            lr: Some(1e-2),
            grad_norm: Some(0.4),
            step_time_s: Some(0.1),
            tokens_per_s: Some(40960.0),
            wall_s: Some(10.0),
            device_hours: Some(10.0 / 3600.0),
            flops: Some(3.2e12),
            tflops_per_s: Some(0.08),
            mfu: None,
            mfu_estimated: Some(true),
            peak_memory_bytes: None,
            data_time_s: Some(0.0),
        };
        let eval = EvalLine {
            step: 96,
            tokens: Some(96 * 4096),
            val_loss: Some(4.25),
            val_ppl: Some(4.25f64.exp()),
            wall_s: Some(10.8),
            device_hours: Some(0.003),
            flops: Some(3.2e12),
            symmetry: Some(SymmetryLine {
                mean: 0.75,
                per_layer: vec![0.7, 0.8],
            }),
        };
        log.write(&Line::Train(train)).unwrap();
        log.write(&Line::Eval(eval)).unwrap();
        // metrics.jsonl has both lines; the event file has their scalars.
        let metrics = crate::read_metrics(dir.path().join("metrics.jsonl")).unwrap();
        assert_eq!((metrics.train.len(), metrics.eval.len()), (1, 1));
        let files = event_files(dir.path());
        assert_eq!(files.len(), 1);
        let scalars = read_events(&files[0]).unwrap();
        let at = |tag: &str| -> (i64, f32) {
            let s = scalars
                .iter()
                .find(|s| s.tag == tag)
                .unwrap_or_else(|| panic!("{tag}"));
            (s.step, s.value)
        };
        assert_eq!(at("train/loss"), (96, 4.5));
        assert_eq!(at("train/lr"), (96, 1e-2));
        assert_eq!(at("train/device_hours"), (96, (10.0f64 / 3600.0) as f32));
        assert!(
            !scalars.iter().any(|s| s.tag == "train/mfu"),
            "no value, no scalar"
        );
        assert_eq!(at("eval/val_loss"), (96, 4.25));
        assert_eq!(at("eval/symmetry"), (96, 0.75));
        assert_eq!(at("cost_mflops/val_loss"), (3_200_000, 4.25));
        assert_eq!(at("total_mflops/val_loss"), (8_200_000, 4.25));
        assert_eq!(at("cost_device_ms/val_loss"), (10_800, 4.25));
        assert_eq!(at("total_device_ms/val_loss"), (46_800, 4.25));
        // Without TensorBoard: metrics.jsonl only.
        let plain = tempfile::tempdir().unwrap();
        let mut log = RunLog::open(plain.path(), false, CostOffset::default()).unwrap();
        log.write(&Line::Warmup(crate::WarmupLine {
            step: 0,
            seconds: 1.0,
        }))
        .unwrap();
        assert!(event_files(plain.path()).is_empty());
    }

    #[test]
    fn a_flipped_bit_is_a_crc_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalars(1, &[("loss".into(), 1.0)]).unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 6;
        bytes[last] ^= 0x10;
        std::fs::write(&path, bytes).unwrap();
        let e = read_events(&path).unwrap_err().to_string();
        assert!(e.contains("CRC") && e.contains("tfevents"), "{e}");
    }
}
