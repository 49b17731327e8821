//! Model weights on disk: a folder with `model.safetensors` (burn-store, GPT-2 parameter names)
//! and `model.json` (magic, format version, the [`GptConfig`], the SHA-256 of the weights).
//!
//! The JSON file is written last, so a folder without it is incomplete; the checksum catches a
//! truncated or bit-flipped weights file before any tensor is loaded. Whole checkpoint folders
//! are made atomic by [`write_dir_atomically`] (temp folder + rename).
//!
//! Weights are streamed both ways, so that saving or loading a model costs about one tensor of
//! memory beyond the model itself: [`save_model`] writes the file tensor by tensor in chunks
//! ([`WeightsLayout`], the same bytes burn-store's in-memory writer produced), and
//! [`load_model`] hashes the file in blocks and then reads one tensor at a time into the model.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Element, Int, Tensor, TensorData};
use burn_store::{ModuleSnapshot, SafetensorsStore, TensorSnapshot, TensorSnapshotError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{ConfigError, GptConfig};
use crate::gpt::Gpt;

/// Identifies our model metadata files.
pub const MODEL_MAGIC: &str = "hyperclone-model";
/// Version of the model folder layout; bumped on any incompatible change.
pub const MODEL_FORMAT_VERSION: u32 = 1;
/// Weights file name inside a model folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Metadata file name inside a model folder (written last).
pub const META_FILE: &str = "model.json";

/// Contents of `model.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelMeta {
    /// Always [`MODEL_MAGIC`].
    pub magic: String,
    /// [`MODEL_FORMAT_VERSION`] at the time of writing.
    pub version: u32,
    /// The architecture of the stored weights.
    pub config: GptConfig,
    /// Lower-case hex SHA-256 of `model.safetensors`.
    pub weights_sha256: String,
}

/// Why a model folder could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `model.json` is missing: the folder is not a (complete) model checkpoint.
    #[error("{path} is not a complete model checkpoint: {META_FILE} is missing")]
    Incomplete {
        /// The folder.
        path: PathBuf,
    },
    /// `model.json` is not valid JSON of the expected shape, or has the wrong magic/version.
    #[error("{path}: {reason}")]
    BadMeta {
        /// The metadata file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The stored configuration is invalid.
    #[error("{path}: {source}")]
    BadConfig {
        /// The metadata file.
        path: PathBuf,
        /// The validation error.
        source: ConfigError,
    },
    /// The weights file does not match the checksum recorded in `model.json`.
    #[error(
        "{path} is corrupted: sha256 {found} does not match {expected} recorded in {META_FILE}"
    )]
    Checksum {
        /// The weights file.
        path: PathBuf,
        /// Recorded checksum.
        expected: String,
        /// Checksum of the bytes on disk.
        found: String,
    },
    /// burn-store could not serialise or parse the weights.
    #[error("{path}: safetensors: {reason}")]
    Store {
        /// The weights file.
        path: PathBuf,
        /// The store's message.
        reason: String,
    },
    /// Tensors are missing, unexpected or of the wrong shape for the recorded config.
    #[error("{path}: weights do not fit the config: {reason}")]
    Mismatch {
        /// The weights file.
        path: PathBuf,
        /// Missing/unused/mis-shaped tensor names.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Writes `bytes` to `path` atomically: temp file in the same folder, fsync, rename.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    write_file_streaming(path, |w| w.write_all(bytes))
}

/// Writes a file at `path` atomically from a stream: `fill` writes the contents through a
/// buffered writer into a temp file next to `path` (`.{name}.tmp-{pid}`), which is fsynced and
/// renamed to `path` only when `fill` succeeds; on failure the temp file is removed and `path`
/// is untouched. I/O errors name the temp file (writing) or `path` (renaming).
pub fn write_file_streaming(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<fs::File>) -> std::io::Result<()>,
) -> Result<(), CheckpointError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let file = fs::File::create(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        fill(&mut w)?;
        let file = w
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err(path)(e)
    })
}

/// Builds a folder at `dest` atomically: `fill` writes into a fresh temp folder next to it,
/// which is fsynced and renamed to `dest` only when `fill` succeeds. An existing `dest` is
/// replaced. On failure the temp folder is removed and `dest` is untouched.
pub fn write_dir_atomically<E>(
    dest: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<CheckpointError>,
{
    let parent = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| E::from(io_err(parent)(e)))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| E::from(io_err(&tmp)(e)))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| E::from(io_err(&tmp)(e)))?;
    if let Err(e) = fill(&tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if let Ok(d) = fs::File::open(&tmp) {
        let _ = d.sync_all();
    }
    if dest.exists() {
        // Move the old one aside first so that a crash leaves either the old or the new.
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        fs::rename(dest, &old).map_err(|e| E::from(io_err(dest)(e)))?;
        fs::rename(&tmp, dest).map_err(|e| E::from(io_err(dest)(e)))?;
        let _ = fs::remove_dir_all(&old);
    } else {
        fs::rename(&tmp, dest).map_err(|e| E::from(io_err(dest)(e)))?;
    }
    if let Ok(d) = fs::File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Elements of one tensor read back and written per step when streaming weights to a file
/// (16 MiB of f32): the only host copy of the weights that saving makes.
const WRITE_CHUNK_ELEMENTS: usize = 4 << 20;

/// The safetensors name of a float dtype the model can hold.
fn stored_dtype(dtype: DType) -> Option<safetensors::Dtype> {
    match dtype {
        DType::F64 => Some(safetensors::Dtype::F64),
        DType::F32 | DType::Flex32 => Some(safetensors::Dtype::F32),
        DType::F16 => Some(safetensors::Dtype::F16),
        DType::BF16 => Some(safetensors::Dtype::BF16),
        _ => None,
    }
}

/// The burn dtype of a stored safetensors dtype (the inverse of [`stored_dtype`]).
fn burn_dtype(dtype: safetensors::Dtype) -> Option<DType> {
    match dtype {
        safetensors::Dtype::F64 => Some(DType::F64),
        safetensors::Dtype::F32 => Some(DType::F32),
        safetensors::Dtype::F16 => Some(DType::F16),
        safetensors::Dtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}

/// Collects every float parameter flattened to one dimension, in visiting order (the order of
/// burn-store's `collect`), with its id; counts parameters of other kinds.
struct FlatParams<B: Backend> {
    floats: Vec<(ParamId, Tensor<B, 1>)>,
    others: usize,
}

impl<B: Backend> ModuleVisitor<B> for FlatParams<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let tensor = param.val();
        let elements = tensor.shape().num_elements();
        // [elements]: row-major, so the values come out in the order safetensors stores them.
        self.floats.push((param.id, tensor.reshape([elements])));
    }

    fn visit_int<const D: usize>(&mut self, _param: &Param<Tensor<B, D, Int>>) {
        self.others += 1;
    }

    fn visit_bool<const D: usize>(&mut self, _param: &Param<Tensor<B, D, Bool>>) {
        self.others += 1;
    }
}

/// One tensor of a weights file being written: where its values come from.
struct LaidOutTensor<B: Backend> {
    /// The parameter, flattened (shares the model's storage).
    flat: Tensor<B, 1>,
    /// Number of values.
    elements: usize,
}

/// A model's weights laid out as the `model.safetensors` file that burn-store writes for it
/// (GPT-2 parameter names, `__metadata__` `{format, producer, version}`, tensors ordered by
/// descending dtype then name as the `safetensors` crate orders them), with the header in the
/// canonical form of [`canonical_safetensors`]: byte-identical to what `save_model` wrote when
/// it serialised the whole file in memory, so existing checkpoints and their checksums stay
/// valid.
///
/// Only the header is built up front; [`WeightsLayout::write_to`] reads the values back from
/// the backend in chunks of 4 Mi values (16 MiB of f32), so writing costs no copy of the model
/// (saving a 1.6 GB model used to hold three more copies of it: burn-store's snapshot bytes,
/// the serialised buffer and its canonical rewrite).
pub struct WeightsLayout<B: Backend> {
    header: Vec<u8>,
    tensors: Vec<LaidOutTensor<B>>,
    data_len: u64,
}

impl<B: Backend> WeightsLayout<B> {
    /// Lays out the weights of `model`; the error names the tensor that cannot be stored.
    pub fn new(model: &Gpt<B>) -> Result<Self, String> {
        let snapshots = model.collect(None, None, false);
        let mut params = FlatParams {
            floats: Vec::new(),
            others: 0,
        };
        model.visit(&mut params);
        if params.others > 0 || params.floats.len() != snapshots.len() {
            return Err(format!(
                "{} float and {} other parameters for {} named tensors: only float parameters can be stored",
                params.floats.len(),
                params.others,
                snapshots.len()
            ));
        }
        let mut entries = Vec::with_capacity(snapshots.len());
        for (snapshot, (id, flat)) in snapshots.into_iter().zip(params.floats) {
            let name = snapshot.full_path();
            if snapshot.tensor_id != Some(id) {
                return Err(format!("tensor {name}: parameters visited out of order"));
            }
            let dtype = stored_dtype(snapshot.dtype).ok_or_else(|| {
                format!("tensor {name}: dtype {:?} cannot be stored", snapshot.dtype)
            })?;
            let shape = snapshot.shape.to_vec();
            let elements = shape.iter().product::<usize>();
            let bytes = snapshot.data_len();
            entries.push((name, dtype, shape, elements, bytes, flat));
        }
        // The safetensors crate's order: descending dtype, then name.
        entries.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let metadata: BTreeMap<String, String> =
            SafetensorsStore::default_metadata().into_iter().collect();
        let mut header = serde_json::Map::new();
        header.insert(
            "__metadata__".to_string(),
            serde_json::to_value(metadata).expect("strings serialise"),
        );
        let mut tensors = Vec::with_capacity(entries.len());
        let mut offset = 0usize;
        for (name, dtype, shape, elements, bytes, flat) in entries {
            let end = offset + bytes;
            let entry = serde_json::json!({
                "dtype": dtype,
                "shape": shape,
                "data_offsets": [offset, end],
            });
            if header.insert(name.clone(), entry).is_some() {
                return Err(format!("tensor {name} is named twice"));
            }
            offset = end;
            tensors.push(LaidOutTensor { flat, elements });
        }
        let mut json = serde_json::to_vec(&sort_keys(serde_json::Value::Object(header)))
            .expect("a JSON value serialises");
        json.resize(json.len().next_multiple_of(8), b' ');
        let mut framed = Vec::with_capacity(8 + json.len());
        framed.extend_from_slice(&(json.len() as u64).to_le_bytes());
        framed.extend_from_slice(&json);
        Ok(WeightsLayout {
            header: framed,
            tensors,
            data_len: offset as u64,
        })
    }

    /// The length of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.header.len() as u64 + self.data_len
    }

    /// Writes the file to `w` (unbuffered writers should be wrapped in a `BufWriter`), one
    /// chunk of one tensor on the host at a time.
    pub fn write_to<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        self.write_chunked(w, WRITE_CHUNK_ELEMENTS)
    }

    /// [`WeightsLayout::write_to`] with chunks of `chunk_elements` values.
    fn write_chunked<W: Write>(&self, w: &mut W, chunk_elements: usize) -> std::io::Result<()> {
        w.write_all(&self.header)?;
        for tensor in &self.tensors {
            let mut start = 0;
            while start < tensor.elements {
                let end = (start + chunk_elements).min(tensor.elements);
                let chunk = if start == 0 && end == tensor.elements {
                    tensor.flat.clone()
                } else {
                    tensor.flat.clone().slice(start..end)
                };
                let data = chunk.try_into_data().map_err(|e| {
                    std::io::Error::other(format!("reading weights back to the host: {e:?}"))
                })?;
                w.write_all(data.as_bytes())?;
                start = end;
            }
        }
        Ok(())
    }
}

/// Serialises the model's weights to safetensors bytes in memory (the layout of
/// [`WeightsLayout`]: equal weights give equal bytes). [`save_model`] streams them to disk
/// instead.
pub fn weights_to_bytes<B: Backend>(model: &Gpt<B>) -> Result<Vec<u8>, String> {
    let layout = WeightsLayout::new(model)?;
    let mut out = Vec::with_capacity(usize::try_from(layout.file_len()).unwrap_or(0));
    layout.write_to(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// A writer that hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Lower-case hex of a digest.
fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lower-case hex SHA-256 of the file at `path`, read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> Result<String, CheckpointError> {
    let mut file = fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut block).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&block[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// JSON `value` with the keys of every object in sorted order, whatever order it was built in.
fn sort_keys(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let sorted: std::collections::BTreeMap<String, serde_json::Value> =
                map.into_iter().map(|(k, v)| (k, sort_keys(v))).collect();
            serde_json::Value::Object(sorted.into_iter().collect())
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sort_keys).collect())
        }
        other => other,
    }
}

/// Rewrites a safetensors buffer with its JSON header in one canonical form (every object's
/// keys sorted, padded with spaces to 8 bytes), the tensor data unchanged.
///
/// The `safetensors` crate (and burn-store through it) takes the `__metadata__` strings as a
/// `HashMap` and writes them in its random iteration order, so two saves of identical tensors
/// would differ in their header bytes and their checksums. Readers accept the entries in any
/// order (tensors are located by their offsets).
pub fn canonical_safetensors(bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    let header_len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .ok_or("shorter than the 8-byte header length")?;
    let header_end = 8usize
        .checked_add(header_len)
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| format!("header length {header_len} exceeds the buffer"))?;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..header_end])
        .map_err(|e| format!("header is not JSON: {e}"))?;
    let mut json = serde_json::to_vec(&sort_keys(header)).expect("a JSON value serialises");
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + bytes.len() - header_end);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&bytes[header_end..]);
    Ok(out)
}

/// Writes `model.safetensors` then `model.json` into the existing folder `dir`.
///
/// The weights are streamed to a temp file (see [`WeightsLayout`]) and hashed as they are
/// written: saving holds no host copy of the model, only one chunk of one tensor at a time.
pub fn save_model<B: Backend>(model: &Gpt<B>, dir: &Path) -> Result<(), CheckpointError> {
    let weights_path = dir.join(WEIGHTS_FILE);
    let layout = WeightsLayout::new(model).map_err(|reason| CheckpointError::Store {
        path: weights_path.clone(),
        reason,
    })?;
    let mut weights_sha256 = String::new();
    write_file_streaming(&weights_path, |w| {
        let mut hashing = HashingWriter {
            inner: w,
            hasher: Sha256::new(),
        };
        layout.write_to(&mut hashing)?;
        weights_sha256 = hex(&hashing.hasher.finalize());
        Ok(())
    })?;
    let meta = ModelMeta {
        magic: MODEL_MAGIC.to_string(),
        version: MODEL_FORMAT_VERSION,
        config: model.config().clone(),
        weights_sha256,
    };
    let json = serde_json::to_vec_pretty(&meta).expect("ModelMeta serialises");
    write_file_atomically(&dir.join(META_FILE), &json)
}

/// Reads and checks `model.json` of a model folder.
pub fn read_meta(dir: &Path) -> Result<ModelMeta, CheckpointError> {
    let path = dir.join(META_FILE);
    if !path.exists() {
        if !dir.exists() {
            return Err(CheckpointError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
            });
        }
        return Err(CheckpointError::Incomplete {
            path: dir.to_path_buf(),
        });
    }
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    let meta: ModelMeta = serde_json::from_str(&text).map_err(|e| CheckpointError::BadMeta {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if meta.magic != MODEL_MAGIC {
        return Err(CheckpointError::BadMeta {
            path,
            reason: format!("magic is {:?}, expected {MODEL_MAGIC:?}", meta.magic),
        });
    }
    if meta.version != MODEL_FORMAT_VERSION {
        return Err(CheckpointError::BadMeta {
            path,
            reason: format!(
                "format version {} is not supported (this build reads {MODEL_FORMAT_VERSION})",
                meta.version
            ),
        });
    }
    meta.config
        .validate()
        .map_err(|source| CheckpointError::BadConfig { path, source })?;
    Ok(meta)
}

/// Loads a model folder written by [`save_model`], verifying the checksum and that every
/// tensor is present with the shape the recorded config implies.
///
/// The weights file is hashed in blocks, then read tensor by tensor into the model (see
/// [`load_weights_from`]): loading holds the model plus one tensor's bytes, never the file.
pub fn load_model<B: Backend>(dir: &Path, device: &B::Device) -> Result<Gpt<B>, CheckpointError> {
    let meta = read_meta(dir)?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let found = sha256_file(&weights_path)?;
    if found != meta.weights_sha256 {
        return Err(CheckpointError::Checksum {
            path: weights_path,
            expected: meta.weights_sha256,
            found,
        });
    }
    let model =
        Gpt::<B>::zeros(&meta.config, device).map_err(|source| CheckpointError::BadConfig {
            path: dir.join(META_FILE),
            source,
        })?;
    let file = fs::File::open(&weights_path).map_err(io_err(&weights_path))?;
    load_weights_from(model, file, &weights_path)
}

/// Casts every float parameter to the backend's float element type: weights saved in bf16 (a
/// `bf16-pure` run) load into an f32 model as f32, and f32 weights into a bf16 backend as bf16.
struct ToBackendFloat;

impl<B: Backend> ModuleMapper<B> for ToBackendFloat {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let want = <B::FloatElem as Element>::dtype();
        let tensor = if tensor.dtype() == want {
            tensor
        } else {
            tensor.cast(want)
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// One entry of a safetensors header.
#[derive(Deserialize)]
struct HeaderEntry {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// A tensor of a safetensors file being read.
struct StoredTensor {
    /// Its name (GPT-2 parameter path).
    name: String,
    /// The stored dtype.
    dtype: DType,
    /// Its shape.
    shape: Vec<usize>,
    /// Where its bytes start in the file.
    offset: u64,
    /// How many bytes it has.
    len: usize,
}

/// Reads and checks the header of the safetensors file in `reader` (`file_len` bytes): the
/// tensors with their dtype, shape and absolute byte range, which must tile the data section
/// exactly. Errors are the reason, for [`CheckpointError::Store`].
fn read_header<R: Read>(reader: &mut R, file_len: u64) -> Result<Vec<StoredTensor>, String> {
    let mut len_bytes = [0u8; 8];
    reader
        .read_exact(&mut len_bytes)
        .map_err(|e| format!("reading the header length: {e}"))?;
    let header_len = u64::from_le_bytes(len_bytes);
    let data_start = header_len
        .checked_add(8)
        .filter(|&end| end <= file_len)
        .ok_or_else(|| format!("header length {header_len} exceeds the file ({file_len} bytes)"))?;
    let mut json = vec![0u8; header_len as usize];
    reader
        .read_exact(&mut json)
        .map_err(|e| format!("reading the header: {e}"))?;
    let mut header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&json).map_err(|e| format!("header is not valid JSON: {e}"))?;
    header.remove("__metadata__");
    let mut tensors = Vec::with_capacity(header.len());
    for (name, value) in header {
        let entry: HeaderEntry = serde_json::from_value(value)
            .map_err(|e| format!("header entry of tensor {name}: {e}"))?;
        let dtype = burn_dtype(entry.dtype)
            .ok_or_else(|| format!("tensor {name}: dtype {:?} is not a float type", entry.dtype))?;
        let [start, end] = entry.data_offsets;
        let want = entry
            .shape
            .iter()
            .try_fold(dtype.size() as u64, |n, &d| n.checked_mul(d as u64));
        if end < start || want != Some(end - start) {
            return Err(format!(
                "tensor {name}: data_offsets [{start}, {end}] do not hold a {:?} tensor of shape {:?}",
                entry.dtype, entry.shape
            ));
        }
        let len = usize::try_from(end - start)
            .map_err(|_| format!("tensor {name}: {} bytes do not fit in memory", end - start))?;
        tensors.push(StoredTensor {
            name,
            dtype,
            shape: entry.shape,
            offset: start,
            len,
        });
    }
    // The tensors must tile the data section, as the safetensors crate requires.
    let mut ranges: Vec<(u64, u64, &str)> = tensors
        .iter()
        .map(|t| (t.offset, t.offset + t.len as u64, t.name.as_str()))
        .collect();
    ranges.sort();
    let mut expected = 0u64;
    for (start, end, name) in ranges {
        if start != expected {
            return Err(format!(
                "tensor {name} starts at byte {start} of the data, expected {expected}"
            ));
        }
        expected = end;
    }
    if data_start + expected != file_len {
        return Err(format!(
            "the tensors end at byte {} but the file has {file_len}",
            data_start + expected
        ));
    }
    for tensor in &mut tensors {
        tensor.offset += data_start;
    }
    Ok(tensors)
}

/// Applies the safetensors file in `reader` to `model` (cast to the backend's float type),
/// refusing missing, unused or mis-shaped tensors. Tensors are read one at a time as the model
/// takes them, so the model plus one tensor's bytes are on the host at once. Errors name
/// `path`.
pub fn load_weights_from<B: Backend, R: Read + Seek + 'static>(
    model: Gpt<B>,
    mut reader: R,
    path: &Path,
) -> Result<Gpt<B>, CheckpointError> {
    let file_len = reader
        .seek(SeekFrom::End(0))
        .and_then(|len| reader.seek(SeekFrom::Start(0)).map(|_| len))
        .map_err(io_err(path))?;
    let header = read_header(&mut reader, file_len).map_err(|reason| CheckpointError::Store {
        path: path.to_path_buf(),
        reason,
    })?;
    let reader = Rc::new(RefCell::new(reader));
    // The first read error, reported as such rather than as a tensor that failed to load.
    let read_error: Rc<RefCell<Option<std::io::Error>>> = Rc::new(RefCell::new(None));
    let snapshots = header
        .into_iter()
        .map(|tensor| {
            let StoredTensor {
                name,
                dtype,
                shape,
                offset,
                len,
            } = tensor;
            let (reader, read_error) = (Rc::clone(&reader), Rc::clone(&read_error));
            let data_shape = shape.clone();
            let read = move || {
                let mut bytes = vec![0u8; len];
                let mut reader = reader.borrow_mut();
                let done = reader
                    .seek(SeekFrom::Start(offset))
                    .and_then(|_| reader.read_exact(&mut bytes));
                match done {
                    Ok(()) => Ok(TensorData::from_bytes_vec(bytes, data_shape.clone(), dtype)),
                    Err(e) => {
                        let message = e.to_string();
                        read_error.borrow_mut().get_or_insert(e);
                        Err(TensorSnapshotError::IoError(message))
                    }
                }
            };
            let path_stack = name.split('.').map(str::to_string).collect();
            TensorSnapshot::from_closure(
                Rc::new(read),
                dtype,
                shape.into(),
                path_stack,
                Vec::new(),
                ParamId::new(),
            )
        })
        .collect();
    let mut model = model;
    let result = model.apply(snapshots, None, None, false);
    if let Some(source) = read_error.borrow_mut().take() {
        return Err(io_err(path)(source));
    }
    // The snapshots keep each tensor's stored dtype; a model computes in its backend's.
    let model = Module::map(model, &mut ToBackendFloat);
    let mut problems = Vec::new();
    if !result.missing.is_empty() {
        let names: Vec<_> = result.missing.iter().map(|(p, _)| p.as_str()).collect();
        problems.push(format!("missing tensors {names:?}"));
    }
    if !result.unused.is_empty() {
        problems.push(format!("unexpected tensors {:?}", result.unused));
    }
    if !result.errors.is_empty() {
        let errs: Vec<String> = result.errors.iter().map(|e| format!("{e:?}")).collect();
        problems.push(errs.join("; "));
    }
    if problems.is_empty() {
        Ok(model)
    } else {
        Err(CheckpointError::Mismatch {
            path: path.to_path_buf(),
            reason: problems.join("; "),
        })
    }
}

/// [`load_weights_from`] safetensors `bytes` in memory.
pub fn load_weights_bytes<B: Backend>(
    model: Gpt<B>,
    bytes: Vec<u8>,
    path: &Path,
) -> Result<Gpt<B>, CheckpointError> {
    load_weights_from(model, std::io::Cursor::new(bytes), path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpt::tokens_tensor;
    use burn::backend::Flex;

    type B = Flex;

    fn logits(model: &Gpt<B>) -> Vec<f32> {
        let device = Default::default();
        let ids: Vec<u32> = (0..16).map(|i| (i * 7 % 512) as u32).collect();
        model
            .forward(tokens_tensor(&ids, 2, 8, &device))
            .into_data()
            .convert::<f32>()
            .into_vec()
            .unwrap()
    }

    #[test]
    fn save_load_round_trip_is_bit_exact_for_every_architecture() {
        let device = Default::default();
        for config in [GptConfig::cpu_tiny(), llama_tiny()] {
            let tmp = tempfile::tempdir().unwrap();
            let model = Gpt::<B>::init(&config, 42, &device).unwrap();
            save_model(&model, tmp.path()).unwrap();
            let loaded = load_model::<B>(tmp.path(), &device).unwrap();
            assert_eq!(loaded.config(), model.config());
            assert_eq!(logits(&loaded), logits(&model));
        }
    }

    /// Saving the same weights again gives the same bytes: burn-store writes the header's
    /// `__metadata__` keys in a random (HashMap) order, which the canonical header removes.
    #[test]
    fn identical_weights_save_to_identical_bytes() {
        let device = Default::default();
        let model = Gpt::<B>::init(&GptConfig::cpu_tiny(), 3, &device).unwrap();
        let first = tempfile::tempdir().unwrap();
        save_model(&model, first.path()).unwrap();
        let want = fs::read(first.path().join(WEIGHTS_FILE)).unwrap();
        let want_meta = fs::read(first.path().join(META_FILE)).unwrap();
        // Sixteen more saves: with three metadata keys in random order, they would hardly all
        // agree with the first by chance.
        for _ in 0..16 {
            let again = tempfile::tempdir().unwrap();
            save_model(&model, again.path()).unwrap();
            assert!(fs::read(again.path().join(WEIGHTS_FILE)).unwrap() == want);
            assert_eq!(fs::read(again.path().join(META_FILE)).unwrap(), want_meta);
        }
        // The canonical file still loads, bit-exact.
        let loaded = load_model::<B>(first.path(), &device).unwrap();
        assert_eq!(logits(&loaded), logits(&model));
    }

    /// The in-memory writer `save_model` used before it streamed: burn-store's safetensors
    /// serialisation of the whole model, with the header made canonical.
    fn burn_store_bytes(model: &Gpt<B>) -> Vec<u8> {
        let mut store = SafetensorsStore::from_bytes(None);
        model.save_into(&mut store).unwrap();
        canonical_safetensors(store.get_bytes().unwrap()).unwrap()
    }

    /// A small Llama-style config (RoPE, SwiGLU, RMSNorm, untied head).
    fn llama_tiny() -> GptConfig {
        let mut c = GptConfig::llama_small();
        c.vocab_size = 512;
        c.n_layer = 2;
        c.d_model = 64;
        c.d_ff = 96;
        c
    }

    /// The streamed file is byte for byte the file burn-store wrote (so checkpoints written
    /// before keep their checksums and load, and files written now load in older builds),
    /// for both architectures, f32 and bf16 weights, in whole tensors and in chunks that split
    /// tensors at odd places; `save_model` records the SHA-256 of exactly these bytes.
    #[test]
    fn streamed_weights_are_byte_identical_to_burn_stores_file() {
        let device = Default::default();
        let gpt2 = Gpt::<B>::init(&GptConfig::cpu_tiny(), 5, &device).unwrap();
        let llama = Gpt::<B>::init(&llama_tiny(), 6, &device).unwrap();
        let bf16 = Module::map(gpt2.clone(), &mut ToBf16);
        // Mixed dtypes: the safetensors crate puts F32 before BF16 whatever the names.
        let mixed = Module::map(llama.clone(), &mut MatricesToBf16);
        for model in [gpt2, llama, bf16, mixed] {
            let want = burn_store_bytes(&model);
            let layout = WeightsLayout::new(&model).unwrap();
            assert_eq!(layout.file_len(), want.len() as u64);
            for chunk in [WRITE_CHUNK_ELEMENTS, 1000, 7, 1] {
                let mut got = Vec::new();
                layout.write_chunked(&mut got, chunk).unwrap();
                assert!(got == want, "chunks of {chunk}: the bytes differ");
            }
            let dir = tempfile::tempdir().unwrap();
            save_model(&model, dir.path()).unwrap();
            assert!(fs::read(dir.path().join(WEIGHTS_FILE)).unwrap() == want);
            let meta = read_meta(dir.path()).unwrap();
            assert_eq!(meta.weights_sha256, sha256_hex(&want));
            assert_eq!(
                sha256_file(&dir.path().join(WEIGHTS_FILE)).unwrap(),
                sha256_hex(&want)
            );
            // A file of the old writer loads bit-exact through the streaming reader.
            let zeros = Gpt::<B>::zeros(model.config(), &device).unwrap();
            let loaded = load_weights_bytes(zeros, want, &dir.path().join("x")).unwrap();
            let f32_model = Module::map(model, &mut ToF32);
            assert_eq!(logits(&loaded), logits(&f32_model));
        }
    }

    /// Headers that lie about the data are refused with the tensor and the reason.
    #[test]
    fn weights_with_inconsistent_headers_are_refused() {
        let device = Default::default();
        let model = Gpt::<B>::init(&GptConfig::cpu_tiny(), 1, &device).unwrap();
        let good = weights_to_bytes(&model).unwrap();
        let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&good[8..8 + n]).unwrap().to_string();
        let data = &good[8 + n..];
        let with_header = |text: &str| {
            let mut json = text.as_bytes().to_vec();
            json.resize(json.len().next_multiple_of(8), b' ');
            let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(&json);
            bytes.extend_from_slice(data);
            bytes
        };
        let load = |bytes: Vec<u8>| {
            let zeros = Gpt::<B>::zeros(&GptConfig::cpu_tiny(), &device).unwrap();
            load_weights_bytes(zeros, bytes, Path::new("w.safetensors"))
                .map(|_| ())
                .expect_err("refused")
                .to_string()
        };
        // A tensor whose byte range does not match its shape.
        let bad_shape = header.replacen("\"shape\":[128]", "\"shape\":[127]", 1);
        assert_ne!(bad_shape, header);
        let e = load(with_header(&bad_shape));
        assert!(
            e.contains("w.safetensors") && e.contains("shape [127]"),
            "{e}"
        );
        // A file cut short of its last tensor.
        let e = load(good[..good.len() - 4].to_vec());
        assert!(e.contains("the tensors end at byte"), "{e}");
        // A header longer than the file, and a header that is not JSON.
        let e = load(u64::MAX.to_le_bytes().to_vec());
        assert!(e.contains("exceeds the file"), "{e}");
        let e = load(with_header("{{{"));
        assert!(e.contains("not valid JSON"), "{e}");
        // An integer tensor.
        let ints = header.replacen("\"F32\"", "\"I32\"", 1);
        let e = load(with_header(&ints));
        assert!(e.contains("is not a float type"), "{e}");
    }

    #[test]
    fn canonical_header_sorts_keys_keeps_data_and_refuses_garbage() {
        let header = br#"{"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"__metadata__":{"z":"1","a":"2"}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&1.5f32.to_le_bytes());
        let out = canonical_safetensors(bytes).unwrap();
        let n = u64::from_le_bytes(out[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        let text = std::str::from_utf8(&out[8..8 + n]).unwrap().trim_end();
        assert_eq!(
            text,
            r#"{"__metadata__":{"a":"2","z":"1"},"b":{"data_offsets":[0,4],"dtype":"F32","shape":[1]}}"#
        );
        assert_eq!(&out[8 + n..], &1.5f32.to_le_bytes());
        assert!(canonical_safetensors(vec![1, 2]).is_err());
        assert!(canonical_safetensors(u64::MAX.to_le_bytes().to_vec()).is_err());
        let mut bad = 3u64.to_le_bytes().to_vec();
        bad.extend_from_slice(b"{{{");
        assert!(canonical_safetensors(bad).unwrap_err().contains("JSON"));
    }

    #[test]
    fn corrupted_truncated_and_incomplete_folders_are_refused() {
        let device = Default::default();
        let tmp = tempfile::tempdir().unwrap();
        let model = Gpt::<B>::init(&GptConfig::cpu_tiny(), 1, &device).unwrap();
        save_model(&model, tmp.path()).unwrap();
        let weights = tmp.path().join(WEIGHTS_FILE);
        let mut bytes = fs::read(&weights).unwrap();

        // Bit flip in the middle of the tensor data.
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x10;
        fs::write(&weights, &bytes).unwrap();
        let e = load_model::<B>(tmp.path(), &device).unwrap_err();
        assert!(matches!(e, CheckpointError::Checksum { .. }), "{e}");
        assert!(e.to_string().contains("model.safetensors"), "{e}");

        // Truncation.
        bytes[mid] ^= 0x10;
        fs::write(&weights, &bytes[..bytes.len() - 100]).unwrap();
        let e = load_model::<B>(tmp.path(), &device).unwrap_err();
        assert!(matches!(e, CheckpointError::Checksum { .. }), "{e}");

        // No metadata: incomplete.
        fs::remove_file(tmp.path().join(META_FILE)).unwrap();
        let e = load_model::<B>(tmp.path(), &device).unwrap_err();
        assert!(matches!(e, CheckpointError::Incomplete { .. }), "{e}");
    }

    #[test]
    fn weights_for_another_config_are_refused_with_names() {
        let device = Default::default();
        let tmp = tempfile::tempdir().unwrap();
        let model = Gpt::<B>::init(&GptConfig::cpu_tiny(), 1, &device).unwrap();
        let bytes = weights_to_bytes(&model).unwrap();
        let untied = GptConfig {
            tie_embeddings: false,
            ..GptConfig::cpu_tiny()
        };
        let narrower = GptConfig {
            d_ff: 256,
            ..GptConfig::cpu_tiny()
        };
        for (config, name) in [(untied, "lm_head"), (narrower, "c_fc")] {
            let other = Gpt::<B>::init(&config, 1, &device).unwrap();
            let e = load_weights_bytes(other, bytes.clone(), &tmp.path().join("x"));
            let msg = e.unwrap_err().to_string();
            assert!(msg.contains(name), "{msg}");
        }
    }

    #[test]
    fn atomic_dir_leaves_nothing_on_failure_and_replaces_on_success() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("step-00000001");
        let r: Result<(), CheckpointError> = write_dir_atomically(&dest, |d| {
            fs::write(d.join("a"), b"1").unwrap();
            Err(CheckpointError::Incomplete {
                path: d.to_path_buf(),
            })
        });
        assert!(r.is_err());
        assert!(!dest.exists());
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
        write_dir_atomically::<CheckpointError>(&dest, |d| {
            fs::write(d.join("a"), b"2").map_err(io_err(d))
        })
        .unwrap();
        assert_eq!(fs::read(dest.join("a")).unwrap(), b"2");
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    /// Rounds every float parameter to bf16, as a `bf16-pure` run holds them.
    struct ToBf16;
    impl ModuleMapper<B> for ToBf16 {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, t, mapper) = p.consume();
            Param::from_mapped_value(id, t.cast(burn::tensor::FloatDType::BF16), mapper)
        }
    }

    /// Weights saved in bf16 stay bf16 on disk (half the bytes) and load into an f32 model as
    /// f32: exactly the bf16-rounded values, with the same logits as the bf16-rounded model.
    #[test]
    fn bf16_weights_load_into_an_f32_model_as_f32() {
        use burn::tensor::DType;
        let device = Default::default();
        let model = Gpt::<B>::init(&GptConfig::cpu_tiny(), 1, &device).unwrap();
        let rounded = Module::map(model, &mut ToBf16);
        assert_eq!(rounded.wte.weight.val().dtype(), DType::BF16);
        let dir = tempfile::tempdir().unwrap();
        save_model(&rounded, dir.path()).unwrap();
        let bytes = fs::read(dir.path().join(WEIGHTS_FILE)).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
        assert!(
            header.contains("\"BF16\"") && !header.contains("\"F32\""),
            "{header}"
        );

        let loaded = load_model::<B>(dir.path(), &device).unwrap();
        for w in [
            loaded.wte.weight.val(),
            loaded.h[0].attn.c_attn.weight.val(),
            loaded.h[1].mlp.c_proj.weight.val(),
        ] {
            assert_eq!(w.dtype(), DType::F32);
        }
        assert_eq!(loaded.ln_f.weight.val().dtype(), DType::F32);
        let want = rounded.h[0]
            .attn
            .c_attn
            .weight
            .val()
            .cast(DType::F32)
            .into_data();
        assert_eq!(loaded.h[0].attn.c_attn.weight.val().into_data(), want);
        let f32_again = Module::map(rounded, &mut ToF32);
        assert_eq!(logits(&loaded), logits(&f32_again));
    }

    /// Rounds the matrices to bf16 and keeps the vectors (norms, biases) in f32.
    struct MatricesToBf16;
    impl ModuleMapper<B> for MatricesToBf16 {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, t, mapper) = p.consume();
            let t = if D == 2 {
                t.cast(burn::tensor::FloatDType::BF16)
            } else {
                t
            };
            Param::from_mapped_value(id, t, mapper)
        }
    }

    struct ToF32;
    impl ModuleMapper<B> for ToF32 {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, t, mapper) = p.consume();
            Param::from_mapped_value(id, t.cast(burn::tensor::FloatDType::F32), mapper)
        }
    }
}
