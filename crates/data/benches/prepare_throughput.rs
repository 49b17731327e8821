//! Throughput of `prepare` on the shipped Gutenberg corpus (1 and 2 threads) and of batch drawing.
//!
//! ```text
//! cargo bench -p hyperclone-data --bench prepare_throughput
//! ```
//!
//! Prints a Markdown report (figures, machine, load average) on stdout. Not a timed test: the
//! numbers are for `benches/results/data-throughput.md`.

use hyperclone_data::{
    prepare, validation_batches, BatchSampler, InputSpec, PrepareOptions, PreparedData,
    TokenizerSpec,
};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The shipped corpus; `HYPERCLONE_GUTENBERG_DIR` overrides its location (for a copied binary).
fn corpus() -> PathBuf {
    match std::env::var_os("HYPERCLONE_GUTENBERG_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/gutenberg"),
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// CPU seconds (user + system) this process has used so far, from /proc/self/stat (Linux;
/// assumes 100 clock ticks per second). NaN elsewhere.
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(f64::NAN)
}

/// Best of `runs` wall-clock timings of `prepare`, in seconds, and the prepared data of the last.
fn time_prepare(
    tokenizer: &TokenizerSpec,
    threads: usize,
    runs: usize,
    out: &Path,
) -> (f64, f64, PreparedData) {
    let mut opts = PrepareOptions::new(
        vec![InputSpec::Path(corpus().join("train"))],
        tokenizer.clone(),
        out.to_path_buf(),
    );
    opts.val = vec![InputSpec::Path(corpus().join("val"))];
    opts.threads = threads;
    let mut best = f64::INFINITY;
    let mut best_cpu = f64::NAN;
    let mut last = None;
    for _ in 0..runs {
        let c0 = cpu_seconds();
        let t0 = Instant::now();
        let data = prepare(&opts).expect("prepare");
        let secs = t0.elapsed().as_secs_f64();
        if secs < best {
            best = secs;
            best_cpu = cpu_seconds() - c0;
        }
        last = Some(data);
    }
    (best, best_cpu, last.expect("at least one run"))
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let dir = tempfile::tempdir().expect("tempdir");
    let load_before = load_average();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("## Data throughput\n");
    println!("- CPU: {} ({cores} cores visible)", cpu_model());
    println!("- load average before: {load_before}");
    println!("- corpus: datasets/gutenberg (train 16 books + val 2 books)\n");

    println!("### `prepare` (read + hash inputs, tokenize, write shards, verify), best of 2\n");
    println!("| tokenizer | threads | seconds | CPU seconds | MB/s | tokens | tokens/s |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let specs = [
        (
            "gutenberg BPE 4096",
            TokenizerSpec::File(corpus().join("tokenizer-4096.json")),
        ),
        ("GPT-2 (50257)", TokenizerSpec::Gpt2),
    ];
    let mut prepared = None;
    for (i, (name, spec)) in specs.iter().enumerate() {
        for threads in [1usize, 2] {
            let out = dir.path().join(format!("p-{i}-{threads}"));
            let (secs, cpu, data) = time_prepare(spec, threads, 2, &out);
            let bytes = (data.manifest.train.bytes + data.manifest.val.bytes) as f64;
            let tokens = data.manifest.train.tokens + data.manifest.val.tokens;
            println!(
                "| {name} | {threads} | {secs:.2} | {cpu:.2} | {:.2} | {tokens} | {:.0} |",
                bytes / 1e6 / secs,
                tokens as f64 / secs
            );
            if prepared.is_none() {
                prepared = Some(out);
            }
        }
    }

    let out = prepared.expect("prepared dir");
    let t0 = Instant::now();
    let data = PreparedData::open(&out).expect("open");
    let open_secs = t0.elapsed().as_secs_f64();
    println!(
        "\n`PreparedData::open` (sha256 of all shards, {} tokens): {:.3} s\n",
        data.train.len() + data.val.len(),
        open_secs
    );

    println!("### Batch drawing (train stream, BPE 4096, one thread)\n");
    println!("| mode | B | T | batches/s | tokens/s (B·T) |");
    println!("|---|---:|---:|---:|---:|");
    for (b, t) in [(8usize, 64usize), (16, 256), (8, 1024), (64, 1024)] {
        let sampler = BatchSampler::new(b, t, 1234).expect("sampler");
        for mode in ["random", "sequential"] {
            let mut n = 0u64;
            let mut checksum = 0u64;
            let t0 = Instant::now();
            while t0.elapsed().as_secs_f64() < 1.0 {
                let batch = if mode == "random" {
                    sampler.random_batch(&data.train, n)
                } else {
                    sampler.sequential_batch(&data.train, n)
                }
                .expect("batch");
                checksum =
                    checksum.wrapping_add(batch.tokens[n as usize % batch.tokens.len()] as u64);
                std::hint::black_box(&batch);
                n += 1;
            }
            let secs = t0.elapsed().as_secs_f64();
            std::hint::black_box(checksum);
            println!(
                "| {mode} | {b} | {t} | {:.0} | {:.3e} |",
                n as f64 / secs,
                (n as f64 * (b * t) as f64) / secs
            );
        }
    }
    let t0 = Instant::now();
    let v = validation_batches(&data.val, 8, 256, 50).expect("val");
    println!(
        "\n`validation_batches(val, 8, 256, 50)`: {} batches in {:.4} s\n",
        v.len(),
        t0.elapsed().as_secs_f64()
    );
    println!("- load average after: {}", load_average());
}
