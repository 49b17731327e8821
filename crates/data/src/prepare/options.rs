//! What to prepare: [`PrepareOptions`] (the `[data]` section of a config) and
//! [`TokenizerSpec`].

use super::PrepareError;
use crate::input::{InputSpec, Utf8Policy};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
fn default_parquet_column() -> String {
    "text".into()
}
fn is_default_parquet_column(column: &String) -> bool {
    *column == default_parquet_column()
}
fn default_shard_tokens() -> u64 {
    1 << 24
}

/// What to prepare; the `[data]` section of an experiment config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareOptions {
    /// Training inputs: text files, directories of them, JSONL files (`.jsonl`/`.ndjson`),
    /// parquet files (`.parquet`), hub dataset files
    /// `{ hub = "owner/name", file = "x.jsonl", revision = "main" }`, or the hub dataset files
    /// matching patterns `{ hub = "owner/name", files = ["data/*.parquet"] }`.
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
    /// Column that holds the text in parquet inputs (a top-level string column). Separate from
    /// `jsonl_field` because one job may mix both formats, whose names need not agree.
    /// Left out when serialised at its default, so that the configs (and the stage and
    /// trajectory hashes built from them) of jobs made before parquet input existed stay the
    /// same, and their finished runs are not refused as "made from different inputs".
    #[serde(
        default = "default_parquet_column",
        skip_serializing_if = "is_default_parquet_column"
    )]
    pub parquet_column: String,
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
            parquet_column: default_parquet_column(),
            tokenizer,
            out,
            threads: 0,
            invalid_utf8: Utf8Policy::default(),
            shard_tokens: default_shard_tokens(),
        }
    }

    pub(super) fn validate(&self) -> Result<(), PrepareError> {
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
        if self.parquet_column.is_empty() {
            return bad("parquet_column", "\"\"".into(), "must name a column");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_from_toml_like_json_and_unknown_fields() {
        let opts: PrepareOptions = serde_json::from_str(
            r#"{"train": ["a"], "tokenizer": {"train_bpe": {"vocab_size": 512}}, "out": "o"}"#,
        )
        .unwrap();
        assert_eq!(opts.tokenizer, TokenizerSpec::TrainBpe { vocab_size: 512 });
        assert_eq!(opts.jsonl_field, "text");
        assert_eq!(opts.parquet_column, "text");
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

    /// A job that does not set the parquet column serialises exactly as before parquet input
    /// existed: experiment stages hash their `[data]` section, so an extra default key would
    /// make every finished run look "made from different inputs".
    #[test]
    fn the_default_parquet_column_is_not_serialised() {
        let mut o = PrepareOptions::new(
            vec![InputSpec::Path("a".into())],
            TokenizerSpec::Gpt2,
            "o".into(),
        );
        let json = serde_json::to_value(&o).unwrap();
        assert!(json.get("parquet_column").is_none(), "{json}");
        assert!(json.get("jsonl_field").is_some(), "{json}");
        o.parquet_column = "content".into();
        let json = serde_json::to_value(&o).unwrap();
        assert_eq!(json["parquet_column"], "content");
        let back: PrepareOptions = serde_json::from_value(json).unwrap();
        assert_eq!(back, o);
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
