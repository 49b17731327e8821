//! Trains a byte-level BPE on text inputs and saves its `tokenizer.json`.
//!
//! ```text
//! cargo run --release -p hyperclone-data --example train_bpe -- \
//!     --vocab-size 4096 --out datasets/gutenberg/tokenizer-4096.json datasets/gutenberg/train
//! ```
//!
//! Inputs are files or directories as for `hyperclone prepare` (JSONL uses the field `text`).
//! The result does not depend on the number of threads (`--threads N`, default all cores).

use hyperclone_data::input::{self, InputSpec, Utf8Policy};
use hyperclone_data::prepare::{split_pieces, PIECE_BYTES};
use hyperclone_data::Tokenizer;
use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: train_bpe --vocab-size N --out FILE [--threads N] INPUT...");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut vocab_size = None;
    let mut out = None;
    let mut threads = 0usize;
    let mut inputs = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--vocab-size" => vocab_size = args.next().and_then(|v| v.parse::<usize>().ok()),
            "--out" => out = args.next().map(PathBuf::from),
            "--threads" => match args.next().and_then(|v| v.parse().ok()) {
                Some(t) => threads = t,
                None => return usage(),
            },
            s if s.starts_with("--") => return usage(),
            s => inputs.push(InputSpec::Path(PathBuf::from(s))),
        }
    }
    let (Some(vocab_size), Some(out)) = (vocab_size, out) else {
        return usage();
    };
    if inputs.is_empty() {
        return usage();
    }
    match run(vocab_size, &out, threads, &inputs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    vocab_size: usize,
    out: &std::path::Path,
    threads: usize,
    inputs: &[InputSpec],
) -> Result<(), Box<dyn std::error::Error>> {
    let files = input::resolve(inputs, None)?;
    let mut docs = Vec::new();
    for f in &files {
        docs.extend(input::read_file(f, "text", "text", Utf8Policy::Error)?.docs);
    }
    let pieces: Vec<&str> = docs
        .iter()
        .flat_map(|d| split_pieces(d, PIECE_BYTES))
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let t0 = std::time::Instant::now();
    let tok = pool.install(|| Tokenizer::train_bpe(pieces.into_iter(), vocab_size))?;
    tok.save(out)?;
    eprintln!(
        "trained vocab {} on {} files in {:.1} s; wrote {} (sha256 {})",
        tok.vocab_size(),
        files.len(),
        t0.elapsed().as_secs_f64(),
        out.display(),
        tok.hash()
    );
    Ok(())
}
