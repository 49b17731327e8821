//! End-to-end tests of `hyperclone expand` (the module is compiled in here by path, since the
//! CLI is a binary crate): a folder in, an expanded folder with `expand.json` out, and nothing
//! written when verification fails.

#[path = "../src/expand.rs"]
#[allow(dead_code)]
mod expand;

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use expand::{run_on, ExpandArgs, OptimizerState};
use hyperclone_cloning::{read_expand_record, DepthMode, DepthPlacement, GrowthOrder, Variant};
use hyperclone_model::checkpoint::{load_model, save_model};
use hyperclone_model::{tokens_tensor, Gpt, GptConfig};

type B = Flex;

struct TempDir(PathBuf);
impl TempDir {
    fn new(name: &str) -> Self {
        let p =
            std::env::temp_dir().join(format!("hyperclone-expand-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn small() -> GptConfig {
    GptConfig {
        vocab_size: 96,
        context_length: 16,
        n_layer: 2,
        d_model: 32,
        n_head: 4,
        n_kv_head: Some(2),
        d_ff: 48,
        ..GptConfig::llama_small()
    }
}

fn args(from: &Path, out: &Path) -> ExpandArgs {
    ExpandArgs {
        from: from.to_path_buf(),
        out: out.to_path_buf(),
        width: 2,
        ffn: None,
        depth: 1,
        depth_mode: DepthMode::Zero,
        depth_placement: DepthPlacement::Interleave,
        order: GrowthOrder::WidthFirst,
        variant: Variant::Symmetric,
        snr_db: 10.0,
        seed: 0,
        probe_tokens: 64,
        probe_data: None,
        tolerance: 1e-5,
        skip_verify: false,
        force: false,
        optimizer_state: OptimizerState::Fresh,
    }
}

fn logits(model: &Gpt<B>) -> Vec<f32> {
    let ids: Vec<u32> = (0..32).map(|i| (i * 13 % 96) as u32).collect();
    model
        .forward(tokens_tensor(&ids, 2, 16, &Default::default()))
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

#[test]
fn expand_writes_a_loadable_function_preserving_folder_with_its_record() {
    let tmp = TempDir::new("ok");
    let device = Default::default();
    let src = tmp.0.join("small");
    std::fs::create_dir_all(&src).unwrap();
    let source = Gpt::<B>::init(&small(), 1, &device).unwrap();
    save_model(&source, &src).unwrap();
    let out = tmp.0.join("large");
    let a = ExpandArgs {
        variant: Variant::NoisySymmetric,
        ffn: Some(3),
        ..args(&src, &out)
    };
    run_on::<B>(a, &device).unwrap();

    let target = load_model::<B>(&out, &device).unwrap();
    assert_eq!(target.config().d_model, 64);
    assert_eq!(target.config().d_ff, 144);
    let (s, t) = (logits(&source), logits(&target));
    let max_src = s.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_diff = s
        .iter()
        .zip(&t)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(max_diff <= 1e-5 * max_src, "{max_diff} vs {max_src}");

    let rec = read_expand_record(&out).unwrap().expect("expand.json");
    assert_eq!(rec.factors(), Some((2, 3)));
    assert_eq!(rec.variant.as_deref(), Some(Variant::NoisySymmetric.name()));
    assert_eq!(rec.snr_db, Some(10.0));
    assert_eq!(rec.source_params, Some(small().param_count() as u64));
    assert_eq!(rec.target_params, Some(target.num_params() as u64));
    assert!(rec.rel_err.unwrap() <= 1e-5 && rec.kl.is_some());
    let (wall_s, device_hours) = (rec.wall_s.unwrap(), rec.device_hours.unwrap());
    assert!(wall_s > 0.0 && (device_hours - wall_s / 3600.0).abs() < 1e-15);
    // The optional verification is timed apart from the expansion it checks.
    assert!(rec.verify_s.unwrap() > 0.0);
    // The report crate's contract: these keys, with these JSON types.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("expand.json")).unwrap()).unwrap();
    for key in [
        "wall_s",
        "device_hours",
        "max_abs_logit_diff",
        "rel_err",
        "kl",
        "snr_db",
        "verify_s",
    ] {
        assert!(json[key].is_f64(), "{key}: {json}");
    }
    for key in [
        "source_params",
        "target_params",
        "width_factor",
        "ffn_factor",
        "seed",
    ] {
        assert!(json[key].is_u64(), "{key}: {json}");
    }
    assert_eq!(json["variant"], "noisy-symmetric");
    assert!(json["device"].is_string());

    // An existing output folder is kept unless --force.
    let e = run_on::<B>(args(&src, &out), &device)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--force"), "{e}");
    let forced = ExpandArgs {
        force: true,
        skip_verify: true,
        ..args(&src, &out)
    };
    run_on::<B>(forced, &device).unwrap();
    let rec = read_expand_record(&out).unwrap().unwrap();
    assert_eq!(
        (rec.ffn_factor, rec.rel_err, rec.snr_db),
        (Some(2), None, None)
    );
    assert_eq!(rec.verify_s, None);
}

#[test]
fn failed_verification_and_impossible_requests_write_nothing() {
    let tmp = TempDir::new("fail");
    let device = Default::default();
    let src = tmp.0.join("small");
    std::fs::create_dir_all(&src).unwrap();
    save_model(&Gpt::<B>::init(&small(), 2, &device).unwrap(), &src).unwrap();
    let out = tmp.0.join("large");

    // A zero tolerance cannot be met in f32 with n = 3 (W/3 is rounded).
    let strict = ExpandArgs {
        width: 3,
        tolerance: 0.0,
        ..args(&src, &out)
    };
    let e = format!("{:#}", run_on::<B>(strict, &device).unwrap_err());
    assert!(e.contains("not function-preserving"), "{e}");
    let e = run_on::<B>(
        ExpandArgs {
            width: 0,
            ..args(&src, &out)
        },
        &device,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("width_factor"), "{e}");
    let e = run_on::<B>(args(&tmp.0.join("nope"), &out), &device).unwrap_err();
    assert!(format!("{e:#}").contains("nope"), "{e:#}");
    // Nothing but the source folder: no output, no temp folder left behind.
    let names: Vec<_> = std::fs::read_dir(&tmp.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("small")]);
}

#[test]
fn probe_tokens_can_come_from_a_token_shard() {
    let tmp = TempDir::new("shard");
    let device = Default::default();
    let src = tmp.0.join("small");
    std::fs::create_dir_all(&src).unwrap();
    save_model(&Gpt::<B>::init(&small(), 3, &device).unwrap(), &src).unwrap();
    let shard = tmp.0.join("val.bin");
    let tokens: Vec<u32> = (0..100).map(|i| (i * 7 % 96) as u32).collect();
    hyperclone_data::shard::write_shard(&shard, &tokens, 96, &[0; 32]).unwrap();
    let out = tmp.0.join("large");
    let with_data = ExpandArgs {
        probe_data: Some(shard.clone()),
        ..args(&src, &out)
    };
    run_on::<B>(with_data, &device).unwrap();
    assert!(read_expand_record(&out).unwrap().unwrap().rel_err.is_some());
    let too_many = ExpandArgs {
        probe_data: Some(shard),
        probe_tokens: 500,
        force: true,
        ..args(&src, &out)
    };
    let e = run_on::<B>(too_many, &device).unwrap_err().to_string();
    assert!(e.contains("fewer than"), "{e}");
}

/// The source's tokenizer and the Hugging Face metadata kept by `import` (special token ids,
/// generation and tokenizer configs) are copied byte for byte into the expanded folder, which
/// `export` then writes back; a source without them gives a folder without them.
#[test]
fn expand_carries_the_tokenizer_and_the_kept_hf_metadata() {
    let tmp = TempDir::new("carry");
    let device = Default::default();
    let src = tmp.0.join("small");
    std::fs::create_dir_all(src.join("hf_metadata")).unwrap();
    save_model(&Gpt::<B>::init(&small(), 4, &device).unwrap(), &src).unwrap();
    let files = [
        (
            "tokenizer.json",
            &br#"{"model": {"type": "WordLevel"}}"#[..],
        ),
        (
            "hf_metadata/token_ids.json",
            b"{\n  \"bos_token_id\": 1,\n  \"eos_token_id\": 2,\n  \"pad_token_id\": 0\n}\n",
        ),
        (
            "hf_metadata/generation_config.json",
            b"{\n  \"eos_token_id\": [2, 0],\n  \"max_new_tokens\": 8\n}\n",
        ),
        (
            "hf_metadata/tokenizer_config.json",
            br#"{"chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}"#,
        ),
    ];
    for (name, bytes) in files {
        std::fs::write(src.join(name), bytes).unwrap();
    }
    let out = tmp.0.join("large");
    run_on::<B>(args(&src, &out), &device).unwrap();
    for (name, bytes) in files {
        assert_eq!(std::fs::read(out.join(name)).unwrap(), bytes, "{name}");
    }
    assert_eq!(
        std::fs::read_dir(out.join("hf_metadata")).unwrap().count(),
        3
    );
    assert!(read_expand_record(&out).unwrap().is_some());

    // Without them: none in the output (a model trained here).
    let bare = tmp.0.join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    save_model(&Gpt::<B>::init(&small(), 5, &device).unwrap(), &bare).unwrap();
    let out2 = tmp.0.join("large2");
    run_on::<B>(args(&bare, &out2), &device).unwrap();
    assert!(!out2.join("tokenizer.json").exists());
    assert!(!out2.join("hf_metadata").exists());
}

/// `--optimizer-state transfer` from a training checkpoint writes the mapped AdamW state beside
/// the expanded weights; from a model folder (no optimizer state) it fails naming the folder
/// and writes nothing.
#[test]
fn optimizer_state_is_carried_from_a_checkpoint_and_refused_from_a_model_folder() {
    use hyperclone_training::checkpoint::{save_checkpoint, TrainState, OPTIMIZER_FILE};
    use hyperclone_training::config::OptimizerConfig;
    use hyperclone_training::optim::{AdamW, AdamWState};
    use hyperclone_training::Trainer;
    type AB = burn::backend::Autodiff<B>;

    let tmp = TempDir::new("optimizer");
    let device: burn::tensor::Device<B> = Default::default();
    // A checkpoint after one step of the small model.
    let model = Gpt::<AB>::init(&small(), 4, &device).unwrap();
    let mut trainer = Trainer::new(model, AdamW::new(OptimizerConfig::default()), device);
    let ids: Vec<u32> = (0..33).map(|i| (i * 5 % 96) as u32).collect();
    trainer
        .step(1, 1e-3, |_| {
            Ok::<_, ()>((
                tokens_tensor(&ids[..32], 2, 16, &device),
                tokens_tensor(&ids[1..], 2, 16, &device),
            ))
        })
        .unwrap()
        .read();
    let state = TrainState {
        step: 1,
        tokens: 32,
        wall_s: 0.0,
        device_hours: 0.0,
        flops: 0.0,
        seed: 0,
        tokenizer_hash: String::new(),
        config_hash: String::new(),
        best_val: None,
        expanded: None,
    };
    let step_dir = save_checkpoint(
        &tmp.0.join("run"),
        trainer.model(),
        trainer.optimizer(),
        &state,
    )
    .unwrap();

    let out = tmp.0.join("large");
    let transfer = ExpandArgs {
        optimizer_state: OptimizerState::Transfer,
        ..args(&step_dir, &out)
    };
    run_on::<B>(transfer, &device).unwrap();
    let carried = AdamWState::read(&out.join(OPTIMIZER_FILE)).unwrap();
    assert_eq!(carried.updates, 1);
    assert_eq!(carried.origin.as_ref().map(|o| o.step), Some(1));
    let target = load_model::<B>(&out, &device).unwrap();
    assert_eq!(
        carried.params.len(),
        hyperclone_cloning::plan::parameters(target.config()).len()
    );
    let qkv = &carried.params["h.0.attn.c_attn.weight"];
    assert_eq!(
        qkv.exp_avg.len(),
        target.h[0]
            .attn
            .c_attn
            .weight
            .val()
            .dims()
            .iter()
            .product::<usize>()
    );
    assert_eq!(qkv.scale.as_ref().map(|s| s.step), Some(0.5));

    // Weights only: refused by name, and no output folder.
    let weights = tmp.0.join("final");
    std::fs::create_dir_all(&weights).unwrap();
    save_model(&Gpt::<B>::init(&small(), 4, &device).unwrap(), &weights).unwrap();
    let out2 = tmp.0.join("large2");
    let e = run_on::<B>(
        ExpandArgs {
            optimizer_state: OptimizerState::Transfer,
            ..args(&weights, &out2)
        },
        &device,
    )
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains(&weights.display().to_string()) && msg.contains(OPTIMIZER_FILE),
        "{msg}"
    );
    assert!(!out2.exists());
}

#[test]
fn expand_grows_depth_checking_zero_blocks_and_reporting_a_stack() {
    let tmp = TempDir::new("depth");
    let device = Default::default();
    let src = tmp.0.join("small");
    std::fs::create_dir_all(&src).unwrap();
    let source = Gpt::<B>::init(&small(), 1, &device).unwrap();
    save_model(&source, &src).unwrap();
    let s = logits(&source);
    let max_src = s.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_diff = |t: &[f32]| s.iter().zip(t).fold(0f32, |m, (a, b)| m.max((a - b).abs()));

    // Width then depth, zero blocks on top: checked, and the record says how it grew.
    let zero = tmp.0.join("zero");
    run_on::<B>(
        ExpandArgs {
            depth: 3,
            depth_placement: DepthPlacement::Top,
            ..args(&src, &zero)
        },
        &device,
    )
    .unwrap();
    let target = load_model::<B>(&zero, &device).unwrap();
    assert_eq!((target.config().n_layer, target.config().d_model), (6, 64));
    assert!(max_diff(&logits(&target)) <= 1e-5 * max_src);
    let rec = read_expand_record(&zero).unwrap().unwrap();
    assert_eq!(rec.depth_factor, Some(3));
    assert_eq!(rec.depth_mode.as_deref(), Some("zero"));
    assert_eq!(rec.depth_placement.as_deref(), Some("top"));
    assert_eq!(rec.order.as_deref(), Some("width-first"));
    assert_eq!(rec.function_preserving, None);
    assert_eq!(rec.tolerance, Some(1e-5));

    // A stack (depth alone): not function-preserving, written anyway with its measured change.
    let stack = tmp.0.join("stack");
    run_on::<B>(
        ExpandArgs {
            width: 1,
            depth: 2,
            depth_mode: DepthMode::Stack,
            ..args(&src, &stack)
        },
        &device,
    )
    .unwrap();
    let target = load_model::<B>(&stack, &device).unwrap();
    assert_eq!((target.config().n_layer, target.config().d_model), (4, 32));
    let rec = read_expand_record(&stack).unwrap().unwrap();
    assert_eq!(rec.function_preserving, Some(false));
    assert_eq!(rec.tolerance, None);
    assert!(
        rec.kl.unwrap() > 0.0 && rec.rel_err.unwrap() > 1e-5,
        "{rec:?}"
    );
    assert_eq!(rec.order, None, "no width growth, no order");

    // Depth first, then width: the same function again.
    let depth_first = tmp.0.join("depth-first");
    run_on::<B>(
        ExpandArgs {
            depth: 2,
            order: GrowthOrder::DepthFirst,
            variant: Variant::NoisyDiagonal,
            ..args(&src, &depth_first)
        },
        &device,
    )
    .unwrap();
    let target = load_model::<B>(&depth_first, &device).unwrap();
    assert_eq!(target.config().n_layer, 4);
    assert!(max_diff(&logits(&target)) <= 1e-5 * max_src);
}
