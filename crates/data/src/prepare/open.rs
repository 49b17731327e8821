//! Opening a prepared directory: [`PreparedData`], verified shard by shard.

use super::manifest::{read_manifest, Manifest, SplitManifest};
use super::{io_err, PrepareError};
use crate::fsutil;
use crate::shard::{self, ShardError, TokenStream};
use crate::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

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
