//! The preparation itself: read the inputs, train the BPE if asked, tokenize in parallel,
//! write the shards and the manifest into a temporary sibling, and move it into place.

use super::manifest::{read_manifest, Manifest, ShardEntry, SplitManifest, MANIFEST_VERSION};
use super::plan::Plan;
use super::{io_err, PrepareError, PrepareOptions, PreparedData, TokenizerSpec, PIECE_BYTES};
use crate::fsutil;
use crate::input::{self, InputError, SourceFile};
use crate::progress::Progress;
use crate::shard::{self, Dtype};
use crate::tokenizer::{Tokenizer, TokenizerError};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

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
        let docs = input::read_file(
            f,
            &opts.jsonl_field,
            &opts.parquet_column,
            opts.invalid_utf8,
        )?;
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

/// Prepares `opts.out` according to `plan` (see the docs of the `prepare` module).
pub(super) fn run(opts: &PrepareOptions, plan: Plan) -> Result<PreparedData, PrepareError> {
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
        parquet_column: super::plan::has_parquet(&plan.train_files, &plan.val_files)
            .then(|| opts.parquet_column.clone()),
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
}
