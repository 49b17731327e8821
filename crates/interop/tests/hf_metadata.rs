//! Faithful export of a model from the hub (tests/fixtures/llama-tiny-chat: bos 1, eos 2, pad 0,
//! its own generation config and a ChatML chat template, a tokenizer whose `<|endoftext|>` is
//! id 0): import → (HyperClone 2×) → export keeps the special token ids value for value and the
//! generation config, tokenizer config and chat template byte for byte; greedy decoding of the
//! exported expanded model with the exported settings gives the sequences transformers'
//! default `generate` gave on the source (recorded in the fixture's generate.json); and a
//! model without kept metadata still exports with its tokenizer's `<|endoftext|>`.

use std::fs;
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use hyperclone_cloning::record::CARRIED_ENTRIES;
use hyperclone_cloning::{expand_folder, ExpandOptions, ProbeSpec, Variant};
use hyperclone_interop::metadata::{
    GENERATION_CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKEN_ID_KEYS, VERBATIM_FILES,
};
use hyperclone_interop::{
    export_hf, export_hf_with_metadata, import_hf, HfMetadata, InteropError, TokenIdKey, TokenIds,
    METADATA_DIR, TOKENIZER_FILE,
};
use hyperclone_model::checkpoint::{load_model, save_model, write_dir_atomically};
use hyperclone_model::{tokens_tensor, Gpt};
use serde_json::Value;

type B = Flex;

const CHAT: &str = "llama-tiny-chat";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What `hyperclone import` writes for `src`: the model files, `tokenizer.json` and
/// `hf_metadata/`.
fn import_folder(src: &Path, out: &Path) -> HfMetadata {
    let (model, _) = import_hf::<B>(src, &Default::default()).unwrap();
    let meta = HfMetadata::from_hf_dir(src).unwrap();
    write_dir_atomically::<InteropError>(out, |tmp| {
        save_model(&model, tmp)?;
        fs::copy(src.join(TOKENIZER_FILE), tmp.join(TOKENIZER_FILE)).unwrap();
        meta.save(tmp)
    })
    .unwrap();
    meta
}

fn expand_2x(from: &Path, out: &Path) {
    let opts = ExpandOptions {
        width_factor: 2,
        ffn_factor: 2,
        variant: Variant::Symmetric,
        ..ExpandOptions::default()
    };
    let probe = ProbeSpec {
        tokens: None,
        batch: 2,
        seq: 16,
        tolerance: 1e-5,
        skip: false,
    };
    expand_folder::<B>(from, out, &opts, &probe, "cpu", &Default::default()).unwrap();
}

/// The verbatim files that the fixture has.
fn source_files() -> Vec<&'static str> {
    VERBATIM_FILES
        .into_iter()
        .filter(|f| fixture(CHAT).join(f).is_file())
        .collect()
}

#[test]
fn the_chat_fixture_has_non_default_ids_a_generation_config_and_a_chat_template() {
    let src = fixture(CHAT);
    let meta = HfMetadata::from_hf_dir(&src).unwrap();
    let one = |id| TokenIdKey::Ids(TokenIds::One(id));
    assert_eq!(meta.token_ids.bos_token_id, one(1));
    assert_eq!(meta.token_ids.eos_token_id, one(2));
    assert_eq!(meta.token_ids.pad_token_id, one(0));
    let files = meta.file_names();
    assert!(
        files.contains(&GENERATION_CONFIG_FILE.to_string())
            && files.contains(&TOKENIZER_CONFIG_FILE.to_string()),
        "{files:?}"
    );
    assert_eq!(files, source_files());
    let template = json(&src.join(TOKENIZER_CONFIG_FILE))["chat_template"].clone();
    assert!(
        template
            .as_str()
            .is_some_and(|t| t.contains("<|im_start|>")),
        "{template}"
    );
    // The tokenizer's <|endoftext|> is 0: what an export without the kept ids would write.
    assert_eq!(
        hyperclone_interop::eot_id(&read(&src.join(TOKENIZER_FILE))),
        Some(0)
    );
    // The folder names agree across the crates that carry hf_metadata/.
    assert!(CARRIED_ENTRIES.contains(&METADATA_DIR));
    assert!(CARRIED_ENTRIES.contains(&TOKENIZER_FILE));
}

#[test]
fn import_expand_export_keeps_ids_generation_config_and_chat_template() {
    let src = fixture(CHAT);
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tmp.path().join("model");
    let meta = import_folder(&src, &model_dir);
    assert_eq!(HfMetadata::load(&model_dir).unwrap(), Some(meta.clone()));

    // expand carries the tokenizer and hf_metadata/ into the wider model's folder.
    let expanded = tmp.path().join("expanded");
    expand_2x(&model_dir, &expanded);
    assert_eq!(HfMetadata::load(&expanded).unwrap(), Some(meta.clone()));
    assert_eq!(
        read(&expanded.join(TOKENIZER_FILE)),
        read(&src.join(TOKENIZER_FILE))
    );

    let source_config = json(&src.join("config.json"));
    for (name, dir, width) in [("plain", &model_dir, 32), ("expanded", &expanded, 64)] {
        let model = load_model::<B>(dir, &Default::default()).unwrap();
        let kept = HfMetadata::load(dir).unwrap().unwrap();
        let out = tmp.path().join(format!("hf-{name}"));
        let info =
            export_hf_with_metadata(&model, &out, Some(&dir.join(TOKENIZER_FILE)), Some(&kept))
                .unwrap();
        assert_eq!(info.hf_metadata, Some(meta.file_names()), "{name}");

        // config.json: the source's ids, value for value; our architecture otherwise.
        let config = json(&out.join("config.json"));
        for key in TOKEN_ID_KEYS {
            assert_eq!(config.get(key), source_config.get(key), "{name}: {key}");
        }
        assert_eq!(
            (
                &config["bos_token_id"],
                &config["eos_token_id"],
                &config["pad_token_id"]
            ),
            (&Value::from(1), &Value::from(2), &Value::from(0)),
            "{name}"
        );
        assert_eq!(config["hidden_size"], width, "{name}");

        // generation_config.json, tokenizer_config.json (…) and tokenizer.json: byte for byte.
        for file in source_files().into_iter().chain([TOKENIZER_FILE]) {
            assert_eq!(
                read(&out.join(file)),
                read(&src.join(file)),
                "{name}: {file}"
            );
        }
        let template = |dir: &Path| json(&dir.join(TOKENIZER_CONFIG_FILE))["chat_template"].clone();
        assert_eq!(template(&out), template(&src), "{name}");
        let generation = |dir: &Path| json(&dir.join(GENERATION_CONFIG_FILE));
        assert_eq!(generation(&out), generation(&src), "{name}");

        // The export is itself a faithful source: importing it again keeps the same.
        assert_eq!(HfMetadata::from_hf_dir(&out).unwrap(), meta, "{name}");
        import_hf::<B>(&out, &Default::default()).unwrap();
    }

    // A model without kept metadata (trained here) keeps the old behaviour: the tokenizer's
    // <|endoftext|> (0 here) as bos and eos, no pad, no generation or tokenizer config.
    let model = load_model::<B>(&model_dir, &Default::default()).unwrap();
    let out = tmp.path().join("hf-without-metadata");
    let info = export_hf(&model, &out, Some(&model_dir.join(TOKENIZER_FILE))).unwrap();
    assert_eq!(info.hf_metadata, None);
    let config = json(&out.join("config.json"));
    assert_eq!(
        (&config["bos_token_id"], &config["eos_token_id"]),
        (&Value::from(0), &Value::from(0))
    );
    assert!(config.get("pad_token_id").is_none(), "{config}");
    for file in VERBATIM_FILES {
        assert!(!out.join(file).exists(), "{file}");
    }
}

#[test]
fn absent_keys_stay_absent_and_a_chat_template_file_is_carried() {
    // A source without bos/pad keys (transformers' Llama defaults apply to it), an eos list and
    // its chat template in chat_template.jinja (where transformers >= 4.50 saves it).
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let mut config = json(&fixture(CHAT).join("config.json"));
    let obj = config.as_object_mut().unwrap();
    obj.remove("bos_token_id");
    obj.remove("pad_token_id");
    obj.insert("eos_token_id".into(), serde_json::json!([2, 0]));
    fs::write(
        src.join("config.json"),
        serde_json::to_vec(&config).unwrap(),
    )
    .unwrap();
    for file in ["model.safetensors", TOKENIZER_FILE] {
        fs::copy(fixture(CHAT).join(file), src.join(file)).unwrap();
    }
    let jinja = "{% for m in messages %}{{ m['content'] }}{% endfor %}\n";
    fs::write(src.join("chat_template.jinja"), jinja).unwrap();

    let model_dir = tmp.path().join("model");
    let meta = import_folder(&src, &model_dir);
    assert_eq!(meta.token_ids.bos_token_id, TokenIdKey::Absent);
    assert_eq!(
        meta.token_ids.eos_token_id,
        TokenIdKey::Ids(TokenIds::Many(vec![2, 0]))
    );
    assert_eq!(
        fs::read_to_string(model_dir.join(METADATA_DIR).join("token_ids.json")).unwrap(),
        "{\n  \"eos_token_id\": [\n    2,\n    0\n  ]\n}\n"
    );
    let expanded = tmp.path().join("expanded");
    expand_2x(&model_dir, &expanded);
    let model = load_model::<B>(&expanded, &Default::default()).unwrap();
    let kept = HfMetadata::load(&expanded).unwrap().unwrap();
    let out = tmp.path().join("hf");
    export_hf_with_metadata(&model, &out, None, Some(&kept)).unwrap();
    let config = json(&out.join("config.json"));
    assert!(config.get("bos_token_id").is_none(), "{config}");
    assert!(config.get("pad_token_id").is_none(), "{config}");
    assert_eq!(config["eos_token_id"], serde_json::json!([2, 0]));
    assert_eq!(
        fs::read_to_string(out.join("chat_template.jinja")).unwrap(),
        jinja
    );
}

#[test]
fn malformed_generation_config_is_refused_on_import_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path();
    for file in ["config.json", "model.safetensors"] {
        fs::copy(fixture(CHAT).join(file), src.join(file)).unwrap();
    }
    fs::write(src.join(GENERATION_CONFIG_FILE), "{\"eos_token_id\": [2,").unwrap();
    let e = HfMetadata::from_hf_dir(src).unwrap_err();
    assert!(matches!(e, InteropError::BadJson { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&src.join(GENERATION_CONFIG_FILE).display().to_string()),
        "{msg}"
    );
    // A kept copy damaged after import is refused on export's read, naming it too.
    fs::remove_file(src.join(GENERATION_CONFIG_FILE)).unwrap();
    let model_dir = tmp.path().join("model");
    import_folder_without_tokenizer(src, &model_dir);
    let kept = model_dir.join(METADATA_DIR).join("token_ids.json");
    fs::write(&kept, "{\"eos_token_id\": \"2\"}").unwrap();
    let msg = HfMetadata::load(&model_dir).unwrap_err().to_string();
    assert!(msg.contains("token_ids.json"), "{msg}");
}

fn import_folder_without_tokenizer(src: &Path, out: &Path) {
    let (model, _) = import_hf::<B>(src, &Default::default()).unwrap();
    let meta = HfMetadata::from_hf_dir(src).unwrap();
    write_dir_atomically::<InteropError>(out, |tmp| {
        save_model(&model, tmp)?;
        meta.save(tmp)
    })
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Generation

/// `generate.json`: prompts and the sequences transformers' default `generate` returned on the
/// source folder (made by scripts/hf/make_fixtures.py).
#[derive(serde::Deserialize)]
struct Recorded {
    tokens: Vec<Vec<u32>>,
    sequences: Vec<Vec<i64>>,
}

/// transformers' greedy search: each step appends the argmax of the last position's logits to
/// the unfinished rows and `pad` to the finished ones; a row finishes on any of `eos`; the
/// search ends when every row has finished or after `max_new` tokens.
fn greedy(
    model: &Gpt<B>,
    prompts: &[Vec<u32>],
    eos: &[i64],
    pad: i64,
    max_new: usize,
) -> Vec<Vec<i64>> {
    let device = Default::default();
    let mut seqs: Vec<Vec<u32>> = prompts.to_vec();
    let mut done = vec![false; seqs.len()];
    for _ in 0..max_new {
        let (b, t) = (seqs.len(), seqs[0].len());
        let logits = model.forward(tokens_tensor::<B>(&seqs.concat(), b, t, &device));
        let v = logits.dims()[2];
        let data = logits
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap();
        for (r, seq) in seqs.iter_mut().enumerate() {
            let last = &data[(r * t + t - 1) * v..(r * t + t) * v];
            let next = if done[r] {
                pad
            } else {
                let (i, _) =
                    last.iter()
                        .enumerate()
                        .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
                            if x > best.1 {
                                (i, x)
                            } else {
                                best
                            }
                        });
                i as i64
            };
            seq.push(u32::try_from(next).unwrap());
            done[r] |= eos.contains(&next);
        }
        if done.iter().all(|&d| d) {
            break;
        }
    }
    seqs.into_iter()
        .map(|s| s.into_iter().map(i64::from).collect())
        .collect()
}

/// The stop ids (int or list), pad id and max_new_tokens of a generation_config.json.
fn generation_settings(path: &Path) -> (Vec<i64>, i64, usize) {
    let g = json(path);
    let eos = match &g["eos_token_id"] {
        Value::Array(a) => a.iter().map(|v| v.as_i64().unwrap()).collect(),
        v => vec![v.as_i64().unwrap()],
    };
    (
        eos,
        g["pad_token_id"].as_i64().unwrap(),
        g["max_new_tokens"].as_u64().unwrap() as usize,
    )
}

#[test]
fn expanded_export_decodes_like_transformers_generate_on_the_source() {
    let src = fixture(CHAT);
    let recorded: Recorded = serde_json::from_value(json(&src.join("generate.json"))).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tmp.path().join("model");
    import_folder(&src, &model_dir);
    let expanded = tmp.path().join("expanded");
    expand_2x(&model_dir, &expanded);
    let model = load_model::<B>(&expanded, &Default::default()).unwrap();
    let out = tmp.path().join("hf");
    let kept = HfMetadata::load(&expanded).unwrap().unwrap();
    export_hf_with_metadata(&model, &out, None, Some(&kept)).unwrap();

    let (eos, pad, max_new) = generation_settings(&out.join(GENERATION_CONFIG_FILE));
    let ours = greedy(&model, &recorded.tokens, &eos, pad, max_new);
    assert_eq!(ours, recorded.sequences);
    // The recorded rows stop at the source's eos (2) after different numbers of steps, the
    // shorter one padded: the settings matter.
    let prompt_len = recorded.tokens[0].len();
    let stops: Vec<usize> = recorded
        .sequences
        .iter()
        .map(|s| s[prompt_len..].iter().position(|&t| t == 2).unwrap())
        .collect();
    assert_ne!(stops[0], stops[1], "{:?}", recorded.sequences);
    // Stopping at the tokenizer's <|endoftext|> (0) alone, as an export without the kept ids
    // would, does not give transformers' sequences.
    assert_ne!(
        greedy(&model, &recorded.tokens, &[0], 0, max_new),
        recorded.sequences
    );
}
