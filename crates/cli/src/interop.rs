//! `hyperclone import` / `hyperclone export`: Hugging Face checkpoints in and out.
//!
//! `import --from hf:owner/name[@rev] | DIR --out DIR` reads a GPT-2 or Llama checkpoint
//! (`config.json` + `model.safetensors`, sharded or not; never pickles) and writes one of our
//! model folders (`model.json` + `model.safetensors`, plus `tokenizer.json` and `import.json`)
//! that `train --init-from`, `expand` and `generate` accept. `export --from MODEL_DIR|RUN_DIR
//! --out DIR` writes the Hugging Face format back (`config.json`, `model.safetensors`,
//! `tokenizer.json`), loadable by transformers' `AutoModelForCausalLM` without custom code.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hyperclone_interop::{export_hf, import_hf, resolve_model_source, TOKENIZER_FILE};
use hyperclone_model::checkpoint::{
    load_model, save_model, write_dir_atomically, write_file_atomically, META_FILE,
};
use hyperclone_training::checkpoint::complete_checkpoints;

/// The backend import and export run on (weights only pass through the host).
type CliBackend = burn::backend::Flex;

/// Provenance file written next to an imported model.
pub const IMPORT_FILE: &str = "import.json";

/// Arguments of `hyperclone import`.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// Hugging Face checkpoint: `hf:owner/name[@revision]` (fetched into the hub cache; set
    /// HF_HUB_OFFLINE=1 to use the cache only) or a local folder with config.json and
    /// model.safetensors (or model.safetensors.index.json + shards).
    #[arg(long, value_name = "hf:REPO[@REV]|DIR")]
    pub from: String,
    /// Model folder to write (model.json, model.safetensors, tokenizer.json, import.json).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace --out if it already exists.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `hyperclone export`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// A model folder (model.json + model.safetensors: an import, an expansion, runs/x/final,
    /// runs/x/step-N) or a run directory (its final/ folder, else its newest complete step).
    #[arg(long, value_name = "MODEL_DIR|RUN_DIR")]
    pub from: PathBuf,
    /// Hugging Face folder to write (config.json, model.safetensors, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// tokenizer.json to copy into --out [default: tokenizer.json of the model folder, if any].
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Replace --out if it already exists.
    #[arg(long)]
    pub force: bool,
}

/// The model folder behind `--from`: itself, its `final/`, or its newest complete step.
fn model_dir_of(from: &Path) -> Result<PathBuf> {
    if from.join(META_FILE).is_file() {
        return Ok(from.to_path_buf());
    }
    let last = from.join("final");
    if last.join(META_FILE).is_file() {
        return Ok(last);
    }
    if let Some((_, step)) = complete_checkpoints(from).into_iter().next() {
        return Ok(step);
    }
    bail!(
        "{} is neither a model folder ({META_FILE} + model.safetensors) nor a run directory with final/ or a complete step-N/ checkpoint",
        from.display()
    )
}

fn refuse_existing(out: &Path, force: bool) -> Result<()> {
    if out.exists() && !force {
        bail!(
            "{} already exists; pass --force to replace it",
            out.display()
        );
    }
    Ok(())
}

/// Runs `hyperclone import`.
pub fn run_import(args: ImportArgs) -> Result<()> {
    refuse_existing(&args.out, args.force)?;
    let source = resolve_model_source(&args.from)
        .with_context(|| format!("resolving the model source {}", args.from))?;
    let device = Default::default();
    let (model, info) = import_hf::<CliBackend>(&source.dir, &device)
        .with_context(|| format!("importing {}", source.dir.display()))?;
    let c = model.config();
    println!(
        "imported {} from {}: {} parameters (vocab {}, context {}, {} layers, d_model {}, {} heads, {} KV heads, d_ff {}, {} head), weights {:?}",
        info.architecture.class_name(),
        args.from,
        c.param_count(),
        c.vocab_size,
        c.context_length,
        c.n_layer,
        c.d_model,
        c.n_head,
        c.kv_heads(),
        c.d_ff,
        if c.tie_embeddings { "tied" } else { "untied" },
        info.dtypes
    );
    if !info.ignored_tensors.is_empty() {
        tracing::info!(tensors = ?info.ignored_tensors, "ignored tensors that hold no weights of ours");
    }
    let tokenizer = match &info.tokenizer {
        Some(p) => Some(fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => {
            tracing::warn!(
                "{} has no {TOKENIZER_FILE}: the model folder gets none",
                source.dir.display()
            );
            None
        }
    };
    let record = serde_json::json!({
        "source": args.from,
        "hub": source.hub.as_ref().map(|(repo, rev)| serde_json::json!({"repo": repo, "revision": rev})),
        "folder": source.dir,
        "import": info,
    });
    let record = serde_json::to_vec_pretty(&record)?;
    write_dir_atomically::<anyhow::Error>(&args.out, |tmp| {
        save_model(&model, tmp)?;
        if let Some(bytes) = &tokenizer {
            write_file_atomically(&tmp.join(TOKENIZER_FILE), bytes)?;
        }
        write_file_atomically(&tmp.join(IMPORT_FILE), &record)?;
        Ok(())
    })?;
    println!("wrote {}", args.out.display());
    Ok(())
}

/// Runs `hyperclone export`.
pub fn run_export(args: ExportArgs) -> Result<()> {
    refuse_existing(&args.out, args.force)?;
    let dir = model_dir_of(&args.from)?;
    let device = Default::default();
    let model = load_model::<CliBackend>(&dir, &device)
        .with_context(|| format!("loading the model from {}", dir.display()))?;
    let tokenizer = match &args.tokenizer {
        Some(p) => Some(p.clone()),
        None => Some(dir.join(TOKENIZER_FILE)).filter(|p| p.is_file()),
    };
    if tokenizer.is_none() {
        tracing::warn!(
            "no tokenizer: {} has no {TOKENIZER_FILE} and --tokenizer was not given",
            dir.display()
        );
    }
    let info = export_hf(&model, &args.out, tokenizer.as_deref())
        .with_context(|| format!("exporting {} to {}", dir.display(), args.out.display()))?;
    println!(
        "exported {} ({} parameters, {} tensors{}) to {} (model.safetensors sha256 {})",
        info.architecture.class_name(),
        model.config().param_count(),
        info.tensors,
        if info.tokenizer {
            ", tokenizer.json"
        } else {
            ""
        },
        args.out.display(),
        info.weights_sha256
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../interop/tests/fixtures")
            .join(name)
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn import_then_export_round_trips_through_our_model_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let model_dir = tmp.path().join("model");
        run_import(ImportArgs {
            from: fixture("llama-tiny-gqa-tied"),
            out: model_dir.clone(),
            force: false,
        })
        .unwrap();
        assert!(model_dir.join(META_FILE).is_file());
        assert!(model_dir.join(IMPORT_FILE).is_file());
        let again = run_import(ImportArgs {
            from: fixture("llama-tiny-gqa-tied"),
            out: model_dir.clone(),
            force: false,
        });
        assert!(again.unwrap_err().to_string().contains("--force"));

        // A run directory resolves to its final/ folder.
        let run = tmp.path().join("run");
        fs::create_dir_all(&run).unwrap();
        fs::rename(&model_dir, run.join("final")).unwrap();
        let out = tmp.path().join("hf");
        run_export(ExportArgs {
            from: run.clone(),
            out: out.clone(),
            tokenizer: None,
            force: false,
        })
        .unwrap();
        let device = Default::default();
        let (exported, _) = import_hf::<CliBackend>(&out, &device).unwrap();
        let (original, _) =
            import_hf::<CliBackend>(Path::new(&fixture("llama-tiny-gqa-tied")), &device).unwrap();
        assert_eq!(exported.config(), original.config());
        let flat = |m: &hyperclone_model::Gpt<CliBackend>| {
            m.h[1]
                .attn
                .c_attn
                .weight
                .val()
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        };
        assert_eq!(flat(&exported), flat(&original));

        let e = run_export(ExportArgs {
            from: tmp.path().join("nothing"),
            out: tmp.path().join("x"),
            tokenizer: None,
            force: false,
        })
        .unwrap_err();
        assert!(e.to_string().contains("nothing"), "{e}");
    }
}
