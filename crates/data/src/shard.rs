//! Binary token shards and memory-mapped token streams.
//!
//! A shard is a 96-byte header followed by the token ids, little-endian, as u16 when the
//! vocabulary has at most 65536 ids and u32 otherwise:
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `HCTOKENS` |
//! | 8 | 4 | format version (1) |
//! | 12 | 4 | bytes per token (2 or 4) |
//! | 16 | 4 | vocabulary size |
//! | 20 | 4 | reserved, 0 |
//! | 24 | 8 | token count |
//! | 32 | 32 | SHA-256 of the tokenizer's `tokenizer.json` |
//! | 64 | 32 | checksum: SHA-256 of bytes 0..64 followed by the token bytes |
//!
//! The checksum covers the header too, so a flipped bit anywhere is caught. Shards are written
//! atomically and verified (length, magic, version, checksum) when opened.

use crate::fsutil;
use memmap2::Mmap;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// First 8 bytes of every shard.
pub const MAGIC: [u8; 8] = *b"HCTOKENS";
/// The shard format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Length of the header in bytes; the tokens start here.
pub const HEADER_LEN: usize = 96;

/// Errors of this module.
#[derive(Debug, Error)]
pub enum ShardError {
    /// Reading or writing the shard failed.
    #[error("shard {path}: {source}")]
    Io {
        /// The shard file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is shorter than a header.
    #[error("shard {path} is truncated: {len} bytes, shorter than the {HEADER_LEN}-byte header")]
    TooShort {
        /// The shard file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// The file does not start with the shard magic.
    #[error("{path} is not a token shard (magic {found:?}, expected {expected:?})")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first 8 bytes found.
        found: String,
        /// The magic expected.
        expected: String,
    },
    /// The format version is not one this crate reads.
    #[error("shard {path} has format version {found}; this build reads version {FORMAT_VERSION}")]
    UnsupportedVersion {
        /// The shard file.
        path: PathBuf,
        /// Version found.
        found: u32,
    },
    /// The bytes-per-token field is neither 2 nor 4.
    #[error("shard {path} has {found} bytes per token; expected 2 (u16) or 4 (u32)")]
    BadDtype {
        /// The shard file.
        path: PathBuf,
        /// Value found.
        found: u32,
    },
    /// The file length does not match the token count in the header (truncated or padded).
    #[error("shard {path} is truncated or padded: {found} bytes on disk, the header's {tokens} tokens need {expected}")]
    LengthMismatch {
        /// The shard file.
        path: PathBuf,
        /// Token count in the header.
        tokens: u64,
        /// Expected file length.
        expected: u64,
        /// Actual file length.
        found: u64,
    },
    /// The checksum does not match the contents (a flipped bit, a partial write).
    #[error("shard {path} is corrupt: checksum {found} does not match the recorded {expected}")]
    ChecksumMismatch {
        /// The shard file.
        path: PathBuf,
        /// Checksum recorded in the header (or the manifest).
        expected: String,
        /// Checksum computed from the bytes.
        found: String,
    },
    /// The shard was made with another tokenizer.
    #[error(
        "shard {path} was made with tokenizer {found}, not {expected} (the one this data/run uses)"
    )]
    TokenizerMismatch {
        /// The shard file.
        path: PathBuf,
        /// Tokenizer hash expected.
        expected: String,
        /// Tokenizer hash in the shard.
        found: String,
    },
    /// The shard's vocabulary size differs from the expected one.
    #[error("shard {path} has vocabulary size {found}, expected {expected}")]
    VocabMismatch {
        /// The shard file.
        path: PathBuf,
        /// Vocabulary size expected.
        expected: u32,
        /// Vocabulary size in the shard.
        found: u32,
    },
    /// A token to write is not below the vocabulary size.
    #[error("cannot write shard {path}: token {token} at position {index} is not below the vocabulary size {vocab_size}")]
    TokenOutOfVocab {
        /// The shard being written.
        path: PathBuf,
        /// Position of the token.
        index: usize,
        /// The token id.
        token: u32,
        /// The vocabulary size.
        vocab_size: u32,
    },
    /// A vocabulary size of 0 was given.
    #[error("cannot write shard {path}: vocabulary size 0")]
    ZeroVocab {
        /// The shard being written.
        path: PathBuf,
    },
    /// A window reaches past the end of the stream.
    #[error("window [{start}, {start}+{len}) is outside the token stream of {total} tokens")]
    OutOfRange {
        /// Start of the window.
        start: u64,
        /// Its length.
        len: u64,
        /// Tokens in the stream.
        total: u64,
    },
}

/// How token ids are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// Two bytes per token (vocabularies of at most 65536 ids).
    U16,
    /// Four bytes per token.
    U32,
}

impl Dtype {
    /// The narrowest type that holds every id below `vocab_size`.
    pub fn for_vocab(vocab_size: u32) -> Dtype {
        if vocab_size <= 1 << 16 {
            Dtype::U16
        } else {
            Dtype::U32
        }
    }

    /// Bytes per token.
    pub fn bytes(self) -> usize {
        match self {
            Dtype::U16 => 2,
            Dtype::U32 => 4,
        }
    }
}

/// The decoded header of a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardHeader {
    /// Storage type of the ids.
    pub dtype: Dtype,
    /// Vocabulary size of the tokenizer that made it.
    pub vocab_size: u32,
    /// Number of tokens.
    pub token_count: u64,
    /// SHA-256 of the tokenizer's `tokenizer.json`.
    pub tokenizer_hash: [u8; 32],
    /// SHA-256 of header bytes 0..64 and the token bytes.
    pub checksum: [u8; 32],
}

impl ShardHeader {
    fn prefix_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(self.dtype.bytes() as u32).to_le_bytes());
        b[16..20].copy_from_slice(&self.vocab_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.token_count.to_le_bytes());
        b[32..64].copy_from_slice(&self.tokenizer_hash);
        b
    }

    /// The tokenizer hash as lower-case hex.
    pub fn tokenizer_hash_hex(&self) -> String {
        fsutil::hex(&self.tokenizer_hash)
    }

    /// The checksum as lower-case hex.
    pub fn checksum_hex(&self) -> String {
        fsutil::hex(&self.checksum)
    }
}

/// What was written: enough for a manifest entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    /// The shard file.
    pub path: PathBuf,
    /// Tokens in it.
    pub tokens: u64,
    /// Its checksum (hex).
    pub checksum: String,
    /// File length in bytes.
    pub bytes: u64,
}

/// Writes `tokens` as a shard at `path`, atomically (temporary file + fsync + rename).
/// `tokenizer_hash` is the SHA-256 of the tokenizer's `tokenizer.json`.
pub fn write_shard(
    path: &Path,
    tokens: &[u32],
    vocab_size: u32,
    tokenizer_hash: &[u8; 32],
) -> Result<ShardInfo, ShardError> {
    if vocab_size == 0 {
        return Err(ShardError::ZeroVocab {
            path: path.to_path_buf(),
        });
    }
    if let Some((index, &token)) = tokens.iter().enumerate().find(|(_, &t)| t >= vocab_size) {
        return Err(ShardError::TokenOutOfVocab {
            path: path.to_path_buf(),
            index,
            token,
            vocab_size,
        });
    }
    let dtype = Dtype::for_vocab(vocab_size);
    let mut header = ShardHeader {
        dtype,
        vocab_size,
        token_count: tokens.len() as u64,
        tokenizer_hash: *tokenizer_hash,
        checksum: [0; 32],
    };
    let prefix = header.prefix_bytes();
    let mut checksum = [0u8; 32];
    fsutil::atomic_write_with(path, |file| {
        let mut hasher = Sha256::new();
        hasher.update(prefix);
        let mut w = BufWriter::with_capacity(1 << 20, &mut *file);
        w.write_all(&prefix)?;
        w.write_all(&[0u8; 32])?;
        let mut buf = Vec::with_capacity(1 << 16);
        for chunk in tokens.chunks(1 << 14) {
            buf.clear();
            match dtype {
                Dtype::U16 => chunk
                    .iter()
                    .for_each(|&t| buf.extend_from_slice(&(t as u16).to_le_bytes())),
                Dtype::U32 => chunk
                    .iter()
                    .for_each(|&t| buf.extend_from_slice(&t.to_le_bytes())),
            }
            hasher.update(&buf);
            w.write_all(&buf)?;
        }
        w.flush()?;
        drop(w);
        checksum.copy_from_slice(&hasher.finalize());
        file.seek(SeekFrom::Start(64))?;
        file.write_all(&checksum)?;
        Ok(())
    })
    .map_err(|source| ShardError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    header.checksum = checksum;
    Ok(ShardInfo {
        path: path.to_path_buf(),
        tokens: header.token_count,
        checksum: header.checksum_hex(),
        bytes: (HEADER_LEN + tokens.len() * dtype.bytes()) as u64,
    })
}

/// A verified, memory-mapped shard.
pub struct Shard {
    path: PathBuf,
    header: ShardHeader,
    mmap: Mmap,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("path", &self.path)
            .field("header", &self.header)
            .finish()
    }
}

impl Shard {
    /// Maps a shard and verifies its header, length and checksum.
    ///
    /// The file must not be modified while it is mapped (shards are only ever replaced by
    /// rename, which leaves the mapped file intact).
    pub fn open(path: &Path) -> Result<Shard, ShardError> {
        let io = |source| ShardError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < HEADER_LEN as u64 {
            return Err(ShardError::TooShort {
                path: path.to_path_buf(),
                len,
            });
        }
        // SAFETY: the map is read-only and shards are never modified in place (see above).
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let h = &mmap[..HEADER_LEN];
        if h[0..8] != MAGIC {
            return Err(ShardError::BadMagic {
                path: path.to_path_buf(),
                found: String::from_utf8_lossy(&h[0..8]).into_owned(),
                expected: String::from_utf8_lossy(&MAGIC).into_owned(),
            });
        }
        let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().expect("4 bytes"));
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(ShardError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
            });
        }
        let dtype = match u32_at(12) {
            2 => Dtype::U16,
            4 => Dtype::U32,
            found => {
                return Err(ShardError::BadDtype {
                    path: path.to_path_buf(),
                    found,
                })
            }
        };
        let token_count = u64::from_le_bytes(h[24..32].try_into().expect("8 bytes"));
        let expected = token_count
            .checked_mul(dtype.bytes() as u64)
            .and_then(|b| b.checked_add(HEADER_LEN as u64));
        if expected != Some(len) {
            return Err(ShardError::LengthMismatch {
                path: path.to_path_buf(),
                tokens: token_count,
                expected: expected.unwrap_or(u64::MAX),
                found: len,
            });
        }
        let mut tokenizer_hash = [0u8; 32];
        tokenizer_hash.copy_from_slice(&h[32..64]);
        let mut checksum = [0u8; 32];
        checksum.copy_from_slice(&h[64..96]);
        let mut hasher = Sha256::new();
        hasher.update(&mmap[..64]);
        hasher.update(&mmap[HEADER_LEN..]);
        let computed: [u8; 32] = hasher.finalize().into();
        if computed != checksum {
            return Err(ShardError::ChecksumMismatch {
                path: path.to_path_buf(),
                expected: fsutil::hex(&checksum),
                found: fsutil::hex(&computed),
            });
        }
        let header = ShardHeader {
            dtype,
            vocab_size: u32_at(16),
            token_count,
            tokenizer_hash,
            checksum,
        };
        Ok(Shard {
            path: path.to_path_buf(),
            header,
            mmap,
        })
    }

    /// Opens a shard and checks that it was made by the tokenizer with hash `tokenizer_hash`
    /// (hex) and vocabulary size `vocab_size`.
    pub fn open_expecting(
        path: &Path,
        tokenizer_hash: &str,
        vocab_size: u32,
    ) -> Result<Shard, ShardError> {
        let shard = Shard::open(path)?;
        let found = shard.header.tokenizer_hash_hex();
        if found != tokenizer_hash {
            return Err(ShardError::TokenizerMismatch {
                path: path.to_path_buf(),
                expected: tokenizer_hash.to_string(),
                found,
            });
        }
        if shard.header.vocab_size != vocab_size {
            return Err(ShardError::VocabMismatch {
                path: path.to_path_buf(),
                expected: vocab_size,
                found: shard.header.vocab_size,
            });
        }
        Ok(shard)
    }

    /// The decoded header.
    pub fn header(&self) -> &ShardHeader {
        &self.header
    }

    /// The shard file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of tokens.
    pub fn len(&self) -> u64 {
        self.header.token_count
    }

    /// Whether the shard holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.header.token_count == 0
    }

    /// Appends tokens `[start, start + len)` to `out`; the caller keeps the range in bounds.
    fn extend_into(&self, start: usize, len: usize, out: &mut Vec<u32>) {
        let payload = &self.mmap[HEADER_LEN..];
        match self.header.dtype {
            Dtype::U16 => out.extend(
                payload[start * 2..(start + len) * 2]
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32),
            ),
            Dtype::U32 => out.extend(
                payload[start * 4..(start + len) * 4]
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
        }
    }
}

/// A split's shards seen as one memory-mapped sequence of tokens.
#[derive(Debug)]
pub struct TokenStream {
    shards: Vec<Shard>,
    /// `starts[i]` = index of shard i's first token in the stream; `starts[n]` = total.
    starts: Vec<u64>,
}

impl TokenStream {
    /// A stream over already opened shards, in order.
    pub fn from_shards(shards: Vec<Shard>) -> TokenStream {
        let mut starts = Vec::with_capacity(shards.len() + 1);
        let mut total = 0u64;
        for s in &shards {
            starts.push(total);
            total += s.len();
        }
        starts.push(total);
        TokenStream { shards, starts }
    }

    /// Opens and verifies `paths` in order, refusing any shard not made by the tokenizer with
    /// hash `tokenizer_hash` (hex) and vocabulary size `vocab_size`.
    pub fn open(
        paths: &[PathBuf],
        tokenizer_hash: &str,
        vocab_size: u32,
    ) -> Result<TokenStream, ShardError> {
        let shards = paths
            .iter()
            .map(|p| Shard::open_expecting(p, tokenizer_hash, vocab_size))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TokenStream::from_shards(shards))
    }

    /// Number of tokens.
    pub fn len(&self) -> u64 {
        *self.starts.last().unwrap_or(&0)
    }

    /// Whether the stream holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shards, in order.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Tokens `[start, start + len)` (may span shards).
    pub fn window(&self, start: u64, len: usize) -> Result<Vec<u32>, ShardError> {
        let mut out = Vec::with_capacity(len);
        self.window_into(start, len, &mut out)?;
        Ok(out)
    }

    /// Appends tokens `[start, start + len)` to `out` (may span shards).
    pub fn window_into(
        &self,
        start: u64,
        len: usize,
        out: &mut Vec<u32>,
    ) -> Result<(), ShardError> {
        let total = self.len();
        let end = start.checked_add(len as u64);
        if end.is_none_or(|e| e > total) {
            return Err(ShardError::OutOfRange {
                start,
                len: len as u64,
                total,
            });
        }
        if len == 0 {
            return Ok(());
        }
        // Last shard whose start is <= `start` and that is not empty.
        let mut i = self.starts.partition_point(|&s| s <= start) - 1;
        let mut pos = start;
        let mut left = len as u64;
        while left > 0 {
            let shard = &self.shards[i];
            let offset = pos - self.starts[i];
            let take = left.min(shard.len() - offset);
            shard.extend_into(offset as usize, take as usize, out);
            pos += take;
            left -= take;
            i += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: [u8; 32] = [7u8; 32];

    fn hash_hex() -> String {
        fsutil::hex(&HASH)
    }

    #[test]
    fn round_trip_u16_and_u32() {
        let dir = tempfile::tempdir().unwrap();
        let small: Vec<u32> = (0..1000).map(|i| (i * 37) % 4096).collect();
        let p = dir.path().join("a.bin");
        let info = write_shard(&p, &small, 4096, &HASH).unwrap();
        assert_eq!(info.bytes, (HEADER_LEN + 2000) as u64);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), info.bytes);
        let s = Shard::open(&p).unwrap();
        assert_eq!(s.header().dtype, Dtype::U16);
        assert_eq!(s.header().checksum_hex(), info.checksum);
        let stream = TokenStream::from_shards(vec![s]);
        assert_eq!(stream.window(0, 1000).unwrap(), small);

        let big: Vec<u32> = (0..500).map(|i| 70_000 + i).collect();
        let q = dir.path().join("b.bin");
        write_shard(&q, &big, 100_000, &HASH).unwrap();
        let s = Shard::open(&q).unwrap();
        assert_eq!(s.header().dtype, Dtype::U32);
        assert_eq!(
            TokenStream::from_shards(vec![s]).window(10, 5).unwrap(),
            big[10..15]
        );
    }

    #[test]
    fn windows_span_shards_including_empty_ones() {
        let dir = tempfile::tempdir().unwrap();
        let all: Vec<u32> = (0..100).collect();
        let parts: [&[u32]; 4] = [&all[0..30], &[], &all[30..31], &all[31..100]];
        let mut paths = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let p = dir.path().join(format!("s{i}.bin"));
            write_shard(&p, part, 128, &HASH).unwrap();
            paths.push(p);
        }
        let stream = TokenStream::open(&paths, &hash_hex(), 128).unwrap();
        assert_eq!(stream.len(), 100);
        for start in 0..100u64 {
            for len in [0usize, 1, 2, 35, (100 - start) as usize] {
                if start + len as u64 <= 100 {
                    let w = stream.window(start, len).unwrap();
                    assert_eq!(
                        w,
                        all[start as usize..start as usize + len],
                        "start {start} len {len}"
                    );
                }
            }
        }
        let err = stream.window(95, 6).unwrap_err();
        assert!(matches!(
            err,
            ShardError::OutOfRange {
                start: 95,
                len: 6,
                total: 100
            }
        ));
    }

    #[test]
    fn truncated_shard_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.bin");
        write_shard(&p, &[1, 2, 3, 4], 16, &HASH).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        let err = Shard::open(&p).unwrap_err();
        assert!(
            matches!(err, ShardError::LengthMismatch { tokens: 4, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("t.bin"));
        std::fs::write(&p, &bytes[..40]).unwrap();
        assert!(matches!(
            Shard::open(&p).unwrap_err(),
            ShardError::TooShort { len: 40, .. }
        ));
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.bin");
        write_shard(&p, &[5, 6, 7, 8, 9, 10], 16, &HASH).unwrap();
        let good = std::fs::read(&p).unwrap();
        for byte in 0..good.len() {
            for bit in [0u8, 3, 7] {
                let mut bad = good.clone();
                bad[byte] ^= 1 << bit;
                std::fs::write(&p, &bad).unwrap();
                let err = Shard::open(&p).expect_err("flip not caught");
                assert!(err.to_string().contains("f.bin"), "{err}");
            }
        }
        // A flip in the tokens specifically gives a checksum error.
        let mut bad = good.clone();
        bad[HEADER_LEN + 3] ^= 0x10;
        std::fs::write(&p, &bad).unwrap();
        assert!(matches!(
            Shard::open(&p).unwrap_err(),
            ShardError::ChecksumMismatch { .. }
        ));
    }

    #[test]
    fn wrong_tokenizer_or_vocab_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.bin");
        write_shard(&p, &[1, 2], 16, &HASH).unwrap();
        let other = fsutil::hex(&[9u8; 32]);
        let err = Shard::open_expecting(&p, &other, 16).unwrap_err();
        assert!(matches!(err, ShardError::TokenizerMismatch { .. }));
        assert!(err.to_string().contains(&other));
        let err = Shard::open_expecting(&p, &hash_hex(), 32).unwrap_err();
        assert!(matches!(
            err,
            ShardError::VocabMismatch {
                expected: 32,
                found: 16,
                ..
            }
        ));
    }

    #[test]
    fn writing_refuses_out_of_vocab_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.bin");
        let err = write_shard(&p, &[1, 2, 16], 16, &HASH).unwrap_err();
        assert!(matches!(
            err,
            ShardError::TokenOutOfVocab {
                index: 2,
                token: 16,
                ..
            }
        ));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn not_a_shard() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.bin");
        std::fs::write(&p, vec![b'x'; 200]).unwrap();
        assert!(matches!(
            Shard::open(&p).unwrap_err(),
            ShardError::BadMagic { .. }
        ));
    }
}
