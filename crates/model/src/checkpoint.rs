//! Model weights on disk: a folder with `model.safetensors` (burn-store, GPT-2 parameter names)
//! and `model.json` (magic, format version, the [`GptConfig`], the SHA-256 of the weights).
//!
//! The JSON file is written last, so a folder without it is incomplete; the checksum catches a
//! truncated or bit-flipped weights file before any tensor is loaded. Whole checkpoint folders
//! are made atomic by [`write_dir_atomically`] (temp folder + rename).

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Element, Tensor};
use burn_store::{ModuleSnapshot, SafetensorsStore};
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
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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

/// Serialises the model's weights to safetensors bytes (GPT-2 parameter names), in the
/// canonical layout of [`canonical_safetensors`]: equal weights give equal bytes.
pub fn weights_to_bytes<B: Backend>(model: &Gpt<B>) -> Result<Vec<u8>, String> {
    let mut store = SafetensorsStore::from_bytes(None);
    model.save_into(&mut store).map_err(|e| e.to_string())?;
    canonical_safetensors(store.get_bytes().map_err(|e| e.to_string())?)
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
pub fn save_model<B: Backend>(model: &Gpt<B>, dir: &Path) -> Result<(), CheckpointError> {
    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = weights_to_bytes(model).map_err(|reason| CheckpointError::Store {
        path: weights_path.clone(),
        reason,
    })?;
    write_file_atomically(&weights_path, &bytes)?;
    let meta = ModelMeta {
        magic: MODEL_MAGIC.to_string(),
        version: MODEL_FORMAT_VERSION,
        config: model.config().clone(),
        weights_sha256: sha256_hex(&bytes),
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
pub fn load_model<B: Backend>(dir: &Path, device: &B::Device) -> Result<Gpt<B>, CheckpointError> {
    let meta = read_meta(dir)?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = fs::read(&weights_path).map_err(io_err(&weights_path))?;
    let found = sha256_hex(&bytes);
    if found != meta.weights_sha256 {
        return Err(CheckpointError::Checksum {
            path: weights_path,
            expected: meta.weights_sha256,
            found,
        });
    }
    let mut model =
        Gpt::<B>::zeros(&meta.config, device).map_err(|source| CheckpointError::BadConfig {
            path: dir.join(META_FILE),
            source,
        })?;
    load_weights_bytes(&mut model, bytes, &weights_path)?;
    Ok(model)
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

/// Applies safetensors `bytes` to `model` (cast to the backend's float type), refusing missing,
/// unused or mis-shaped tensors.
pub fn load_weights_bytes<B: Backend>(
    model: &mut Gpt<B>,
    bytes: Vec<u8>,
    path: &Path,
) -> Result<(), CheckpointError> {
    let mut store = SafetensorsStore::from_bytes(Some(bytes)).allow_partial(true);
    let result = model
        .load_from(&mut store)
        .map_err(|e| CheckpointError::Store {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    // The store keeps each tensor's stored dtype; a model computes in its backend's.
    *model = Module::map(model.clone(), &mut ToBackendFloat);
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
        Ok(())
    } else {
        Err(CheckpointError::Mismatch {
            path: path.to_path_buf(),
            reason: problems.join("; "),
        })
    }
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
        for config in [GptConfig::cpu_tiny(), {
            let mut c = GptConfig::llama_small();
            c.vocab_size = 512;
            c.n_layer = 2;
            c.d_model = 64;
            c.d_ff = 96;
            c
        }] {
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
            let mut other = Gpt::<B>::init(&config, 1, &device).unwrap();
            let e = load_weights_bytes(&mut other, bytes.clone(), &tmp.path().join("x"));
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

    struct ToF32;
    impl ModuleMapper<B> for ToF32 {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, t, mapper) = p.consume();
            Param::from_mapped_value(id, t.cast(burn::tensor::FloatDType::F32), mapper)
        }
    }
}
