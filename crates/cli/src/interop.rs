//! `hyperclone import` / `hyperclone export`: Hugging Face checkpoints in and out.
//!
//! `import --from hf:owner/name[@rev] | DIR --out DIR` reads a GPT-2 or Llama checkpoint
//! (`config.json` + `model.safetensors`, sharded or not; never pickles) and writes one of our
//! model folders (`model.json` + `model.safetensors`, plus `tokenizer.json`, `import.json` and
//! `hf_metadata/`: the source's special token ids, generation config, tokenizer config and chat
//! template) that `train --init-from`, `expand` and `generate` accept. `export --from
//! MODEL_DIR|RUN_DIR --out DIR` writes the Hugging Face format back (`config.json`,
//! `model.safetensors`, `tokenizer.json`, and the kept metadata when the model, or the model a
//! run started from, came from the hub), loadable by transformers' `AutoModelForCausalLM`
//! without custom code and generating like the source.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hyperclone_interop::metadata::TOKENIZER_CONFIG_FILE;
use hyperclone_interop::{
    export_hf_with_metadata, import_hf, resolve_model_source, HfMetadata, METADATA_DIR,
    TOKENIZER_FILE,
};
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
    /// Model folder to write (model.json, model.safetensors, tokenizer.json, import.json, and
    /// hf_metadata/ with the source's special token ids, generation_config.json,
    /// tokenizer_config.json, special_tokens_map.json and chat_template.jinja when it has them).
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
    /// The source's special token ids, generation and tokenizer configs are written when the
    /// model folder, or the run it belongs to, holds hf_metadata/ (from `import`, carried by
    /// `expand` and by training with --init-from).
    #[arg(long, value_name = "MODEL_DIR|RUN_DIR")]
    pub from: PathBuf,
    /// Hugging Face folder to write (config.json, model.safetensors, tokenizer.json, and the
    /// kept generation_config.json, tokenizer_config.json, special_tokens_map.json,
    /// chat_template.jinja).
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

/// The kept Hugging Face metadata for the model folder `dir` behind `--from`: in `dir` itself,
/// else in the run directory it belongs to (`from` when that is a run directory, or the parent
/// of a `final/` or `step-N/` folder), where training with `--init-from` puts it. `None` for
/// models that never came from the hub.
fn find_metadata(from: &Path, dir: &Path) -> Result<Option<(HfMetadata, PathBuf)>> {
    let mut candidates = vec![dir.to_path_buf(), from.to_path_buf()];
    let in_run = dir
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == "final" || n.starts_with("step-"));
    if let (true, Some(parent)) = (in_run, dir.parent()) {
        candidates.push(parent.to_path_buf());
    }
    candidates.dedup();
    for candidate in candidates {
        if let Some(meta) = HfMetadata::load(&candidate).with_context(|| {
            format!(
                "reading the kept Hugging Face metadata in {}",
                candidate.join(METADATA_DIR).display()
            )
        })? {
            return Ok(Some((meta, candidate.join(METADATA_DIR))));
        }
    }
    Ok(None)
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
    // What decides how the source generates and chats, for export to write back; read first,
    // so that a malformed file fails before the weights are loaded.
    let metadata = HfMetadata::from_hf_dir(&source.dir).with_context(|| {
        format!(
            "reading the special token ids, generation and tokenizer settings of {}",
            source.dir.display()
        )
    })?;
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
    println!(
        "kept the source's special token ids {} and {}",
        serde_json::to_string(&metadata.token_ids)?,
        if metadata.files.is_empty() {
            "no generation or tokenizer config".to_string()
        } else {
            metadata.file_names().join(", ")
        }
    );
    let record = serde_json::json!({
        "source": args.from,
        "hub": source.hub.as_ref().map(|(repo, rev)| serde_json::json!({"repo": repo, "revision": rev})),
        "folder": source.dir,
        "import": info,
        "hf_metadata": metadata.summary(),
    });
    let record = serde_json::to_vec_pretty(&record)?;
    write_dir_atomically::<anyhow::Error>(&args.out, |tmp| {
        save_model(&model, tmp)?;
        if let Some(bytes) = &tokenizer {
            write_file_atomically(&tmp.join(TOKENIZER_FILE), bytes)?;
        }
        metadata.save(tmp)?;
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
    let metadata = find_metadata(&args.from, &dir)?;
    match &metadata {
        Some((meta, at)) => {
            println!(
                "writing the source's special token ids {} and {} (kept in {})",
                serde_json::to_string(&meta.token_ids)?,
                if meta.files.is_empty() {
                    "no other file".to_string()
                } else {
                    meta.file_names().join(", ")
                },
                at.display()
            );
            if tokenizer.is_none() && meta.files.contains_key(TOKENIZER_CONFIG_FILE) {
                tracing::warn!(
                    "writing {TOKENIZER_CONFIG_FILE} without {TOKENIZER_FILE}: pass --tokenizer (the source model folder's {TOKENIZER_FILE}) so that transformers can load the tokenizer"
                );
            }
        }
        None => tracing::info!(
            "no kept Hugging Face metadata ({METADATA_DIR}/) for {}: bos/eos ids from the tokenizer's <|endoftext|>",
            dir.display()
        ),
    }
    let info = export_hf_with_metadata(
        &model,
        &args.out,
        tokenizer.as_deref(),
        metadata.as_ref().map(|(m, _)| m),
    )
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
        // The source's special token ids (1, 2, 0) and generation config came along.
        let json = |p: PathBuf| -> serde_json::Value {
            serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap()
        };
        let src = PathBuf::from(fixture("llama-tiny-gqa-tied"));
        let (ours, theirs) = (json(out.join("config.json")), json(src.join("config.json")));
        for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
            assert_eq!(ours[key], theirs[key], "{key}");
        }
        assert_eq!(ours["eos_token_id"], 2);
        assert_eq!(
            fs::read(out.join("generation_config.json")).unwrap(),
            fs::read(src.join("generation_config.json")).unwrap()
        );
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

    #[test]
    fn the_metadata_folder_name_agrees_across_crates() {
        // cloning and training carry hf_metadata/ without depending on interop.
        assert_eq!(
            hyperclone_training::checkpoint::HF_METADATA_DIR,
            METADATA_DIR
        );
        assert!(hyperclone_cloning::record::CARRIED_ENTRIES.contains(&METADATA_DIR));
    }

    /// import → train --init-from (a run without [model]) → export --from RUN_DIR: the run and
    /// its final/ carry the imported model's hf_metadata/, and the export writes the source's
    /// ids, generation config and chat template; a fresh run from random weights in the same
    /// run directory drops them again.
    #[test]
    fn a_run_trained_from_an_imported_chat_model_exports_its_generation_settings() {
        use crate::train::{run_training, TrainPlan};
        let tmp = tempfile::tempdir().unwrap();
        let src = PathBuf::from(fixture("llama-tiny-chat"));
        let model_dir = tmp.path().join("model");
        run_import(ImportArgs {
            from: fixture("llama-tiny-chat"),
            out: model_dir.clone(),
            force: false,
        })
        .unwrap();
        assert!(model_dir
            .join(METADATA_DIR)
            .join("token_ids.json")
            .is_file());
        let record: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(model_dir.join(IMPORT_FILE)).unwrap())
                .unwrap();
        assert_eq!(record["hf_metadata"]["token_ids"]["eos_token_id"], 2);

        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        // The fixture's word-level tokenizer (96 ids) makes the data, as the model needs.
        let toml = format!(
            r#"
            [data]
            train = ["{root}/datasets/gutenberg/val"]
            val_fraction = 0.05
            tokenizer = {{ file = "{model}/tokenizer.json" }}
            out = "{tmp}/data"

            [optimizer]
            lr = 1e-3

            [run]
            seed = 1
            batch_size = 2
            seq_len = 16
            max_steps = 2
            eval_every = 2
            eval_batches = 1
            checkpoint_every = 0
            "#,
            root = root.display(),
            model = model_dir.display(),
            tmp = tmp.path().display()
        );
        let config =
            hyperclone_training::TrainConfig::from_toml_str(&toml, Path::new("t.toml"), &[])
                .unwrap();
        let run = tmp.path().join("run");
        let plan = |init_from: Option<PathBuf>| TrainPlan {
            run_dir: run.clone(),
            init_from,
            resume: false,
            stop_after: None,
            optimizer_state: Default::default(),
            launch: Default::default(),
        };
        run_training(config.clone(), plan(Some(model_dir.clone()))).unwrap();
        for dir in [run.clone(), run.join("final")] {
            assert_eq!(
                HfMetadata::load(&dir).unwrap(),
                HfMetadata::load(&model_dir).unwrap(),
                "{}",
                dir.display()
            );
        }

        let out = tmp.path().join("hf");
        run_export(ExportArgs {
            from: run.clone(),
            out: out.clone(),
            tokenizer: Some(model_dir.join(TOKENIZER_FILE)),
            force: false,
        })
        .unwrap();
        let json = |p: PathBuf| -> serde_json::Value {
            serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap()
        };
        let config_json = json(out.join("config.json"));
        for (key, id) in [
            ("bos_token_id", 1),
            ("eos_token_id", 2),
            ("pad_token_id", 0),
        ] {
            assert_eq!(config_json[key], id, "{key}");
        }
        for file in [
            "generation_config.json",
            "tokenizer_config.json",
            TOKENIZER_FILE,
        ] {
            assert_eq!(
                fs::read(out.join(file)).unwrap(),
                fs::read(src.join(file)).unwrap(),
                "{file}"
            );
        }

        // A run directory holding only a stale hf_metadata/ (an earlier run's) started afresh
        // from random weights: the stale copy goes, and the export falls back to the
        // tokenizer's <|endoftext|> (id 0).
        for entry in fs::read_dir(&run).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().unwrap() != METADATA_DIR {
                if path.is_dir() {
                    fs::remove_dir_all(&path).unwrap();
                } else {
                    fs::remove_file(&path).unwrap();
                }
            }
        }
        let mut scratch = config;
        scratch.model = Some(hyperclone_model::GptConfig {
            vocab_size: 96,
            context_length: 16,
            n_layer: 1,
            d_model: 16,
            n_head: 2,
            n_kv_head: None,
            d_ff: 32,
            ..hyperclone_model::GptConfig::llama_small()
        });
        run_training(scratch, plan(None)).unwrap();
        assert!(!run.join(METADATA_DIR).exists());
        assert!(!run.join("final").join(METADATA_DIR).exists());
        let out2 = tmp.path().join("hf2");
        run_export(ExportArgs {
            from: run.clone(),
            out: out2.clone(),
            tokenizer: Some(model_dir.join(TOKENIZER_FILE)),
            force: false,
        })
        .unwrap();
        let config_json = json(out2.join("config.json"));
        assert_eq!(config_json["eos_token_id"], 0);
        assert!(!out2.join("generation_config.json").exists());
    }
}
