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

use crate::fsutil;
use crate::hub::{HubClient, HubError, RepoKind};
use crate::input::{self, InputError, InputRecord, InputSpec, SourceFile, Utf8Policy};
use crate::progress::Progress;
use crate::shard::{self, Dtype, ShardError, TokenStream};
use crate::tokenizer::{Tokenizer, TokenizerError};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use thiserror::Error;

/// Version of the manifest layout.
pub const MANIFEST_VERSION: u32 = 1;
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

/// Which tokenizer to use. In TOML: `tokenizer = "gpt2"`,
/// `tokenizer = { file = "datasets/gutenberg/tokenizer-4096.json" }`,
/// `tokenizer = { train_bpe = { vocab_size = 4096 } }` or
/// `tokenizer = { hub = { repo = "openai-community/gpt2", revision = "main" } }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TokenizerSpec {
    /// GPT-2's tokenizer, built offline from the files shipped in `datasets/tokenizers/gpt2/`.
    Gpt2,
    /// A `tokenizer.json` file.
    File(PathBuf),
    /// Train a byte-level BPE of this vocabulary size on the training inputs.
    TrainBpe {
        /// Vocabulary size, `<|endoftext|>` included (at least 257).
        vocab_size: usize,
    },
    /// A `tokenizer.json` from a Hugging Face model repo (through the hub cache).
    Hub {
        /// Model repo id, `owner/name`.
        repo: String,
        /// Branch, tag or commit (default `main`).
        #[serde(default = "default_revision")]
        revision: String,
        /// File inside the repo (default `tokenizer.json`).
        #[serde(default = "default_tokenizer_file")]
        file: String,
    },
}

fn default_revision() -> String {
    "main".into()
}
fn default_tokenizer_file() -> String {
    "tokenizer.json".into()
}
fn default_val_fraction() -> f64 {
    0.05
}
fn default_jsonl_field() -> String {
    "text".into()
}
fn default_shard_tokens() -> u64 {
    1 << 24
}

/// What to prepare; the `[data]` section of an experiment config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareOptions {
    /// Training inputs: text files, directories of them, JSONL files (`.jsonl`/`.ndjson`), or
    /// hub dataset files `{ hub = "owner/name", file = "x.jsonl", revision = "main" }`.
    pub train: Vec<InputSpec>,
    /// Validation inputs, same forms. When empty, the last `val_fraction` of the training
    /// tokens is held out instead.
    #[serde(default)]
    pub val: Vec<InputSpec>,
    /// Fraction of the training tokens held out for validation when `val` is empty (0 < f < 1).
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    /// JSON field that holds the text in JSONL inputs.
    #[serde(default = "default_jsonl_field")]
    pub jsonl_field: String,
    /// The tokenizer.
    pub tokenizer: TokenizerSpec,
    /// Output directory (created or replaced atomically).
    pub out: PathBuf,
    /// Worker threads for tokenizing and BPE training; 0 = one per core.
    #[serde(default)]
    pub threads: usize,
    /// What to do with bytes that are not UTF-8: `error` (default) or `replace`.
    #[serde(default)]
    pub invalid_utf8: Utf8Policy,
    /// Tokens per shard file.
    #[serde(default = "default_shard_tokens")]
    pub shard_tokens: u64,
}

impl PrepareOptions {
    /// Options with defaults for everything but the inputs, tokenizer and output.
    pub fn new(train: Vec<InputSpec>, tokenizer: TokenizerSpec, out: PathBuf) -> Self {
        PrepareOptions {
            train,
            val: Vec::new(),
            val_fraction: default_val_fraction(),
            jsonl_field: default_jsonl_field(),
            tokenizer,
            out,
            threads: 0,
            invalid_utf8: Utf8Policy::default(),
            shard_tokens: default_shard_tokens(),
        }
    }

    fn validate(&self) -> Result<(), PrepareError> {
        let bad = |key, value: String, reason: &str| {
            Err(PrepareError::InvalidOption {
                key,
                value,
                reason: reason.to_string(),
            })
        };
        if self.train.is_empty() {
            return bad(
                "train",
                "[]".into(),
                "at least one training input is needed",
            );
        }
        if self.val.is_empty() && !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            return bad(
                "val_fraction",
                self.val_fraction.to_string(),
                "must be strictly between 0 and 1 when no val inputs are given",
            );
        }
        if self.jsonl_field.is_empty() {
            return bad("jsonl_field", "\"\"".into(), "must name a field");
        }
        if self.shard_tokens == 0 {
            return bad("shard_tokens", "0".into(), "must be at least 1");
        }
        if self.out.as_os_str().is_empty() {
            return bad("out", "\"\"".into(), "must name a directory");
        }
        Ok(())
    }
}

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
    /// Bytes of text read.
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
    /// Invalid UTF-8 policy used.
    pub invalid_utf8: Utf8Policy,
    /// Tokens per shard.
    pub shard_tokens: u64,
    /// The training split.
    pub train: SplitManifest,
    /// The validation split.
    pub val: SplitManifest,
}

/// A verified prepared directory, ready for batching.
#[derive(Debug)]
pub struct PreparedData {
    /// The directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// Training tokens.
    pub train: TokenStream,
    /// Validation tokens.
    pub val: TokenStream,
    /// `<dir>/tokenizer.json`.
    pub tokenizer_path: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PrepareError + '_ {
    move |source| PrepareError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_manifest(dir: &Path) -> Result<Manifest, PrepareError> {
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

impl PreparedData {
    /// Opens a prepared directory: reads the manifest, checks `tokenizer.json` against its hash,
    /// and maps and verifies every shard (checksum, tokenizer hash, vocabulary, token count).
    pub fn open(dir: &Path) -> Result<PreparedData, PrepareError> {
        let manifest = read_manifest(dir)?;
        let manifest_path = dir.join("manifest.json");
        let tokenizer_path = dir.join("tokenizer.json");
        let (found, _) = fsutil::sha256_file(&tokenizer_path).map_err(io_err(&tokenizer_path))?;
        if found != manifest.tokenizer_hash {
            return Err(PrepareError::TokenizerFileMismatch {
                path: tokenizer_path,
                expected: manifest.tokenizer_hash.clone(),
                found,
            });
        }
        let open_split = |split: &SplitManifest| -> Result<TokenStream, PrepareError> {
            let mut shards = Vec::with_capacity(split.shards.len());
            for entry in &split.shards {
                let rel = Path::new(&entry.file);
                if rel.is_absolute()
                    || rel
                        .components()
                        .any(|c| !matches!(c, std::path::Component::Normal(_)))
                {
                    return Err(PrepareError::Manifest {
                        path: manifest_path.clone(),
                        message: format!("shard path {:?} is not inside the directory", entry.file),
                    });
                }
                let path = dir.join(rel);
                let shard = shard::Shard::open_expecting(
                    &path,
                    &manifest.tokenizer_hash,
                    manifest.vocab_size,
                )?;
                if shard.header().checksum_hex() != entry.checksum {
                    return Err(ShardError::ChecksumMismatch {
                        path,
                        expected: entry.checksum.clone(),
                        found: shard.header().checksum_hex(),
                    }
                    .into());
                }
                if shard.len() != entry.tokens {
                    return Err(PrepareError::ShardTokens {
                        path,
                        expected: entry.tokens,
                        found: shard.len(),
                    });
                }
                shards.push(shard);
            }
            let stream = TokenStream::from_shards(shards);
            if stream.len() != split.tokens {
                return Err(PrepareError::Manifest {
                    path: manifest_path.clone(),
                    message: format!(
                        "split records {} tokens, its shards hold {}",
                        split.tokens,
                        stream.len()
                    ),
                });
            }
            Ok(stream)
        };
        let train = open_split(&manifest.train)?;
        let val = open_split(&manifest.val)?;
        Ok(PreparedData {
            dir: dir.to_path_buf(),
            manifest,
            train,
            val,
            tokenizer_path,
        })
    }

    /// Loads the tokenizer the data was made with.
    pub fn tokenizer(&self) -> Result<Tokenizer, PrepareError> {
        let tok = Tokenizer::from_file(&self.tokenizer_path)?;
        if tok.hash() != self.manifest.tokenizer_hash {
            return Err(PrepareError::TokenizerFileMismatch {
                path: self.tokenizer_path.clone(),
                expected: self.manifest.tokenizer_hash.clone(),
                found: tok.hash().to_string(),
            });
        }
        Ok(tok)
    }

    /// Refuses data whose vocabulary is larger than a model's embedding table.
    pub fn check_model_vocab(&self, model_vocab: usize) -> Result<(), PrepareError> {
        if self.manifest.vocab_size as usize > model_vocab {
            return Err(PrepareError::VocabTooLarge {
                dir: self.dir.clone(),
                data_vocab: self.manifest.vocab_size,
                model_vocab,
            });
        }
        Ok(())
    }

    /// Refuses data made with another tokenizer than the run's (hex SHA-256 of its
    /// `tokenizer.json`, e.g. recorded in a checkpoint).
    pub fn check_tokenizer_hash(&self, expected: &str) -> Result<(), PrepareError> {
        if self.manifest.tokenizer_hash != expected {
            return Err(PrepareError::TokenizerHashMismatch {
                dir: self.dir.clone(),
                expected: expected.to_string(),
                found: self.manifest.tokenizer_hash.clone(),
            });
        }
        Ok(())
    }
}

/// Everything known before any tokenization: the files, their fingerprints, the tokenizer (if
/// it does not need training) and the fingerprint of the whole job.
struct Plan {
    train_files: Vec<SourceFile>,
    val_files: Vec<SourceFile>,
    train_records: Vec<InputRecord>,
    val_records: Vec<InputRecord>,
    tokenizer: Option<Tokenizer>,
    fingerprint: String,
}

#[derive(Serialize)]
struct FingerprintKey<'a> {
    manifest_version: u32,
    shard_version: u32,
    train: &'a [InputRecord],
    val: &'a [InputRecord],
    val_fraction: Option<f64>,
    jsonl_field: &'a str,
    invalid_utf8: Utf8Policy,
    shard_tokens: u64,
    piece_bytes: usize,
    tokenizer: &'a TokenizerSpec,
    tokenizer_hash: Option<&'a str>,
}

fn load_tokenizer(spec: &TokenizerSpec) -> Result<Option<Tokenizer>, PrepareError> {
    Ok(match spec {
        TokenizerSpec::Gpt2 => Some(Tokenizer::gpt2()?),
        TokenizerSpec::File(path) => Some(Tokenizer::from_file(path)?),
        TokenizerSpec::Hub {
            repo,
            revision,
            file,
        } => {
            let client = HubClient::from_env()?;
            let path = client.fetch(repo, RepoKind::Model, revision, file)?;
            Some(Tokenizer::from_file(&path)?)
        }
        TokenizerSpec::TrainBpe { vocab_size } => {
            if !(crate::tokenizer::MIN_TRAINED_VOCAB..=crate::tokenizer::MAX_TRAINED_VOCAB)
                .contains(vocab_size)
            {
                return Err(TokenizerError::BadVocabSize {
                    vocab_size: *vocab_size,
                }
                .into());
            }
            None
        }
    })
}

impl Plan {
    fn new(opts: &PrepareOptions) -> Result<Plan, PrepareError> {
        opts.validate()?;
        let train_files = input::resolve(&opts.train, None)?;
        let val_files = input::resolve(&opts.val, None)?;
        let describe = |specs: &[InputSpec]| {
            specs
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if train_files.is_empty() {
            return Err(InputError::EmptyCorpus {
                split: "train".into(),
                inputs: describe(&opts.train),
            }
            .into());
        }
        if !opts.val.is_empty() && val_files.is_empty() {
            return Err(InputError::EmptyCorpus {
                split: "val".into(),
                inputs: describe(&opts.val),
            }
            .into());
        }
        let train_records = input::fingerprint(&train_files)?;
        let val_records = input::fingerprint(&val_files)?;
        let tokenizer = load_tokenizer(&opts.tokenizer)?;
        let key = FingerprintKey {
            manifest_version: MANIFEST_VERSION,
            shard_version: shard::FORMAT_VERSION,
            train: &train_records,
            val: &val_records,
            val_fraction: opts.val.is_empty().then_some(opts.val_fraction),
            jsonl_field: &opts.jsonl_field,
            invalid_utf8: opts.invalid_utf8,
            shard_tokens: opts.shard_tokens,
            piece_bytes: PIECE_BYTES,
            tokenizer: &opts.tokenizer,
            tokenizer_hash: tokenizer.as_ref().map(|t| t.hash()),
        };
        let key_json = serde_json::to_vec(&key).map_err(|e| PrepareError::InvalidOption {
            key: "data",
            value: "(options)".into(),
            reason: e.to_string(),
        })?;
        Ok(Plan {
            train_files,
            val_files,
            train_records,
            val_records,
            tokenizer,
            fingerprint: fsutil::sha256_hex(&key_json),
        })
    }
}

/// Cuts a document into pieces of about `target` bytes, each cut just before a `\n` that is
/// followed by a non-whitespace character (see the module docs for why this is safe).
pub fn split_pieces(doc: &str, target: usize) -> Vec<&str> {
    let bytes = doc.as_bytes();
    let mut pieces = Vec::new();
    let mut start = 0usize;
    let target = target.max(1);
    while bytes.len() - start > target {
        let mut cut = None;
        let mut p = start + target;
        while p < bytes.len() {
            match bytes[p..].iter().position(|&b| b == b'\n') {
                None => break,
                Some(off) => {
                    let q = p + off;
                    if doc[q + 1..]
                        .chars()
                        .next()
                        .is_some_and(|c| !c.is_whitespace())
                    {
                        cut = Some(q);
                        break;
                    }
                    p = q + 1;
                }
            }
        }
        match cut {
            Some(q) => {
                pieces.push(&doc[start..q]);
                start = q;
            }
            None => break,
        }
    }
    pieces.push(&doc[start..]);
    pieces
}

/// Documents of one split, in order, with what was read.
struct SplitText {
    docs: Vec<String>,
    bytes: u64,
    replaced: u64,
}

fn read_split(files: &[SourceFile], opts: &PrepareOptions) -> Result<SplitText, PrepareError> {
    let mut out = SplitText {
        docs: Vec::new(),
        bytes: 0,
        replaced: 0,
    };
    for f in files {
        let docs = input::read_file(f, &opts.jsonl_field, opts.invalid_utf8)?;
        out.bytes += docs.bytes;
        out.replaced += docs.replaced;
        out.docs.extend(docs.docs);
    }
    Ok(out)
}

fn tokenize_docs(
    docs: &[String],
    tokenizer: &Tokenizer,
    progress: &Progress,
) -> Result<Vec<u32>, PrepareError> {
    let pieces: Vec<(bool, &str)> = docs
        .iter()
        .flat_map(|d| {
            split_pieces(d, PIECE_BYTES)
                .into_iter()
                .enumerate()
                .map(|(i, p)| (i == 0, p))
        })
        .collect();
    let encoded: Vec<Vec<u32>> = pieces
        .par_iter()
        .map(|(_, text)| {
            let ids = tokenizer.encode(text)?;
            progress.inc(text.len() as u64);
            Ok(ids)
        })
        .collect::<Result<_, TokenizerError>>()?;
    let total: usize = encoded.iter().map(|e| e.len()).sum::<usize>() + docs.len();
    let mut tokens = Vec::with_capacity(total);
    for ((first, _), ids) in pieces.iter().zip(encoded) {
        if *first {
            if let Some(eot) = tokenizer.eot_id() {
                tokens.push(eot);
            }
        }
        tokens.extend_from_slice(&ids);
    }
    Ok(tokens)
}

/// Removes a directory on drop unless [`PartialDir::keep`] was called.
struct PartialDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for PartialDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn check_out(out: &Path) -> Result<(), PrepareError> {
    if out.exists() {
        let empty_dir = out.is_dir()
            && std::fs::read_dir(out)
                .map_err(io_err(out))?
                .next()
                .is_none();
        if !empty_dir && !out.join("manifest.json").is_file() {
            return Err(PrepareError::OutNotPrepared {
                path: out.to_path_buf(),
            });
        }
    }
    Ok(())
}

fn write_shards(
    dir: &Path,
    split: &str,
    tokens: &[u32],
    shard_tokens: u64,
    tokenizer: &Tokenizer,
) -> Result<Vec<ShardEntry>, PrepareError> {
    let split_dir = dir.join(split);
    std::fs::create_dir_all(&split_dir).map_err(io_err(&split_dir))?;
    let hash = fsutil::parse_hex32(tokenizer.hash()).expect("tokenizer hashes are 64 hex digits");
    let mut entries = Vec::new();
    for (i, chunk) in tokens
        .chunks(shard_tokens.min(usize::MAX as u64) as usize)
        .enumerate()
    {
        let file = format!("{split}/shard-{i:05}.bin");
        let info = shard::write_shard(&dir.join(&file), chunk, tokenizer.vocab_size(), &hash)?;
        entries.push(ShardEntry {
            file,
            tokens: info.tokens,
            checksum: info.checksum,
        });
    }
    fsutil::sync_parent(&split_dir.join("x"));
    Ok(entries)
}

fn run(opts: &PrepareOptions, plan: Plan) -> Result<PreparedData, PrepareError> {
    check_out(&opts.out)?;
    let started = Instant::now();
    let mut builder = rayon::ThreadPoolBuilder::new();
    if opts.threads > 0 {
        builder = builder.num_threads(opts.threads);
    }
    let pool = builder.build().map_err(|e| PrepareError::ThreadPool {
        threads: opts.threads,
        message: e.to_string(),
    })?;
    tracing::info!(
        train_files = plan.train_files.len(),
        val_files = plan.val_files.len(),
        threads = pool.current_num_threads(),
        out = %opts.out.display(),
        "preparing data"
    );

    let train_text = read_split(&plan.train_files, opts)?;
    let val_text = read_split(&plan.val_files, opts)?;
    if train_text.docs.is_empty() {
        return Err(InputError::EmptyCorpus {
            split: "train".into(),
            inputs: plan
                .train_records
                .iter()
                .map(|r| r.name.clone())
                .collect::<Vec<_>>()
                .join(", "),
        }
        .into());
    }
    if !opts.val.is_empty() && val_text.docs.is_empty() {
        return Err(InputError::EmptyCorpus {
            split: "val".into(),
            inputs: plan
                .val_records
                .iter()
                .map(|r| r.name.clone())
                .collect::<Vec<_>>()
                .join(", "),
        }
        .into());
    }

    let tokenizer = match plan.tokenizer {
        Some(t) => t,
        None => {
            let TokenizerSpec::TrainBpe { vocab_size } = opts.tokenizer else {
                unreachable!("only train_bpe leaves the tokenizer to be made here")
            };
            tracing::info!(
                vocab_size,
                "training a byte-level BPE on the training inputs"
            );
            let t0 = Instant::now();
            let pieces: Vec<&str> = train_text
                .docs
                .iter()
                .flat_map(|d| split_pieces(d, PIECE_BYTES))
                .collect();
            let tok = pool.install(|| Tokenizer::train_bpe(pieces.into_iter(), vocab_size))?;
            tracing::info!(
                vocab_size = tok.vocab_size(),
                secs = format!("{:.1}", t0.elapsed().as_secs_f64()),
                "BPE trained"
            );
            tok
        }
    };

    let total_bytes = train_text.bytes + val_text.bytes;
    let progress = Progress::new("tokenizing", total_bytes);
    let t0 = Instant::now();
    let mut train_tokens =
        pool.install(|| tokenize_docs(&train_text.docs, &tokenizer, &progress))?;
    let val_tokens = if opts.val.is_empty() {
        let n = train_tokens.len() as u64;
        let held = ((n as f64) * opts.val_fraction).round() as u64;
        if held == 0 || held >= n {
            return Err(PrepareError::HoldOutTooSmall {
                tokens: n,
                fraction: opts.val_fraction,
            });
        }
        train_tokens.split_off((n - held) as usize)
    } else {
        pool.install(|| tokenize_docs(&val_text.docs, &tokenizer, &progress))?
    };
    progress.finish();
    let secs = t0.elapsed().as_secs_f64().max(1e-9);
    tracing::info!(
        train_tokens = train_tokens.len(),
        val_tokens = val_tokens.len(),
        "tokenized {:.1} MB in {:.2} s ({:.2} MB/s)",
        total_bytes as f64 / 1e6,
        secs,
        total_bytes as f64 / 1e6 / secs
    );

    // Everything is written into a temporary sibling, then renamed into place.
    if let Some(parent) = opts.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let mut partial = PartialDir {
        path: fsutil::temp_sibling(&opts.out, "partial"),
        keep: false,
    };
    std::fs::create_dir(&partial.path).map_err(io_err(&partial.path))?;
    let tmp = partial.path.clone();
    tokenizer.save(&tmp.join("tokenizer.json"))?;
    let train_shards = write_shards(&tmp, "train", &train_tokens, opts.shard_tokens, &tokenizer)?;
    let val_shards = write_shards(&tmp, "val", &val_tokens, opts.shard_tokens, &tokenizer)?;
    let manifest = Manifest {
        format_version: MANIFEST_VERSION,
        created_by: concat!(env!("CARGO_PKG_NAME"), " ", env!("CARGO_PKG_VERSION")).to_string(),
        fingerprint: plan.fingerprint,
        tokenizer_hash: tokenizer.hash().to_string(),
        tokenizer: opts.tokenizer.clone(),
        vocab_size: tokenizer.vocab_size(),
        dtype: Dtype::for_vocab(tokenizer.vocab_size()),
        eot_id: tokenizer.eot_id(),
        jsonl_field: opts.jsonl_field.clone(),
        invalid_utf8: opts.invalid_utf8,
        shard_tokens: opts.shard_tokens,
        train: SplitManifest {
            tokens: train_tokens.len() as u64,
            documents: train_text.docs.len() as u64,
            bytes: train_text.bytes,
            replaced_invalid_utf8: train_text.replaced,
            held_out_fraction: None,
            inputs: plan.train_records,
            shards: train_shards,
        },
        val: SplitManifest {
            tokens: val_tokens.len() as u64,
            documents: val_text.docs.len() as u64,
            bytes: val_text.bytes,
            replaced_invalid_utf8: val_text.replaced,
            held_out_fraction: opts.val.is_empty().then_some(opts.val_fraction),
            inputs: plan.val_records,
            shards: val_shards,
        },
    };
    let mut json = serde_json::to_vec_pretty(&manifest).map_err(|e| PrepareError::Manifest {
        path: tmp.join("manifest.json"),
        message: e.to_string(),
    })?;
    json.push(b'\n');
    let manifest_path = tmp.join("manifest.json");
    fsutil::atomic_write(&manifest_path, &json).map_err(io_err(&manifest_path))?;
    fsutil::sync_parent(&manifest_path);

    // Into place. A rename onto a missing (or empty) `out` is atomic. When `out` holds a sound
    // prepared directory with the same fingerprint (another process prepared the same data
    // meanwhile), that one is kept and ours dropped; otherwise the old complete directory is
    // moved aside, ours renamed in, and the old one removed.
    let out = &opts.out;
    if std::fs::rename(&tmp, out).is_ok() {
        partial.keep = true;
    } else if read_manifest(out).is_ok_and(|m| m.fingerprint == manifest.fingerprint)
        && PreparedData::open(out).is_ok()
    {
        tracing::info!(out = %out.display(), "identical data was prepared meanwhile; keeping it");
        drop(partial);
    } else if out.exists() {
        let old = fsutil::temp_sibling(out, "old");
        std::fs::rename(out, &old).map_err(io_err(out))?;
        if let Err(e) = std::fs::rename(&tmp, out) {
            let _ = std::fs::rename(&old, out);
            return Err(io_err(out)(e));
        }
        partial.keep = true;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp, out).map_err(io_err(out))?;
        partial.keep = true;
    }
    fsutil::sync_parent(out);
    tracing::info!(
        out = %out.display(),
        secs = format!("{:.1}", started.elapsed().as_secs_f64()),
        vocab_size = manifest.vocab_size,
        "prepared data written"
    );
    PreparedData::open(out)
}

/// Prepares `opts.out` from scratch (see the module docs). Bad inputs are refused before anything
/// is written; on any error nothing is left behind and an existing `out` is untouched.
pub fn prepare(opts: &PrepareOptions) -> Result<PreparedData, PrepareError> {
    let plan = Plan::new(opts)?;
    run(opts, plan)
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
    run(opts, plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_document_and_cut_at_line_starts() {
        let doc = "Line one here.\n\nSecond para\n  indented\nThird\n".repeat(200);
        let pieces = split_pieces(&doc, 100);
        assert!(pieces.len() > 10);
        assert_eq!(pieces.concat(), doc);
        for p in &pieces[1..] {
            assert!(p.starts_with('\n'));
            assert!(!p[1..].starts_with(char::is_whitespace));
        }
        assert_eq!(split_pieces("short", 100), vec!["short"]);
        assert_eq!(split_pieces("", 100), vec![""]);
        // No acceptable cut: one piece.
        let blank = "a\n \n \n \n".repeat(50);
        assert_eq!(split_pieces(&blank, 10).concat(), blank);
    }

    #[test]
    fn gpt2_tokens_of_pieces_equal_tokens_of_whole() {
        let tok = Tokenizer::gpt2().unwrap();
        let doc = "It was the best of times,\nit was the worst of times.\n\n\n  Chapter 2\n\nAnd so  on \n\u{e9}t\u{e9} 123\n"
            .repeat(40);
        let whole = tok.encode(&doc).unwrap();
        for target in [7usize, 50, 300] {
            let mut joined = Vec::new();
            for p in split_pieces(&doc, target) {
                joined.extend(tok.encode(p).unwrap());
            }
            assert_eq!(joined, whole, "target {target}");
        }
    }

    #[test]
    fn options_from_toml_like_json_and_unknown_fields() {
        let opts: PrepareOptions = serde_json::from_str(
            r#"{"train": ["a"], "tokenizer": {"train_bpe": {"vocab_size": 512}}, "out": "o"}"#,
        )
        .unwrap();
        assert_eq!(opts.tokenizer, TokenizerSpec::TrainBpe { vocab_size: 512 });
        assert_eq!(opts.jsonl_field, "text");
        assert_eq!(opts.shard_tokens, 1 << 24);
        let gpt2: PrepareOptions =
            serde_json::from_str(r#"{"train": ["a"], "tokenizer": "gpt2", "out": "o"}"#).unwrap();
        assert_eq!(gpt2.tokenizer, TokenizerSpec::Gpt2);
        let err = serde_json::from_str::<PrepareOptions>(
            r#"{"train": ["a"], "tokenizer": "gpt2", "out": "o", "oops": 1}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("oops"), "{err}");
    }

    #[test]
    fn invalid_options_are_named() {
        let mut o = PrepareOptions::new(vec![], TokenizerSpec::Gpt2, "o".into());
        assert!(matches!(
            o.validate(),
            Err(PrepareError::InvalidOption { key: "train", .. })
        ));
        o.train = vec![InputSpec::Path("x".into())];
        o.val_fraction = 1.5;
        let err = o.validate().unwrap_err();
        assert!(err.to_string().contains("val_fraction = 1.5"), "{err}");
        o.val_fraction = 0.1;
        o.shard_tokens = 0;
        assert!(matches!(
            o.validate(),
            Err(PrepareError::InvalidOption {
                key: "shard_tokens",
                ..
            })
        ));
    }
}
