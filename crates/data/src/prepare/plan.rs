//! The plan of a preparation: the input files, their fingerprints, the tokenizer and the
//! fingerprint of the whole job, all known before any tokenization. [`super::ensure_prepared`]
//! reuses an existing directory whose manifest records the same fingerprint.

use super::manifest::MANIFEST_VERSION;
use super::{PrepareError, PrepareOptions, TokenizerSpec, PIECE_BYTES};
use crate::fsutil;
use crate::hub::{HubClient, RepoKind};
use crate::input::{self, InputError, InputRecord, InputSpec, SourceFile, Utf8Policy};
use crate::shard;
use crate::tokenizer::{Tokenizer, TokenizerError};
use serde::Serialize;

/// Everything known before any tokenization: the files, their fingerprints, the tokenizer (if
/// it does not need training) and the fingerprint of the whole job.
pub(super) struct Plan {
    pub(super) train_files: Vec<SourceFile>,
    pub(super) val_files: Vec<SourceFile>,
    pub(super) train_records: Vec<InputRecord>,
    pub(super) val_records: Vec<InputRecord>,
    pub(super) tokenizer: Option<Tokenizer>,
    pub(super) fingerprint: String,
}

#[derive(Serialize)]
struct FingerprintKey<'a> {
    manifest_version: u32,
    shard_version: u32,
    train: &'a [InputRecord],
    val: &'a [InputRecord],
    val_fraction: Option<f64>,
    jsonl_field: &'a str,
    /// Only when a parquet file is read: the fingerprints of jobs without one stay those of
    /// earlier versions, so their prepared directories are still reused.
    #[serde(skip_serializing_if = "Option::is_none")]
    parquet_column: Option<&'a str>,
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

/// Whether any input file is parquet (the parquet column then matters).
pub(super) fn has_parquet(train: &[SourceFile], val: &[SourceFile]) -> bool {
    train
        .iter()
        .chain(val)
        .any(|f| f.kind == input::FileKind::Parquet)
}

impl Plan {
    pub(super) fn new(opts: &PrepareOptions) -> Result<Plan, PrepareError> {
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
            parquet_column: has_parquet(&train_files, &val_files).then_some(&opts.parquet_column),
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
