//! `hyperclone eval`: the validation loss and perplexity of a model folder or run on any prepared
//! data, so that the small, cloned and baseline models can be compared on data of the user's
//! choice.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hyperclone_data::{validation_batches, PreparedData};
use hyperclone_model::checkpoint::{load_model, read_meta, sha256_hex};
use hyperclone_model::GptAutodiffBackend;
use hyperclone_training::checkpoint::{complete_checkpoints, read_state};
use hyperclone_training::{evaluate, Precision, TrainConfig};
use serde::Serialize;

use crate::backend::{run_job, Env, Job};
use crate::train::{model_dir_of, CliBackend};

/// Evaluate a model on prepared data.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// A run directory (uses `final/`, else the newest complete checkpoint) or a model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// A prepared data directory (`hyperclone prepare … --out DIR`).
    #[arg(long)]
    pub data: PathBuf,
    /// Which split of the data to score.
    #[arg(long, value_enum, default_value = "val")]
    pub split: Split,
    /// Sequences per batch.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens per sequence (default: the model's context length).
    #[arg(long)]
    pub seq: Option<usize>,
    /// Batches at most (evenly spread over the split; default: every whole window of the split).
    #[arg(long)]
    pub batches: Option<usize>,
    /// Score data made with another tokenizer than the model's (normally refused).
    #[arg(long)]
    pub allow_tokenizer_mismatch: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Backend.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: CliBackend,
}

/// A split of a prepared data directory.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The validation tokens.
    Val,
    /// The training tokens.
    Train,
}

/// What `eval` measured.
#[derive(Debug, Clone, Serialize)]
pub struct EvalResult {
    /// The model folder scored.
    pub model: PathBuf,
    /// The data directory.
    pub data: PathBuf,
    /// The split scored.
    pub split: Split,
    /// Mean next-token cross-entropy, nats.
    pub loss: f64,
    /// exp(loss).
    pub perplexity: f64,
    /// Tokens scored.
    pub tokens: u64,
    /// Batches of `batch × seq` tokens.
    pub batches: usize,
    /// Sequences per batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Whether the model's tokenizer is known to be the data's (`null`: it could not be told).
    pub same_tokenizer: Option<bool>,
}

/// The SHA-256 of the tokenizer a model was trained or imported with, when it can be told: the
/// newest checkpoint of its run, else the run's prepared data, else a `tokenizer.json` inside the
/// model folder.
fn model_tokenizer_hash(given: &Path, model_dir: &Path) -> Option<String> {
    let run = if model_dir.file_name().is_some_and(|n| n == "final") {
        model_dir.parent().unwrap_or(given)
    } else {
        given
    };
    if let Some((_, dir)) = complete_checkpoints(run).into_iter().next() {
        if let Ok(state) = read_state(&dir) {
            return Some(state.tokenizer_hash);
        }
    }
    if let Ok(config) = TrainConfig::load(&run.join("config.toml"), &[]) {
        if let Ok(data) = PreparedData::open(&config.data.out) {
            return Some(data.manifest.tokenizer_hash);
        }
    }
    let file = model_dir.join("tokenizer.json");
    std::fs::read(file).ok().map(|bytes| sha256_hex(&bytes))
}

struct EvalJob {
    model_dir: PathBuf,
    data: PreparedData,
    split: Split,
    batch: usize,
    seq: usize,
    batches: usize,
}

impl Job for EvalJob {
    type Output = (f64, usize);
    fn run<AB: GptAutodiffBackend>(self, device: &AB::Device, _env: Env) -> Result<Self::Output> {
        let model = load_model::<AB::InnerBackend>(&self.model_dir, device)?;
        let stream = match self.split {
            Split::Val => &self.data.val,
            Split::Train => &self.data.train,
        };
        let batches =
            validation_batches(stream, self.batch, self.seq, self.batches).with_context(|| {
                format!(
                    "drawing {} × {} batches from the {:?} split of {}",
                    self.batch,
                    self.seq,
                    self.split,
                    self.data.dir.display()
                )
            })?;
        Ok((evaluate(&model, &batches, device), batches.len()))
    }
}

/// `hyperclone eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    let model_dir = model_dir_of(&args.model);
    let meta = read_meta(&model_dir)
        .with_context(|| format!("reading the model in {}", model_dir.display()))?;
    let data = PreparedData::open(&args.data)
        .with_context(|| format!("opening the prepared data {}", args.data.display()))?;
    data.check_model_vocab(meta.config.vocab_size)?;
    let same_tokenizer =
        model_tokenizer_hash(&args.model, &model_dir).map(|h| h == data.manifest.tokenizer_hash);
    match same_tokenizer {
        Some(false) if !args.allow_tokenizer_mismatch => bail!(
            "{} was made with another tokenizer than the model in {} was trained with (data \
             tokenizer {}): prepare the data with the model's tokenizer, or pass \
             --allow-tokenizer-mismatch to score it anyway",
            args.data.display(),
            model_dir.display(),
            &data.manifest.tokenizer_hash[..16]
        ),
        Some(false) => tracing::warn!("scoring data made with another tokenizer than the model's"),
        None => tracing::warn!(
            "cannot tell which tokenizer {} was trained with; make sure it is the data's",
            model_dir.display()
        ),
        Some(true) => {}
    }
    let seq = args.seq.unwrap_or(meta.config.context_length);
    if seq == 0 || seq > meta.config.context_length {
        bail!(
            "--seq {seq}: must be between 1 and the model's context_length {}",
            meta.config.context_length
        );
    }
    if args.batch == 0 {
        bail!("--batch 0: must be at least 1");
    }
    let batches = args.batches.unwrap_or(usize::MAX);
    let (loss, scored) = run_job(
        args.backend.into(),
        Precision::F32,
        EvalJob {
            model_dir: model_dir.clone(),
            data,
            split: args.split,
            batch: args.batch,
            seq,
            batches,
        },
    )?;
    let result = EvalResult {
        model: model_dir,
        data: args.data.clone(),
        split: args.split,
        loss,
        perplexity: loss.exp(),
        tokens: (scored * args.batch * seq) as u64,
        batches: scored,
        batch: args.batch,
        seq,
        same_tokenizer,
    };
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "{}: loss {:.4} nats/token, perplexity {:.2} on {} tokens of {} ({:?} split; {} \
             batches of {} × {})",
            result.model.display(),
            result.loss,
            result.perplexity,
            result.tokens,
            result.data.display(),
            result.split,
            result.batches,
            result.batch,
            result.seq
        );
    }
    Ok(())
}
