//! Inputs → token shards + manifest, and the prepared directory they make.
//!
//! A prepared directory holds:
//!
//! ```text
//! <out>/manifest.json         what was made from what (see [`Manifest`]); written last
//! <out>/tokenizer.json        the exact tokenizer used (its SHA-256 is the tokenizer hash)
//! <out>/train/shard-00000.bin token shards (see [`crate::shard`])
//! <out>/val/shard-00000.bin
//! ```
//!
//! [`prepare`] builds it in a temporary sibling directory and renames it into place, so `<out>`
//! is either absent, the previous complete version, or the new complete version; on error the
//! temporary directory is removed. [`ensure_prepared`] reuses an existing directory when its
//! manifest's fingerprint (input contents by SHA-256, tokenizer, options) matches.
//!
//! Documents are tokenized independently, without special tokens, and the tokenizer's
//! `<|endoftext|>` (when it has one) is put **before** every document. Long documents are cut
//! into pieces of about 64 KiB at line starts (just before a `\n` followed by a non-space
//! character) and the pieces are tokenized in parallel; with GPT-2-style byte-level
//! pre-tokenization this gives exactly the tokens of the whole document, and for any tokenizer the
//! result does not depend on the number of threads. One split's text and tokens are held in
//! memory (about 1 + 4/3 bytes per byte of text), fine up to a few GB.
//!
//! The module in parts: `options.rs` (what to prepare), `manifest.rs` (what was made, in
//! `manifest.json`), `open.rs` (opening and verifying a prepared directory), `plan.rs` (the
//! inputs, tokenizer and fingerprint that decide whether an existing directory can be reused)
//! and `pipeline.rs` (reading, tokenizing, writing the shards and moving the directory into
//! place).

mod manifest;
mod open;
mod options;
mod pipeline;
mod plan;

use crate::hub::HubError;
use crate::input::InputError;
use crate::shard::ShardError;
use crate::tokenizer::TokenizerError;
use std::path::{Path, PathBuf};
use thiserror::Error;

pub use manifest::{Manifest, ShardEntry, SplitManifest, MANIFEST_VERSION};
pub use open::PreparedData;
pub use options::{PrepareOptions, TokenizerSpec};
pub use pipeline::split_pieces;

use manifest::read_manifest;
use plan::Plan;

/// Target size of the pieces documents are cut into for parallel tokenization.
pub const PIECE_BYTES: usize = 64 * 1024;

/// Errors of this module.
#[derive(Debug, Error)]
pub enum PrepareError {
    /// An input could not be read or is malformed.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The tokenizer could not be had or used.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// A shard could not be written or read.
    #[error(transparent)]
    Shard(#[from] ShardError),
    /// A hub file could not be had.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// A file-system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An option has a value that cannot work.
    #[error("invalid data option {key} = {value}: {reason}")]
    InvalidOption {
        /// The option's name.
        key: &'static str,
        /// Its value.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// The directory has no `manifest.json`.
    #[error(
        "{dir} is not a prepared data directory (no manifest.json); run `hyperclone prepare` first"
    )]
    NotPrepared {
        /// The directory.
        dir: PathBuf,
    },
    /// `manifest.json` cannot be parsed or is inconsistent.
    #[error("manifest {path}: {message}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `tokenizer.json` is not the tokenizer the manifest records.
    #[error("{path} has hash {found}, but the manifest records tokenizer {expected}")]
    TokenizerFileMismatch {
        /// The tokenizer file.
        path: PathBuf,
        /// Hash in the manifest.
        expected: String,
        /// Hash of the file.
        found: String,
    },
    /// A shard holds another number of tokens than the manifest records.
    #[error("shard {path} holds {found} tokens, the manifest records {expected}")]
    ShardTokens {
        /// The shard.
        path: PathBuf,
        /// Tokens in the manifest.
        expected: u64,
        /// Tokens in the shard.
        found: u64,
    },
    /// The output exists and is not a prepared directory; it is never overwritten.
    #[error("output {path} exists and is not a prepared data directory (no manifest.json); refusing to replace it")]
    OutNotPrepared {
        /// The output path.
        path: PathBuf,
    },
    /// The data's vocabulary is larger than the model's.
    #[error("data in {dir} uses vocabulary size {data_vocab}, larger than the model's {model_vocab}: token ids would fall outside the embedding table")]
    VocabTooLarge {
        /// The prepared directory.
        dir: PathBuf,
        /// Vocabulary size of the data.
        data_vocab: u32,
        /// Vocabulary size of the model.
        model_vocab: usize,
    },
    /// The data was made with another tokenizer than the run's.
    #[error(
        "data in {dir} was made with tokenizer {found}, but the run uses tokenizer {expected}"
    )]
    TokenizerHashMismatch {
        /// The prepared directory.
        dir: PathBuf,
        /// The run's tokenizer hash.
        expected: String,
        /// The data's tokenizer hash.
        found: String,
    },
    /// Holding out validation tokens from the training tokens leaves a split empty.
    #[error("cannot hold out {fraction} of {tokens} training tokens for validation: a split would be empty; give val inputs")]
    HoldOutTooSmall {
        /// Training tokens.
        tokens: u64,
        /// The fraction asked for.
        fraction: f64,
    },
    /// The worker pool could not be built.
    #[error("cannot start {threads} worker threads: {message}")]
    ThreadPool {
        /// Threads asked for.
        threads: usize,
        /// The message.
        message: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PrepareError + '_ {
    move |source| PrepareError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Prepares `opts.out` from scratch (see the module docs). Bad inputs are refused before anything
/// is written; on any error nothing is left behind and an existing `out` is untouched.
pub fn prepare(opts: &PrepareOptions) -> Result<PreparedData, PrepareError> {
    let plan = Plan::new(opts)?;
    pipeline::run(opts, plan)
}

/// Opens `opts.out` when its manifest records the same fingerprint (same input contents by
/// SHA-256, same tokenizer, same options) and it verifies; otherwise (re)prepares it.
pub fn ensure_prepared(opts: &PrepareOptions) -> Result<PreparedData, PrepareError> {
    let plan = Plan::new(opts)?;
    match read_manifest(&opts.out) {
        Ok(m) if m.fingerprint == plan.fingerprint => match PreparedData::open(&opts.out) {
            Ok(data) => {
                tracing::info!(out = %opts.out.display(), "prepared data is up to date; reusing it");
                return Ok(data);
            }
            Err(e) => {
                tracing::warn!(out = %opts.out.display(), "prepared data fails verification ({e}); preparing it again")
            }
        },
        Ok(_) => {
            tracing::info!(out = %opts.out.display(), "inputs, tokenizer or options changed; preparing again")
        }
        Err(PrepareError::NotPrepared { .. }) => {}
        Err(e) => {
            tracing::warn!(out = %opts.out.display(), "unreadable manifest ({e}); preparing again")
        }
    }
    pipeline::run(opts, plan)
}
