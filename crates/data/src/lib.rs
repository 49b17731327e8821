//! `hyperclone-data`: tokenizers, binary token shards, deterministic batches.
//!
//! This crate hands out plain token ids (`u32`) and does not depend on burn.
//!
//! - [`tokenizer`]: train a byte-level BPE, load any `tokenizer.json`, GPT-2's tokenizer offline
//!   ([`Tokenizer::gpt2`]), each with its hash (SHA-256 of its `tokenizer.json` bytes).
//! - [`hub`]: Hugging Face hub files by repo id + revision through the standard cache, with
//!   `HF_HUB_OFFLINE` honoured; a repo's files matching glob patterns, listed online or from the
//!   cache.
//! - [`input`]: text files, directories, JSONL with a named text field, parquet with a named
//!   string column (row group by row group), hub dataset files by name or glob. **Invalid UTF-8 is an
//!   error by default** (naming file, line and byte offset); `invalid_utf8 = "replace"`
//!   substitutes U+FFFD, counts the replacements, logs them and records them in the manifest.
//! - [`shard`]: the shard format (header with magic, version, dtype, vocab size, token count,
//!   tokenizer hash, checksum), atomic writes, verified memory-mapped reading, [`TokenStream`].
//! - [`prepare`](mod@prepare): inputs → shards + `manifest.json` in a directory written atomically;
//!   [`PreparedData::open`] verifies it; [`ensure_prepared`] reuses it when nothing changed.
//! - [`batch`]: [`BatchSampler`] (random batches as a pure function of `(seed, step)`, and a
//!   sequential epoch mode) and [`validation_batches`].
//!
//! ```no_run
//! use hyperclone_data::{BatchSampler, PreparedData, validation_batches};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let data = PreparedData::open(std::path::Path::new("runs/data/gutenberg-4096"))?;
//! data.check_model_vocab(4096)?;
//! let sampler = BatchSampler::new(8, 64, 1234)?;
//! let batch = sampler.random_batch(&data.train, 0)?;
//! let (inputs, targets) = (batch.inputs(), batch.targets()); // [8, 64] each, row-major
//! let val = validation_batches(&data.val, 8, 64, 20)?;
//! # let _ = (inputs, targets, val); Ok(()) }
//! ```

pub mod batch;
mod fsutil;
pub mod hub;
pub mod input;
pub mod prepare;
pub mod progress;
pub mod shard;
pub mod tokenizer;

pub use batch::{validation_batches, Batch, BatchError, BatchSampler};
pub use hub::{HubClient, HubError, RepoKind};
pub use input::{InputError, InputSpec, Utf8Policy};
pub use prepare::{
    ensure_prepared, prepare, Manifest, PrepareError, PrepareOptions, PreparedData, TokenizerSpec,
};
pub use shard::{ShardError, TokenStream};
pub use tokenizer::{Tokenizer, TokenizerError, EOT_TOKEN};
