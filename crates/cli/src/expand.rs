//! `hyperclone expand`: HyperClone a trained model folder into a wider, function-preserving one.
//!
//! Reads a folder holding `model.json` + `model.safetensors` (a model folder, or a training
//! checkpoint such as `runs/x/step-00001000/` or `runs/x/final/`), expands it, checks on a
//! probe batch that the logits are unchanged, and writes `--out` atomically with the model
//! files and `expand.json`. When the check fails nothing is written and the command fails.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use hyperclone_cloning::{
    expand, probe_tokens, save_expanded, verify, ExpandOptions, ExpandRecord, Variant,
    DEFAULT_TOLERANCE_F32,
};
use hyperclone_model::checkpoint::load_model;
use hyperclone_model::tokens_tensor;

/// The backend `expand` runs on until the CLI's backend selection is wired in.
type CliBackend = burn::backend::Flex;

/// Arguments of `hyperclone expand`.
#[derive(clap::Args, Debug)]
pub struct ExpandArgs {
    /// Source model folder: any folder holding model.json and model.safetensors (a model
    /// folder, or a training checkpoint such as runs/x/final or runs/x/step-00001000).
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// Folder to write the expanded model to (model files + expand.json), atomically.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Width factor n: d_model and the head count grow n-fold (head_dim stays fixed).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub width: usize,
    /// FFN factor m: d_ff grows m-fold [default: the width factor].
    #[arg(long, value_name = "M")]
    pub ffn: Option<usize>,
    /// Cloning variant: symmetric, noisy-symmetric, diagonal or noisy-diagonal.
    #[arg(long, default_value = "symmetric", value_parser = parse_variant)]
    pub variant: Variant,
    /// Signal-to-noise ratio of the noisy variants, in dB.
    #[arg(
        long,
        value_name = "DB",
        default_value_t = 10.0,
        allow_negative_numbers = true
    )]
    pub snr_db: f64,
    /// Seed of the noise (and of the random probe tokens).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of probe tokens for the verification (split into sequences of at most the
    /// context length).
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub probe_tokens: usize,
    /// Take the probe tokens from the start of this token shard instead of random ids.
    #[arg(long, value_name = "FILE")]
    pub probe_data: Option<PathBuf>,
    /// Largest relative logit error accepted (max |Δlogit| / max |source logit|).
    #[arg(long, default_value_t = DEFAULT_TOLERANCE_F32)]
    pub tolerance: f64,
    /// Skip the verification (faster; expand.json then records null errors).
    #[arg(long)]
    pub skip_verify: bool,
    /// Replace --out if it already exists.
    #[arg(long)]
    pub force: bool,
}

fn parse_variant(s: &str) -> Result<Variant, String> {
    s.parse::<Variant>().map_err(|e| e.to_string())
}

/// Runs `hyperclone expand` on the default CPU backend.
pub fn run(args: ExpandArgs) -> Result<()> {
    let device = Default::default();
    run_on::<CliBackend>(args, &device)
}

/// Runs `hyperclone expand` on backend `B` and `device`.
pub fn run_on<B: Backend>(args: ExpandArgs, device: &B::Device) -> Result<()> {
    let start = Instant::now();
    let opts = ExpandOptions {
        width_factor: args.width,
        ffn_factor: args.ffn.unwrap_or(args.width),
        variant: args.variant,
        snr_db: args.snr_db,
        seed: args.seed,
    };
    opts.validate()?;
    if !(args.tolerance.is_finite() && args.tolerance >= 0.0) {
        bail!(
            "--tolerance {} must be a finite number >= 0",
            args.tolerance
        );
    }
    if args.out.exists() && !args.force {
        bail!(
            "{} already exists; pass --force to replace it",
            args.out.display()
        );
    }
    let source = load_model::<B>(&args.from, device)
        .with_context(|| format!("loading the source model from {}", args.from.display()))?;
    let sc = source.config().clone();
    println!(
        "source: {} parameters (d_model {}, {} heads, {} KV heads, d_ff {})",
        sc.param_count(),
        sc.d_model,
        sc.n_head,
        sc.kv_heads(),
        sc.d_ff
    );
    let target = expand(&source, &opts)?;
    let tc = target.config().clone();
    println!(
        "target: {} parameters (d_model {}, {} heads, {} KV heads, d_ff {}), {} x width, {} x FFN, {}",
        tc.param_count(),
        tc.d_model,
        tc.n_head,
        tc.kv_heads(),
        tc.d_ff,
        opts.width_factor,
        opts.ffn_factor,
        opts.variant
    );

    let verification = if args.skip_verify {
        println!("verification skipped (--skip-verify)");
        None
    } else {
        let (ids, batch, seq) = probe(&args, sc.vocab_size, sc.context_length)?;
        let tokens = tokens_tensor::<B>(&ids, batch, seq, device);
        let v = verify(&source, &target, tokens)?;
        println!(
            "verification on {} positions ({batch} x {seq}): max |dlogit| {:.3e}, relative error {:.3e} (tolerance {:.1e}), KL(source||target) {:.3e}",
            v.positions, v.max_abs_logit_diff, v.rel_err, args.tolerance, v.kl
        );
        // Nothing is written when the check fails.
        v.check(args.tolerance)?;
        Some(v)
    };
    drop(source);

    let wall_s = start.elapsed().as_secs_f64();
    let record = ExpandRecord::new(
        &opts,
        sc.param_count(),
        tc.param_count(),
        wall_s,
        verification.as_ref(),
        Some(args.tolerance),
        B::name(device),
        Some(args.from.clone()),
    );
    save_expanded(&args.out, &target, &record)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "wrote {} in {:.2} s ({wall_s:.2} s before writing)",
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The probe batch: `(ids, batch, seq)` from `--probe-data` or random ids.
fn probe(args: &ExpandArgs, vocab: usize, context: usize) -> Result<(Vec<u32>, usize, usize)> {
    if args.probe_tokens == 0 {
        bail!("--probe-tokens must be at least 1 (or pass --skip-verify)");
    }
    let seq = args.probe_tokens.min(context);
    let batch = (args.probe_tokens / seq).max(1);
    let ids = match &args.probe_data {
        None => probe_tokens(vocab, batch, seq, args.seed),
        Some(path) => shard_tokens(path, batch * seq)?,
    };
    Ok((ids, batch, seq))
}

/// The first `count` tokens of a token shard.
fn shard_tokens(path: &Path, count: usize) -> Result<Vec<u32>> {
    use hyperclone_data::shard::{Shard, TokenStream};
    let shard = Shard::open(path).with_context(|| format!("--probe-data {}", path.display()))?;
    let stream = TokenStream::from_shards(vec![shard]);
    if stream.len() < count as u64 {
        bail!(
            "--probe-data {} holds {} tokens, fewer than the {count} probe tokens asked for (lower --probe-tokens)",
            path.display(),
            stream.len()
        );
    }
    Ok(stream.window(0, count)?)
}
