//! Raw tensors of a Hugging Face checkpoint: reading (single file or sharded, any float dtype
//! converted to f32) and writing (f32 safetensors with `format = pt` metadata).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::error::{io_err, InteropError};

/// Single-file weights name.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Shard index name of sharded weights.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// One tensor, converted to f32, row-major.
#[derive(Debug, Clone)]
pub struct RawTensor {
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values.
    pub data: Vec<f32>,
    /// The file it came from (for error messages).
    pub file: PathBuf,
}

/// All tensors of a checkpoint by name, tracking which ones were used.
#[derive(Debug)]
pub struct TensorSet {
    dir: PathBuf,
    tensors: HashMap<String, Stored>,
    /// The weight files read, in order.
    pub files: Vec<PathBuf>,
    /// The dtypes of the tensors taken so far (e.g. `["F32"]`).
    pub dtypes: BTreeSet<String>,
}

/// A tensor as stored: converted to f32 only when taken, so that tensors we ignore (GPT-2's
/// boolean mask buffers) may have any dtype.
#[derive(Debug)]
struct Stored {
    shape: Vec<usize>,
    dtype: Dtype,
    bytes: Vec<u8>,
    file: PathBuf,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

fn f16_to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits >> 15) << 31;
    let exp = u32::from((bits >> 10) & 0x1f);
    let mant = u32::from(bits & 0x3ff);
    let out = if exp == 0 {
        if mant == 0 {
            sign
        } else {
            // Subnormal: value = mant · 2^-24.
            let v = mant as f32 * f32::from_bits(0x3380_0000); // 2^-24
            return if sign != 0 { -v } else { v };
        }
    } else if exp == 0x1f {
        sign | 0x7f80_0000 | (mant << 13)
    } else {
        sign | ((exp + 112) << 23) | (mant << 13)
    };
    f32::from_bits(out)
}

fn to_f32(dtype: Dtype, bytes: &[u8], path: &Path, name: &str) -> Result<Vec<f32>, InteropError> {
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        other => {
            return Err(InteropError::UnsupportedDtype {
                path: path.to_path_buf(),
                name: name.to_string(),
                dtype: format!("{other:?}"),
            })
        }
    })
}

impl TensorSet {
    /// Reads `dir/model.safetensors`, or every shard listed in `dir/model.safetensors.index.json`.
    /// A folder with only pickled weights (`*.bin`, `*.pt`, `*.pth`, `*.ckpt`) is refused without
    /// opening them.
    pub fn read_dir(dir: &Path) -> Result<Self, InteropError> {
        let single = dir.join(WEIGHTS_FILE);
        let index = dir.join(INDEX_FILE);
        let mut set = TensorSet {
            dir: dir.to_path_buf(),
            tensors: HashMap::new(),
            files: Vec::new(),
            dtypes: BTreeSet::new(),
        };
        if single.is_file() {
            set.read_file(&single, None)?;
            return Ok(set);
        }
        if index.is_file() {
            let text = fs::read_to_string(&index).map_err(io_err(&index))?;
            let idx: ShardIndex =
                serde_json::from_str(&text).map_err(|e| InteropError::BadJson {
                    path: index.clone(),
                    reason: e.to_string(),
                })?;
            let mut by_file: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
            for (name, file) in &idx.weight_map {
                if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                    return Err(InteropError::BadShards {
                        path: index,
                        reason: format!(
                            "shard file name {file:?} of tensor {name} is not a plain file name"
                        ),
                    });
                }
                by_file.entry(file).or_default().insert(name);
            }
            for (file, names) in by_file {
                let path = dir.join(file);
                if !path.is_file() {
                    return Err(InteropError::BadShards {
                        path: index,
                        reason: format!(
                            "shard {file} (listed for {} tensors) is not in {}",
                            names.len(),
                            dir.display()
                        ),
                    });
                }
                set.read_file(&path, Some(&names))?;
            }
            return Ok(set);
        }
        let mut pickles: Vec<String> = match fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    [".bin", ".pt", ".pth", ".ckpt", ".pkl"]
                        .iter()
                        .any(|ext| n.ends_with(ext))
                })
                .collect(),
            Err(e) => return Err(io_err(dir)(e)),
        };
        pickles.sort();
        if pickles.is_empty() {
            Err(InteropError::NoWeights {
                dir: dir.to_path_buf(),
            })
        } else {
            Err(InteropError::PickleRefused {
                dir: dir.to_path_buf(),
                files: pickles,
            })
        }
    }

    fn read_file(
        &mut self,
        path: &Path,
        only: Option<&BTreeSet<&str>>,
    ) -> Result<(), InteropError> {
        let bytes = fs::read(path).map_err(io_err(path))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| InteropError::Safetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        for (name, view) in st.tensors() {
            if only.is_some_and(|o| !o.contains(name.as_str())) {
                continue;
            }
            let raw = Stored {
                shape: view.shape().to_vec(),
                dtype: view.dtype(),
                bytes: view.data().to_vec(),
                file: path.to_path_buf(),
            };
            if let Some(prev) = self.tensors.insert(name.clone(), raw) {
                return Err(InteropError::BadShards {
                    path: path.to_path_buf(),
                    reason: format!("tensor {name} is also in {}", prev.file.display()),
                });
            }
        }
        self.files.push(path.to_path_buf());
        Ok(())
    }

    /// Removes and returns tensor `name`, checking its shape; errors name the tensor and both
    /// shapes.
    pub fn take(&mut self, name: &str, expected: &[usize]) -> Result<RawTensor, InteropError> {
        let Some(t) = self.tensors.remove(name) else {
            return Err(InteropError::MissingTensor {
                dir: self.dir.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
            });
        };
        if t.shape != expected {
            return Err(InteropError::ShapeMismatch {
                path: t.file,
                name: name.to_string(),
                expected: expected.to_vec(),
                found: t.shape,
            });
        }
        let data = to_f32(t.dtype, &t.bytes, &t.file, name)?;
        self.dtypes.insert(format!("{:?}", t.dtype));
        Ok(RawTensor {
            shape: t.shape,
            data,
            file: t.file,
        })
    }

    /// Whether tensor `name` is present (and not yet taken).
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Renames every tensor `prefix + rest` to `rest` (GPT-2 files saved with `transformer.`).
    pub fn strip_prefix(&mut self, prefix: &str) {
        let names: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        for name in names {
            if let Some(t) = self.tensors.remove(&name) {
                self.tensors.insert(name[prefix.len()..].to_string(), t);
            }
        }
    }

    /// Drops the tensors for which `ignore` is true and returns their names, sorted.
    pub fn drop_where(&mut self, ignore: impl Fn(&str) -> bool) -> Vec<String> {
        let mut dropped: Vec<String> = self.tensors.keys().filter(|k| ignore(k)).cloned().collect();
        for k in &dropped {
            self.tensors.remove(k);
        }
        dropped.sort();
        dropped
    }

    /// Fails when tensors are left that nothing took.
    pub fn finish(self) -> Result<(), InteropError> {
        if self.tensors.is_empty() {
            return Ok(());
        }
        let mut names: Vec<String> = self.tensors.into_keys().collect();
        names.sort();
        Err(InteropError::UnexpectedTensors {
            dir: self.dir,
            names,
        })
    }
}

/// Named f32 tensors: name → (shape, row-major values), sorted by name.
pub type NamedTensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Transposes a row-major `[rows, cols]` matrix.
pub fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// Serialises f32 tensors to safetensors bytes with `{"format": "pt"}` metadata (which
/// transformers expects). The output is a pure function of the input (tensors sorted by name).
pub fn serialize_f32(tensors: &NamedTensors, path: &Path) -> Result<Vec<u8>, InteropError> {
    let err = |e: safetensors::SafeTensorError| InteropError::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let bytes: Vec<(&String, &Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, (shape, data))| {
            (
                name,
                shape,
                data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, b)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.to_vec(), b)
                .map(|v| (name.as_str(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(metadata)).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_conversions_are_exact() {
        for (bits, value) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x3555, 0.333_251_95),
            (0x0001, 5.960_464_5e-8),
            (0x7bff, 65504.0),
            (0x0000, 0.0),
        ] {
            assert_eq!(f16_to_f32(bits), value, "{bits:#x}");
        }
        assert!(f16_to_f32(0x7c00).is_infinite());
        let bf = to_f32(Dtype::BF16, &[0x80, 0x3f], Path::new("x"), "t").unwrap();
        assert_eq!(bf, vec![1.0]);
        let e = to_f32(Dtype::I64, &[0; 8], Path::new("x"), "t").unwrap_err();
        assert!(e.to_string().contains("I64"), "{e}");
    }

    #[test]
    fn transpose_swaps_axes() {
        let m = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // [2, 3]
        assert_eq!(transpose(&m, 2, 3), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }

    #[test]
    fn sharded_checkpoints_are_read_and_bad_indexes_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut a = BTreeMap::new();
        a.insert("x".to_string(), (vec![2], vec![1.0, 2.0]));
        let mut b = BTreeMap::new();
        b.insert("y".to_string(), (vec![1, 1], vec![3.0]));
        fs::write(dir.join("s1.safetensors"), serialize_f32(&a, dir).unwrap()).unwrap();
        fs::write(dir.join("s2.safetensors"), serialize_f32(&b, dir).unwrap()).unwrap();
        fs::write(
            dir.join(INDEX_FILE),
            r#"{"metadata": {}, "weight_map": {"x": "s1.safetensors", "y": "s2.safetensors"}}"#,
        )
        .unwrap();
        let mut set = TensorSet::read_dir(dir).unwrap();
        assert_eq!(set.files.len(), 2);
        assert_eq!(set.take("y", &[1, 1]).unwrap().data, vec![3.0]);
        let e = set.take("x", &[3]).unwrap_err().to_string();
        assert!(
            e.contains("tensor x") && e.contains("[2]") && e.contains("[3]"),
            "{e}"
        );

        fs::write(
            dir.join(INDEX_FILE),
            r#"{"weight_map": {"x": "s1.safetensors", "y": "s3.safetensors"}}"#,
        )
        .unwrap();
        let e = TensorSet::read_dir(dir).unwrap_err().to_string();
        assert!(e.contains("s3.safetensors"), "{e}");
    }
}
