//! `hyperclone expand`: HyperClone a trained model folder into a wider, function-preserving one.
//!
//! Reads a folder holding `model.json` + `model.safetensors` (a model folder, or a training
//! checkpoint such as `runs/x/step-00001000/` or `runs/x/final/`), expands it, checks on a
//! probe batch that the logits are unchanged, and writes `--out` atomically with the model
//! files and `expand.json`, plus the source's `tokenizer.json` and `hf_metadata/` (the special
//! token ids, generation and tokenizer configs that `import` keeps), which hold for the wider
//! clone as they did for its source. When the check fails nothing is written and the command
//! fails.
//!
//! With `--optimizer-state transfer`, `--from` must be a training checkpoint (a step folder):
//! its AdamW state is mapped through the clone (`hyperclone_experiment::transfer`) and written
//! as `optimizer.safetensors` beside the expanded weights, where `hyperclone train
//! --init-from` finds it. It is never automatic: a transferred state changes how the wide
//! model trains (per-parameter step factors), so it is asked for explicitly.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hyperclone_cloning::record::CARRIED_ENTRIES;
use hyperclone_cloning::{
    expand_config, expand_folder, DepthMode, DepthPlacement, ExpandOptions, GrowthOrder, ProbeSpec,
    Variant, DEFAULT_TOLERANCE_F32,
};
use hyperclone_experiment::{map_optimizer_state, write_optimizer_state};
use hyperclone_model::checkpoint::read_meta;
use hyperclone_model::GptBackend;

/// The backend `expand` runs on until the CLI's backend selection is wired in.
type CliBackend = burn::backend::Flex;

/// Arguments of `hyperclone expand`.
#[derive(clap::Args, Debug)]
pub struct ExpandArgs {
    /// Source model folder: any folder holding model.json and model.safetensors (a model
    /// folder, or a training checkpoint such as runs/x/final or runs/x/step-00001000).
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// Folder to write the expanded model to (model files + expand.json, and the source's
    /// tokenizer.json and hf_metadata/ when it has them), atomically.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Width factor n: d_model and the head count grow n-fold (head_dim stays fixed).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub width: usize,
    /// FFN factor m: d_ff grows m-fold [default: the width factor].
    #[arg(long, value_name = "M")]
    pub ffn: Option<usize>,
    /// Depth factor K: n_layer grows K-fold (1: width only). `--width 1 --depth 2` grows depth
    /// alone.
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub depth: usize,
    /// How depth growth fills the new layers: zero (new blocks adding exactly zero to the
    /// residual stream: function-preserving) or stack (G_stack: the block stack repeated K
    /// times; not function-preserving, so the logit change and KL are reported, not checked).
    #[arg(long, value_name = "MODE", default_value = "zero", value_parser = parse_choice::<DepthMode>)]
    pub depth_mode: DepthMode,
    /// Where zero depth growth puts the new blocks: interleave (K-1 after every block) or top
    /// (all above the source's blocks).
    #[arg(long, value_name = "WHERE", default_value = "interleave", value_parser = parse_choice::<DepthPlacement>)]
    pub depth_placement: DepthPlacement,
    /// With both width and depth growth, which comes first: width-first or depth-first (the
    /// logits are checked once, at the end).
    #[arg(long, value_name = "ORDER", default_value = "width-first", value_parser = parse_choice::<GrowthOrder>)]
    pub order: GrowthOrder,
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
    /// AdamW's state: `fresh` (weights only; the wide run starts a fresh optimizer) or
    /// `transfer`: map the moments, the update count and per-parameter factors of --from,
    /// which must then be a training checkpoint (runs/NAME/step-NNNNNNNN), into
    /// --out/optimizer.safetensors; `hyperclone train --init-from` continues from it.
    #[arg(long, value_enum, default_value_t = OptimizerState::Fresh)]
    pub optimizer_state: OptimizerState,
}

/// What `expand` does with the optimizer state of `--from`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerState {
    /// Weights only.
    Fresh,
    /// Carry AdamW's state through the clone.
    Transfer,
}

fn parse_variant(s: &str) -> Result<Variant, String> {
    s.parse::<Variant>().map_err(|e| e.to_string())
}

fn parse_choice<T: std::str::FromStr<Err = hyperclone_cloning::CloneError>>(
    s: &str,
) -> Result<T, String> {
    s.parse::<T>().map_err(|e| e.to_string())
}

/// Runs `hyperclone expand` on the default CPU backend.
pub fn run(args: ExpandArgs) -> Result<()> {
    let device = Default::default();
    run_on::<CliBackend>(args, &device)
}

/// Runs `hyperclone expand` on backend `B` and `device`.
pub fn run_on<B: GptBackend>(args: ExpandArgs, device: &B::Device) -> Result<()> {
    let start = Instant::now();
    let opts = ExpandOptions {
        width_factor: args.width,
        ffn_factor: args.ffn.unwrap_or(args.width),
        variant: args.variant,
        snr_db: args.snr_db,
        seed: args.seed,
        depth_factor: args.depth,
        depth_mode: args.depth_mode,
        depth_placement: args.depth_placement,
        order: args.order,
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
    let sc = read_meta(&args.from)
        .with_context(|| format!("reading the source model in {}", args.from.display()))?
        .config;
    let tc = expand_config(&sc, &opts)?;
    println!(
        "source: {} parameters ({} layers, d_model {}, {} heads, {} KV heads, d_ff {})",
        sc.param_count(),
        sc.n_layer,
        sc.d_model,
        sc.n_head,
        sc.kv_heads(),
        sc.d_ff
    );
    let depth = if opts.grows_depth() {
        let placement = match opts.depth_mode {
            DepthMode::Zero => format!(" {}", opts.depth_placement),
            DepthMode::Stack => String::new(),
        };
        let order = if opts.width_factor > 1 || opts.ffn_factor > 1 {
            format!(", {}", opts.order)
        } else {
            String::new()
        };
        format!(
            ", {} x depth ({}{placement}{order})",
            opts.depth_factor, opts.depth_mode
        )
    } else {
        String::new()
    };
    println!(
        "target: {} parameters ({} layers, d_model {}, {} heads, {} KV heads, d_ff {}), {} x width, {} x FFN, {}{depth}",
        tc.param_count(),
        tc.n_layer,
        tc.d_model,
        tc.n_head,
        tc.kv_heads(),
        tc.d_ff,
        opts.width_factor,
        opts.ffn_factor,
        opts.variant
    );
    if !opts.is_function_preserving() {
        println!(
            "note: stack depth growth is not function-preserving: the logit change and KL below are reported, not held to --tolerance"
        );
    }
    let probe = probe_spec(&args, sc.context_length)?;
    // Mapped before anything is written: a checkpoint without optimizer state fails here.
    let mapped = match args.optimizer_state {
        OptimizerState::Fresh => None,
        OptimizerState::Transfer => Some(
            map_optimizer_state::<B>(&args.from, &opts, device).with_context(|| {
                format!("--optimizer-state transfer from {}", args.from.display())
            })?,
        ),
    };
    // Loads, expands, verifies and writes; nothing is written when the check fails.
    let done = expand_folder::<B>(
        &args.from,
        &args.out,
        &opts,
        &probe,
        &B::name(device),
        device,
    )
    .with_context(|| {
        format!(
            "expanding {} into {}",
            args.from.display(),
            args.out.display()
        )
    })?;
    match &done.verification {
        None => println!("verification skipped (--skip-verify)"),
        Some(v) if opts.is_function_preserving() => println!(
            "verification on {} positions ({} x {}): max |dlogit| {:.3e}, relative error {:.3e} (tolerance {:.1e}), KL(source||target) {:.3e}",
            v.positions, probe.batch, probe.seq, v.max_abs_logit_diff, v.rel_err, args.tolerance, v.kl
        ),
        Some(v) => println!(
            "function change on {} positions ({} x {}), not checked (stack): max |dlogit| {:.3e}, relative change {:.3e}, KL(source||target) {:.3e} nats",
            v.positions, probe.batch, probe.seq, v.max_abs_logit_diff, v.rel_err, v.kl
        ),
    }
    let carried: Vec<&str> = CARRIED_ENTRIES
        .into_iter()
        .filter(|name| args.out.join(name).exists())
        .collect();
    if !carried.is_empty() {
        println!(
            "carried over from {}: {}",
            args.from.display(),
            carried.join(", ")
        );
    }
    if let Some(mapped) = &mapped {
        match write_optimizer_state(&args.out, mapped) {
            Ok(t) => println!(
                "optimizer state: moments of {} parameters from step {}, bias correction continues from update {}, per-parameter factors set: {}",
                t.parameters,
                t.source_step,
                t.updates,
                t.path.display()
            ),
            Err(e) => {
                // The weights alone would silently train with a fresh optimizer.
                let _ = std::fs::remove_dir_all(&args.out);
                return Err(e).context(format!(
                    "writing the optimizer state into {}",
                    args.out.display()
                ));
            }
        }
    }
    println!(
        "wrote {} in {:.2} s",
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The probe batch: `--probe-tokens` split into rows of at most the context length, from
/// `--probe-data` or random ids.
fn probe_spec(args: &ExpandArgs, context: usize) -> Result<ProbeSpec> {
    if args.probe_tokens == 0 && !args.skip_verify {
        bail!("--probe-tokens must be at least 1 (or pass --skip-verify)");
    }
    let seq = args.probe_tokens.clamp(1, context);
    let batch = (args.probe_tokens / seq).max(1);
    let tokens = match &args.probe_data {
        Some(path) if !args.skip_verify => Some(shard_tokens(path, batch * seq)?),
        _ => None,
    };
    Ok(ProbeSpec {
        tokens,
        batch,
        seq,
        tolerance: args.tolerance,
        skip: args.skip_verify,
    })
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
