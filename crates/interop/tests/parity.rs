//! Parity with Hugging Face transformers on the committed fixtures (tiny random GPT-2 and Llama
//! checkpoints and transformers' logits for fixed tokens; see tests/fixtures/README.md):
//! import → same logits; export → same tensors as transformers' own files and identical logits
//! after re-import; import → HyperClone 2× (and 2× deeper with zero blocks) → export → re-import
//! → the source's logits; and the exported expanded folders are byte-identical to the ones
//! transformers was checked on (records in tests/expanded/).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use hyperclone_cloning::{expand, DepthMode, ExpandOptions, Variant};
use hyperclone_interop::tensors::serialize_f32;
use hyperclone_interop::{export_hf, import_hf, HfArchitecture, InteropError};
use hyperclone_model::{tokens_tensor, Gpt};
use safetensors::SafeTensors;

type B = Flex;

const FIXTURES: [&str; 4] = [
    "gpt2-tiny",
    "llama-tiny-mha-untied",
    "llama-tiny-gqa-tied",
    "llama-tiny-mqa-untied",
];

/// Largest accepted |Δlogit| against transformers (logits reach 10-16 in magnitude).
const ATOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Token ids of `tokens.json` as (row-major ids, batch, seq).
fn tokens(dir: &Path) -> (Vec<u32>, usize, usize) {
    let text = fs::read_to_string(dir.join("tokens.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rows: Vec<Vec<u32>> = serde_json::from_value(value["tokens"].clone()).unwrap();
    let (b, t) = (rows.len(), rows[0].len());
    (rows.concat(), b, t)
}

/// Tensor "logits" of a safetensors file, f32, with its shape.
fn read_logits(path: &Path) -> (Vec<f32>, Vec<usize>) {
    let bytes = fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor("logits").unwrap();
    assert_eq!(view.dtype(), safetensors::Dtype::F32);
    let data = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (data, view.shape().to_vec())
}

fn our_logits(model: &Gpt<B>, dir: &Path) -> (Vec<f32>, Vec<usize>) {
    let (ids, b, t) = tokens(dir);
    let device = Default::default();
    let out = model.forward(tokens_tensor(&ids, b, t, &device));
    let shape = out.dims().to_vec();
    (out.into_data().convert::<f32>().into_vec().unwrap(), shape)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn import(dir: &Path) -> Gpt<B> {
    import_hf::<B>(dir, &Default::default())
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .0
}

/// The growths whose exports transformers checked (records in `tests/expanded/<fixture><suffix>`):
/// width 2 × FFN 2, and the same followed by 2× depth with zero blocks interleaved.
const GROWTHS: [(&str, usize); 2] = [("", 1), ("-depth2", 2)];

/// `model` HyperCloned 2× (width and FFN, symmetric), then `depth_factor`× deeper (zero blocks
/// interleaved, width first).
fn expand2(model: &Gpt<B>, depth_factor: usize) -> Gpt<B> {
    let opts = ExpandOptions {
        width_factor: 2,
        ffn_factor: 2,
        variant: Variant::Symmetric,
        depth_factor,
        ..ExpandOptions::default()
    };
    expand(model, &opts).unwrap()
}

#[test]
fn imported_logits_match_transformers() {
    for name in FIXTURES {
        let dir = fixture(name);
        let (model, info) = import_hf::<B>(&dir, &Default::default()).unwrap();
        let expected_arch = if name.starts_with("gpt2") {
            HfArchitecture::Gpt2
        } else {
            HfArchitecture::Llama
        };
        assert_eq!(info.architecture, expected_arch);
        assert_eq!(info.dtypes, vec!["F32".to_string()]);
        let (ours, shape) = our_logits(&model, &dir);
        let (theirs, their_shape) = read_logits(&dir.join("logits.safetensors"));
        assert_eq!(shape, their_shape, "{name}");
        let diff = max_abs_diff(&ours, &theirs);
        println!("{name}: import max |Δlogit| vs transformers = {diff:.3e}");
        assert!(diff <= ATOL, "{name}: max |Δ| {diff} > {ATOL}");
    }
}

#[test]
fn export_writes_transformers_tensors_and_reimports_identically() {
    for name in FIXTURES {
        let dir = fixture(name);
        let model = import(&dir);
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("export");
        let info = export_hf(&model, &out, None).unwrap();
        assert!(!info.tokenizer);
        // The same tensor names, shapes and values as transformers' save_pretrained wrote.
        let ours = fs::read(out.join("model.safetensors")).unwrap();
        let theirs = fs::read(dir.join("model.safetensors")).unwrap();
        let (ours, theirs) = (
            SafeTensors::deserialize(&ours).unwrap(),
            SafeTensors::deserialize(&theirs).unwrap(),
        );
        let mut our_names = ours.names();
        let mut their_names = theirs.names();
        our_names.sort();
        their_names.sort();
        assert_eq!(our_names, their_names, "{name}");
        for n in their_names {
            let (a, b) = (ours.tensor(n).unwrap(), theirs.tensor(n).unwrap());
            assert_eq!(a.shape(), b.shape(), "{name}: {n}");
            assert_eq!(a.data(), b.data(), "{name}: {n}");
        }
        let again = import(&out);
        assert_eq!(again.config(), model.config(), "{name}");
        assert_eq!(our_logits(&again, &dir), our_logits(&model, &dir), "{name}");
    }
}

/// The recorded result of `scripts/hf/check_expanded_exports.sh`.
#[derive(serde::Deserialize)]
struct ExpandedRecord {
    config_sha256: String,
    weights_sha256: String,
    transformers_max_abs_diff: f64,
}

#[test]
fn expanded_exports_keep_the_source_logits() {
    for name in FIXTURES {
        let dir = fixture(name);
        let source = import(&dir);
        for (suffix, depth_factor) in GROWTHS {
            let case = format!("{name}{suffix}");
            let large = expand2(&source, depth_factor);
            assert_eq!(large.config().d_model, 2 * source.config().d_model);
            assert_eq!(
                large.config().n_layer,
                depth_factor * source.config().n_layer
            );
            let tmp = tempfile::tempdir().unwrap();
            let out = tmp.path().join("export");
            let info = export_hf(&large, &out, None).unwrap();
            let again = import(&out);
            assert_eq!(again.config(), large.config(), "{case}");
            let (ours, _) = our_logits(&again, &dir);
            let (theirs, _) = read_logits(&dir.join("logits.safetensors"));
            let diff = max_abs_diff(&ours, &theirs);
            println!(
                "{case}: expanded export max |Δlogit| vs source transformers logits = {diff:.3e}"
            );
            assert!(diff <= ATOL, "{case}: max |Δ| {diff} > {ATOL}");

            // transformers loaded this very export (same bytes) and gave these logits.
            let recorded = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/expanded")
                .join(&case);
            let record: ExpandedRecord =
                serde_json::from_str(&fs::read_to_string(recorded.join("export.json")).unwrap())
                    .unwrap();
            assert_eq!(
                info.weights_sha256, record.weights_sha256,
                "{case}: model.safetensors"
            );
            assert_eq!(
                info.config_sha256, record.config_sha256,
                "{case}: config.json"
            );
            let (hf_expanded, _) = read_logits(&recorded.join("logits.safetensors"));
            let hf_diff = max_abs_diff(&hf_expanded, &theirs);
            assert!(
                hf_diff <= ATOL && f64::from(hf_diff) == record.transformers_max_abs_diff,
                "{case}: transformers' expanded logits differ from the source's by {hf_diff}"
            );
            assert!(max_abs_diff(&ours, &hf_expanded) <= ATOL, "{case}");
        }
    }
}

#[test]
fn stacked_exports_reimport_with_the_same_logits() {
    // A G_stack changes the function, so there is no source logit to match: the export must
    // carry the stacked model itself (same config, same logits after re-import).
    for name in FIXTURES {
        let dir = fixture(name);
        let source = import(&dir);
        let opts = ExpandOptions {
            width_factor: 1,
            ffn_factor: 1,
            depth_factor: 2,
            depth_mode: DepthMode::Stack,
            ..ExpandOptions::default()
        };
        let stacked = expand(&source, &opts).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("export");
        export_hf(&stacked, &out, None).unwrap();
        let again = import(&out);
        assert_eq!(
            again.config().n_layer,
            2 * source.config().n_layer,
            "{name}"
        );
        assert_eq!(again.config(), stacked.config(), "{name}");
        assert_eq!(
            our_logits(&again, &dir),
            our_logits(&stacked, &dir),
            "{name}"
        );
        assert_ne!(
            our_logits(&again, &dir),
            our_logits(&source, &dir),
            "{name}"
        );
    }
}

/// Writes the exports of the expanded fixtures ([`GROWTHS`]) to
/// `$HC_EXPANDED_EXPORT_DIR/<fixture><suffix>/` for `scripts/hf/check_expanded_exports.sh`
/// (not a test of its own).
#[test]
#[ignore = "writes the expanded exports for the transformers check; run by scripts/hf/check_expanded_exports.sh"]
fn write_expanded_exports() {
    let root = PathBuf::from(std::env::var("HC_EXPANDED_EXPORT_DIR").unwrap());
    for name in FIXTURES {
        let source = import(&fixture(name));
        for (suffix, depth_factor) in GROWTHS {
            let out = root.join(format!("{name}{suffix}"));
            let info = export_hf(&expand2(&source, depth_factor), &out, None).unwrap();
            assert_eq!(info.dir, out);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Refusals

/// Copies a fixture's config.json and model.safetensors into a temp folder.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for file in ["config.json", "model.safetensors"] {
        fs::copy(fixture(name).join(file), tmp.path().join(file)).unwrap();
    }
    tmp
}

/// Rewrites `dir/model.safetensors` after `edit` changed its tensors.
fn edit_weights(dir: &Path, edit: impl FnOnce(&mut BTreeMap<String, (Vec<usize>, Vec<f32>)>)) {
    let bytes = fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut map = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        map.insert(name, (view.shape().to_vec(), data));
    }
    edit(&mut map);
    fs::write(
        dir.join("model.safetensors"),
        serialize_f32(&map, dir).unwrap(),
    )
    .unwrap();
}

fn import_err(dir: &Path) -> InteropError {
    match import_hf::<B>(dir, &Default::default()) {
        Ok(_) => panic!("{} was imported", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn unknown_architecture_is_refused_with_its_name() {
    let tmp = copy_fixture("gpt2-tiny");
    let path = tmp.path().join("config.json");
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace("\"gpt2\"", "\"opt\"")
        .replace("GPT2LMHeadModel", "OPTForCausalLM");
    fs::write(&path, text).unwrap();
    let e = import_err(tmp.path());
    assert!(
        matches!(e, InteropError::UnsupportedArchitecture { .. }),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("\"opt\"") && msg.contains("OPTForCausalLM"),
        "{msg}"
    );
}

#[test]
fn missing_misshaped_and_unexpected_tensors_are_refused_with_names() {
    let tmp = copy_fixture("llama-tiny-gqa-tied");
    edit_weights(tmp.path(), |m| {
        m.remove("model.layers.1.self_attn.k_proj.weight");
    });
    let e = import_err(tmp.path());
    let msg = e.to_string();
    assert!(matches!(e, InteropError::MissingTensor { .. }), "{msg}");
    assert!(
        msg.contains("model.layers.1.self_attn.k_proj.weight") && msg.contains("[16, 32]"),
        "{msg}"
    );

    let tmp = copy_fixture("gpt2-tiny");
    edit_weights(tmp.path(), |m| {
        let t = m.get_mut("transformer.h.0.mlp.c_fc.weight").unwrap();
        t.0 = vec![64, 32]; // transposed: an nn.Linear layout where Conv1D is expected
    });
    let e = import_err(tmp.path());
    let msg = e.to_string();
    assert!(matches!(e, InteropError::ShapeMismatch { .. }), "{msg}");
    assert!(
        msg.contains("h.0.mlp.c_fc.weight") && msg.contains("[64, 32]") && msg.contains("[32, 64]"),
        "{msg}"
    );

    let tmp = copy_fixture("llama-tiny-mha-untied");
    edit_weights(tmp.path(), |m| {
        m.insert(
            "model.layers.0.self_attn.q_proj.bias".into(),
            (vec![32], vec![0.0; 32]),
        );
    });
    let e = import_err(tmp.path());
    let msg = e.to_string();
    assert!(matches!(e, InteropError::UnexpectedTensors { .. }), "{msg}");
    assert!(
        msg.contains("model.layers.0.self_attn.q_proj.bias"),
        "{msg}"
    );
}

#[test]
fn pickle_only_folders_are_refused_and_weightless_ones_named() {
    let tmp = copy_fixture("gpt2-tiny");
    fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    let e = import_err(tmp.path());
    assert!(matches!(e, InteropError::NoWeights { .. }), "{e}");
    // Not a real pickle: the file must never be opened, whatever it holds.
    fs::write(tmp.path().join("pytorch_model.bin"), b"not read").unwrap();
    let e = import_err(tmp.path());
    let msg = e.to_string();
    assert!(matches!(e, InteropError::PickleRefused { .. }), "{msg}");
    assert!(
        msg.contains("pytorch_model.bin") && msg.contains("execute") && msg.contains("safetensors"),
        "{msg}"
    );
}

#[test]
fn export_copies_the_tokenizer_and_refuses_models_without_hf_counterpart() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tmp.path().join("tok.json");
    fs::write(&tok, br#"{"model": {}}"#).unwrap();
    let model = import(&fixture("gpt2-tiny"));
    let out = tmp.path().join("out");
    let info = export_hf(&model, &out, Some(&tok)).unwrap();
    assert!(info.tokenizer);
    assert_eq!(
        fs::read(out.join("tokenizer.json")).unwrap(),
        fs::read(&tok).unwrap()
    );
    let config = |dir: &Path| -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
    };
    // No <|endoftext|> in the tokenizer and vocab 96: no out-of-range default 50256.
    assert!(config(&out)["eos_token_id"].is_null());
    let tok_eot = tmp.path().join("tok-eot.json");
    fs::write(
        &tok_eot,
        br#"{"added_tokens": [{"id": 7, "content": "<|endoftext|>"}], "model": {}}"#,
    )
    .unwrap();
    let out_eot = tmp.path().join("out-eot");
    export_hf(&model, &out_eot, Some(&tok_eot)).unwrap();
    assert_eq!(config(&out_eot)["eos_token_id"], 7);
    assert_eq!(config(&out_eot)["bos_token_id"], 7);
    // Reruns give the same bytes.
    let info2 = export_hf(&model, &out, Some(&tok)).unwrap();
    assert_eq!(info.weights_sha256, info2.weights_sha256);
    assert_eq!(info.config_sha256, info2.config_sha256);

    let mut config = hyperclone_model::GptConfig::cpu_tiny();
    config.tie_embeddings = false;
    let untied = Gpt::<B>::init(&config, 0, &Default::default()).unwrap();
    let e = export_hf(&untied, &tmp.path().join("bad"), None).unwrap_err();
    assert!(matches!(e, InteropError::NotExportable { .. }), "{e}");
    assert!(e.to_string().contains("tie_embeddings"), "{e}");
    assert!(!tmp.path().join("bad").exists());
}

#[test]
fn sharded_checkpoint_imports_like_the_single_file() {
    let name = "llama-tiny-mqa-untied";
    let tmp = copy_fixture(name);
    let dir = tmp.path();
    // Split the tensors over two shards by name.
    let bytes = fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut shards = [BTreeMap::new(), BTreeMap::new()];
    let mut weight_map = serde_json::Map::new();
    for (i, (n, view)) in st.tensors().into_iter().enumerate() {
        let data = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let file = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
        weight_map.insert(n.clone(), file.into());
        shards[i % 2].insert(n, (view.shape().to_vec(), data));
    }
    for (i, shard) in shards.iter().enumerate() {
        let file = dir.join(format!("model-0000{}-of-00002.safetensors", i + 1));
        fs::write(file, serialize_f32(shard, dir).unwrap()).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    fs::remove_file(dir.join("model.safetensors")).unwrap();
    let (model, info) = import_hf::<B>(dir, &Default::default()).unwrap();
    assert_eq!(info.weight_files.len(), 2);
    let reference = import(&fixture(name));
    assert_eq!(
        our_logits(&model, &fixture(name)),
        our_logits(&reference, &fixture(name))
    );
}
