//! Raw tensors of a Hugging Face checkpoint: reading (single file or sharded, any float dtype
//! converted to f32) and writing (f32 safetensors with `format = pt` metadata).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use hyperclone_model::checkpoint::write_file_streaming;

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

/// f32 tensors laid out as a safetensors file with `{"format": "pt"}` metadata (which
/// transformers expects), byte-identical to `safetensors::serialize` (0.7) of the same tensors:
/// an 8-byte little-endian header length, the compact JSON header (`__metadata__`, then each
/// tensor's `dtype`, `shape` and `data_offsets` in name order) padded with spaces to a multiple
/// of 8 bytes, then the tensors' little-endian bytes in name order.
///
/// Only the header is built in memory: [`F32Safetensors::write_to`] and
/// [`F32Safetensors::write_atomically`] stream the values, so writing a checkpoint costs no copy
/// of its weights. The output is a pure function of the input.
#[derive(Debug)]
pub struct F32Safetensors<'a> {
    tensors: &'a NamedTensors,
    header: Vec<u8>,
    data_len: u64,
}

/// The safetensors crate's limit on the header length (it refuses larger ones).
const MAX_HEADER_LEN: usize = 100_000_000;

/// Values converted to bytes per write (64 KiB of output).
const CHUNK_VALUES: usize = 16 * 1024;

/// The JSON header: `__metadata__` first, then the tensors in name order.
struct Header<'a> {
    tensors: &'a NamedTensors,
    offsets: Vec<[usize; 2]>,
}

#[derive(serde::Serialize)]
struct HeaderEntry<'a> {
    dtype: &'static str,
    shape: &'a [usize],
    data_offsets: [usize; 2],
}

impl serde::Serialize for Header<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.tensors.len() + 1))?;
        map.serialize_entry("__metadata__", &BTreeMap::from([("format", "pt")]))?;
        for ((name, (shape, _)), offsets) in self.tensors.iter().zip(&self.offsets) {
            let entry = HeaderEntry {
                dtype: "F32",
                shape,
                data_offsets: *offsets,
            };
            map.serialize_entry(name, &entry)?;
        }
        map.end()
    }
}

impl<'a> F32Safetensors<'a> {
    /// Lays out `tensors`, checking that each one's values fill its shape; errors name `path`
    /// (the file to be written) and the tensor.
    pub fn new(tensors: &'a NamedTensors, path: &Path) -> Result<Self, InteropError> {
        let err = |reason: String| InteropError::Safetensors {
            path: path.to_path_buf(),
            reason,
        };
        let mut offsets = Vec::with_capacity(tensors.len());
        let mut offset = 0usize;
        for (name, (shape, data)) in tensors {
            let elements = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            if elements != Some(data.len()) {
                return Err(err(format!(
                    "tensor {name} has {} values but shape {shape:?}",
                    data.len()
                )));
            }
            let end = data
                .len()
                .checked_mul(4)
                .and_then(|n| n.checked_add(offset))
                .ok_or_else(|| err(format!("tensor {name}: data offsets overflow")))?;
            offsets.push([offset, end]);
            offset = end;
        }
        let json = serde_json::to_vec(&Header { tensors, offsets })
            .map_err(|e| err(format!("writing the header: {e}")))?;
        let padded = json.len().next_multiple_of(8);
        if padded > MAX_HEADER_LEN {
            return Err(err(format!(
                "header of {padded} bytes ({} tensors) exceeds the format's limit of {MAX_HEADER_LEN}",
                tensors.len()
            )));
        }
        let mut header = Vec::with_capacity(8 + padded);
        header.extend_from_slice(&(padded as u64).to_le_bytes());
        header.extend_from_slice(&json);
        header.resize(8 + padded, b' ');
        Ok(F32Safetensors {
            tensors,
            header,
            data_len: offset as u64,
        })
    }

    /// The length of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.header.len() as u64 + self.data_len
    }

    /// Writes the file to `w` (unbuffered writers should be wrapped in a `BufWriter`).
    pub fn write_to<W: Write>(&self, w: &mut W) -> io::Result<()> {
        w.write_all(&self.header)?;
        let mut chunk = Vec::with_capacity(CHUNK_VALUES * 4);
        for (_, data) in self.tensors.values() {
            for values in data.chunks(CHUNK_VALUES) {
                chunk.clear();
                chunk.extend(values.iter().flat_map(|v| v.to_le_bytes()));
                w.write_all(&chunk)?;
            }
        }
        Ok(())
    }

    /// Writes the file to `path` atomically (a temp file in the same folder, fsynced, then
    /// renamed over `path`) and returns the lower-case hex SHA-256 of its bytes, computed as
    /// they are written. On failure the temp file is removed; errors name the file.
    pub fn write_atomically(&self, path: &Path) -> Result<String, InteropError> {
        let mut sha256 = String::new();
        write_file_streaming(path, |w| {
            let mut hashing = HashingWriter {
                inner: w,
                hasher: Sha256::new(),
            };
            self.write_to(&mut hashing)?;
            sha256 = format!("{:x}", hashing.hasher.finalize());
            Ok(())
        })?;
        Ok(sha256)
    }
}

/// A writer that hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Serialises f32 tensors to safetensors bytes in memory (see [`F32Safetensors`], which writes
/// a file without this copy); errors name `path`.
pub fn serialize_f32(tensors: &NamedTensors, path: &Path) -> Result<Vec<u8>, InteropError> {
    let st = F32Safetensors::new(tensors, path)?;
    let mut out = Vec::with_capacity(usize::try_from(st.file_len()).unwrap_or(0));
    st.write_to(&mut out).map_err(io_err(path))?;
    Ok(out)
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

    /// The reference: `safetensors::serialize` with `{"format": "pt"}` metadata (what
    /// `serialize_f32` used before it streamed).
    fn reference_serialize(tensors: &NamedTensors) -> Vec<u8> {
        let bytes: Vec<(&str, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(name, (shape, data))| {
                let b = data.iter().flat_map(|v| v.to_le_bytes()).collect();
                (name.as_str(), shape.clone(), b)
            })
            .collect();
        let views: Vec<_> = bytes
            .iter()
            .map(|(name, shape, b)| {
                let view =
                    safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), b).unwrap();
                (*name, view)
            })
            .collect();
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize(views, Some(metadata)).unwrap()
    }

    /// Tensors of several shapes (2-D, 1-D, 0-D, empty), inserted out of name order, with a
    /// name that JSON must escape; `pad` varies the header length across all 8 residues.
    fn sample_tensors(pad: usize) -> NamedTensors {
        let ramp = |n: usize, scale: f32| -> Vec<f32> {
            (0..n).map(|i| (i as f32 - 3.5) * scale).collect()
        };
        let mut t = NamedTensors::new();
        t.insert("zeta.weight".into(), (vec![3, 4], ramp(12, 0.37)));
        t.insert("h.10.bias".into(), (vec![5], ramp(5, -1.25e-7)));
        t.insert(
            "h.9.bias".into(),
            (vec![2], vec![f32::MAX, f32::MIN_POSITIVE]),
        );
        t.insert("Alpha".into(), (vec![0, 7], Vec::new()));
        t.insert("scalar".into(), (Vec::new(), vec![-0.0]));
        t.insert("odd \"name\" é\t".into(), (vec![1, 1, 3], ramp(3, 1e30)));
        t.insert(format!("b{}", "x".repeat(pad)), (vec![1], vec![42.5]));
        t
    }

    #[test]
    fn streamed_safetensors_are_byte_identical_to_the_safetensors_crate() {
        let tmp = tempfile::tempdir().unwrap();
        let mut header_residues = BTreeSet::new();
        for pad in 0..8 {
            let tensors = sample_tensors(pad);
            let reference = reference_serialize(&tensors);
            let header_len = u64::from_le_bytes(reference[..8].try_into().unwrap());
            let header = &reference[8..8 + header_len as usize];
            let padding = header.iter().rev().take_while(|&&b| b == b' ').count();
            header_residues.insert(padding);

            let path = tmp.path().join(format!("streamed-{pad}.safetensors"));
            let st = F32Safetensors::new(&tensors, &path).unwrap();
            assert_eq!(st.file_len(), reference.len() as u64, "pad {pad}");
            let sha = st.write_atomically(&path).unwrap();
            let streamed = fs::read(&path).unwrap();
            assert!(streamed == reference, "pad {pad}: bytes differ");
            assert_eq!(
                sha,
                hyperclone_model::checkpoint::sha256_hex(&reference),
                "pad {pad}"
            );
            assert!(serialize_f32(&tensors, &path).unwrap() == reference);

            let back = SafeTensors::deserialize(&streamed).unwrap();
            assert_eq!(back.len(), tensors.len());
            for (name, (shape, data)) in &tensors {
                let view = back.tensor(name).unwrap();
                assert_eq!(view.dtype(), Dtype::F32, "{name}");
                assert_eq!(view.shape(), shape.as_slice(), "{name}");
                let values = to_f32(Dtype::F32, view.data(), &path, name).unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&values), bits(data), "{name}");
            }
            let (_, metadata) = SafeTensors::read_metadata(&streamed).unwrap();
            let sorted: Vec<_> = tensors.keys().cloned().collect();
            assert_eq!(
                metadata.offset_keys(),
                sorted,
                "data laid out in name order"
            );
            let format = metadata.metadata().as_ref().and_then(|m| m.get("format"));
            assert_eq!(format.map(String::as_str), Some("pt"));
        }
        // The header was padded with each of 0 to 7 spaces.
        assert_eq!(header_residues.len(), 8, "{header_residues:?}");
        let leftovers: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn streamed_safetensors_errors_name_the_file_and_leave_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let mut bad = NamedTensors::new();
        bad.insert("w".into(), (vec![2, 3], vec![1.0; 5]));
        let path = tmp.path().join("model.safetensors");
        let e = F32Safetensors::new(&bad, &path).unwrap_err().to_string();
        assert!(
            e.contains("model.safetensors") && e.contains("tensor w") && e.contains("[2, 3]"),
            "{e}"
        );

        let good = sample_tensors(0);
        let st = F32Safetensors::new(&good, &path).unwrap();
        let missing = tmp.path().join("no-such-folder/model.safetensors");
        let e = st.write_atomically(&missing).unwrap_err().to_string();
        assert!(
            e.contains("no-such-folder") && e.contains("model.safetensors"),
            "{e}"
        );

        // A failing writer: the temp file is removed and the target left as it was.
        fs::write(&path, b"old").unwrap();
        let e = write_file_streaming(&path, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("model.safetensors") && e.contains("disk full"),
            "{e}"
        );
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
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
