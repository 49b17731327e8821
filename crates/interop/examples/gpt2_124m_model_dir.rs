//! Measures the memory of `hyperclone export` on a GPT-2 124M-shaped model (Linux only).
//!
//! `gpt2_124m_model_dir DIR` writes a randomly initialised `GptConfig::gpt2_124m()` model folder
//! (`model.safetensors` + `model.json`, as `hyperclone train` saves one); measure the CLI on it:
//!
//! ```sh
//! cargo run --release -p hyperclone-interop --example gpt2_124m_model_dir -- /tmp/gpt2-124m
//! cargo build --release -p hyperclone-cli
//! /usr/bin/time -v target/release/hyperclone export --from /tmp/gpt2-124m --out /tmp/gpt2-124m-hf
//! ```
//!
//! (`Maximum resident set size` in the `time -v` report is the peak RSS.)
//!
//! `gpt2_124m_model_dir DIR llama-135m` writes a Llama-architecture model of SmolLM-135M's
//! shape instead ([`llama_135m`]), for measuring `hyperclone expand` on that architecture.
//!
//! `gpt2_124m_model_dir --measure DIR OUT` loads the model from `DIR` and exports it to `OUT`
//! in-process, printing VmRSS / VmHWM (KiB, from `/proc/self/status`) after each step; the peak
//! counter is reset after loading, so the export's own peak is separated from the load's.

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use hyperclone_interop::{export_hf, hf_tensors};
use hyperclone_model::checkpoint::{load_model, save_model};
use hyperclone_model::{Gpt, GptConfig};

type Error = Box<dyn std::error::Error>;

/// A `kB` field of `/proc/self/status`.
fn status_kib(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn report(step: &str) {
    println!(
        "{step:<28} VmRSS {:>9} KiB   VmHWM {:>9} KiB",
        status_kib("VmRSS"),
        status_kib("VmHWM")
    );
}

/// Resets VmHWM to the current RSS.
fn reset_peak() -> Result<(), Error> {
    std::fs::write("/proc/self/clear_refs", "5")?;
    Ok(())
}

fn measure(dir: PathBuf, out: PathBuf) -> Result<(), Error> {
    report("start");
    let model = load_model::<Flex>(&dir, &Default::default())?;
    report("after load_model");
    reset_peak()?;
    let (_, tensors) = hf_tensors(&model)?;
    report("after hf_tensors");
    drop(tensors);
    reset_peak()?;
    report("peak reset");
    let info = export_hf(&model, &out, None)?;
    report("after export_hf");
    println!(
        "{} tensors, model.safetensors sha256 {}",
        info.tensors, info.weights_sha256
    );
    Ok(())
}

/// A Llama-architecture model of SmolLM-135M's shape (RoPE, RMSNorm, SwiGLU, 9 query / 3 KV
/// heads, tied embeddings): 134,515,008 parameters.
fn llama_135m() -> GptConfig {
    GptConfig {
        vocab_size: 49_152,
        context_length: 2048,
        n_layer: 30,
        d_model: 576,
        n_head: 9,
        n_kv_head: Some(3),
        d_ff: 1536,
        tie_embeddings: true,
        ..GptConfig::llama_small()
    }
}

/// Writes a randomly initialised model of `config` to the new folder `dir`.
fn write_model(dir: &Path, config: &GptConfig) -> Result<(), Error> {
    if dir.exists() {
        return Err(format!("{} exists already", dir.display()).into());
    }
    let model = Gpt::<Flex>::init(config, 1, &Default::default())?;
    std::fs::create_dir_all(dir)?;
    save_model(&model, dir)?;
    println!(
        "wrote {} ({} parameters)",
        dir.display(),
        model.config().param_count()
    );
    Ok(())
}

fn main() -> Result<(), Error> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    match args.as_slice() {
        [flag, dir, out] if flag.as_os_str() == "--measure" => measure(dir.clone(), out.clone()),
        [dir] => write_model(dir, &GptConfig::gpt2_124m()),
        [dir, preset] if preset.as_os_str() == "llama-135m" => write_model(dir, &llama_135m()),
        _ => Err(
            "usage: gpt2_124m_model_dir DIR [llama-135m] | gpt2_124m_model_dir --measure DIR OUT"
                .into(),
        ),
    }
}
