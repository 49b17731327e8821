//! `manifest.json`: what a prepared directory was made from and holds.

use super::{io_err, PrepareError, TokenizerSpec};
use crate::input::{InputRecord, Utf8Policy};
use crate::shard::Dtype;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Version of the manifest layout.
pub const MANIFEST_VERSION: u32 = 1;

/// One shard in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// Path relative to the prepared directory, e.g. `train/shard-00000.bin`.
    pub file: String,
    /// Tokens in it.
    pub tokens: u64,
    /// Its checksum (hex SHA-256, as in its header).
    pub checksum: String,
}

/// One split (train or val) in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitManifest {
    /// Tokens in the split.
    pub tokens: u64,
    /// Documents read (a held-out val split counts none).
    pub documents: u64,
    /// Bytes of text read (for parquet: of the decoded text column, not of the compressed file).
    pub bytes: u64,
    /// Invalid UTF-8 sequences replaced by U+FFFD.
    pub replaced_invalid_utf8: u64,
    /// For a val split carved from the training tokens: the fraction held out.
    pub held_out_fraction: Option<f64>,
    /// The input files.
    pub inputs: Vec<InputRecord>,
    /// The shards, in stream order.
    pub shards: Vec<ShardEntry>,
}

/// `manifest.json` of a prepared directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`].
    pub format_version: u32,
    /// Crate and version that wrote it.
    pub created_by: String,
    /// SHA-256 over the inputs' contents, the tokenizer and the options; what
    /// [`ensure_prepared`] compares.
    pub fingerprint: String,
    /// SHA-256 (hex) of `tokenizer.json`.
    pub tokenizer_hash: String,
    /// How the tokenizer was chosen.
    pub tokenizer: TokenizerSpec,
    /// Vocabulary size (largest id + 1).
    pub vocab_size: u32,
    /// How ids are stored in the shards.
    pub dtype: Dtype,
    /// Id of `<|endoftext|>`, put before every document, if the tokenizer has it.
    pub eot_id: Option<u32>,
    /// JSONL text field used.
    pub jsonl_field: String,
    /// Parquet text column used; only when a parquet file was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parquet_column: Option<String>,
    /// Invalid UTF-8 policy used.
    pub invalid_utf8: Utf8Policy,
    /// Tokens per shard.
    pub shard_tokens: u64,
    /// The training split.
    pub train: SplitManifest,
    /// The validation split.
    pub val: SplitManifest,
}

/// Reads and checks the version of `<dir>/manifest.json`.
pub(super) fn read_manifest(dir: &Path) -> Result<Manifest, PrepareError> {
    let path = dir.join("manifest.json");
    if !path.is_file() {
        return Err(PrepareError::NotPrepared {
            dir: dir.to_path_buf(),
        });
    }
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| PrepareError::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
    if manifest.format_version != MANIFEST_VERSION {
        return Err(PrepareError::Manifest {
            path,
            message: format!(
                "format version {} (this build reads {MANIFEST_VERSION})",
                manifest.format_version
            ),
        });
    }
    Ok(manifest)
}
