//! `hf:owner/name@rev` sources served from a local Hugging Face cache laid out as hf-hub
//! expects (HF_HOME), with HF_HUB_OFFLINE=1: no network. One test in this file because it sets
//! process-wide environment variables.

use std::fs;
use std::path::Path;

use burn::backend::Flex;
use hyperclone_interop::{import_hf, resolve_model_source, HfMetadata, InteropError};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Puts `body` at `<cache>/<folder>/snapshots/<commit>/<file>` with `refs/<revision>`.
fn put(cache: &Path, folder: &str, revision: &str, file: &str, body: &[u8]) {
    let repo = cache.join(folder);
    fs::create_dir_all(repo.join("refs")).unwrap();
    fs::write(repo.join("refs").join(revision), COMMIT).unwrap();
    let snap = repo.join("snapshots").join(COMMIT);
    fs::create_dir_all(&snap).unwrap();
    fs::write(snap.join(file), body).unwrap();
}

#[test]
fn hub_sources_resolve_from_the_cache_offline() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama-tiny-gqa-tied");
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("hub");
    let folder = "models--acme--tiny-llama";
    for file in ["config.json", "model.safetensors"] {
        put(
            &cache,
            folder,
            "v1",
            file,
            &fs::read(fixture.join(file)).unwrap(),
        );
    }
    put(&cache, folder, "v1", "tokenizer.json", br#"{"model": {}}"#);
    // The generation and tokenizer settings that import keeps (no special_tokens_map.json nor
    // chat_template.jinja in this repo: they are optional).
    put(
        &cache,
        folder,
        "v1",
        "generation_config.json",
        &fs::read(fixture.join("generation_config.json")).unwrap(),
    );
    let tokenizer_config =
        br#"{"chat_template": "{{ messages[0]['content'] }}", "eos_token": "</s>"}"#;
    put(
        &cache,
        folder,
        "v1",
        "tokenizer_config.json",
        tokenizer_config,
    );
    // A repo with only pickled weights.
    let pickled = "models--acme--pickled";
    put(
        &cache,
        pickled,
        "main",
        "config.json",
        &fs::read(fixture.join("config.json")).unwrap(),
    );
    put(&cache, pickled, "main", "pytorch_model.bin", b"never read");

    std::env::set_var("HF_HOME", home.path());
    std::env::remove_var("HF_HUB_CACHE");
    std::env::set_var("HF_HUB_OFFLINE", "1");

    let source = resolve_model_source("hf:acme/tiny-llama@v1").unwrap();
    assert_eq!(
        source.dir,
        cache.join(folder).join("snapshots").join(COMMIT)
    );
    assert_eq!(source.hub, Some(("acme/tiny-llama".into(), "v1".into())));
    let (model, info) = import_hf::<Flex>(&source.dir, &Default::default()).unwrap();
    assert_eq!(info.tokenizer, Some(source.dir.join("tokenizer.json")));
    assert_eq!(model.config().kv_heads(), 2);
    let meta = HfMetadata::from_hf_dir(&source.dir).unwrap();
    assert_eq!(
        meta.file_names(),
        vec!["generation_config.json", "tokenizer_config.json"]
    );
    assert_eq!(
        meta.files["tokenizer_config.json"],
        tokenizer_config.to_vec()
    );
    assert_eq!(
        serde_json::to_string(&meta.token_ids).unwrap(),
        r#"{"bos_token_id":1,"eos_token_id":2,"pad_token_id":0}"#
    );

    // A revision that is not cached: the error names the repo, the revision and the switch.
    let e = resolve_model_source("hf:acme/tiny-llama@v2").unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, InteropError::Hub(_)), "{msg}");
    assert!(
        msg.contains("acme/tiny-llama") && msg.contains("v2") && msg.contains("HF_HUB_OFFLINE"),
        "{msg}"
    );

    // Only pytorch_model.bin: refused, explaining why pickles are not loaded.
    let e = resolve_model_source("hf:acme/pickled").unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, InteropError::BadSource { .. }), "{msg}");
    assert!(
        msg.contains("model.safetensors.index.json")
            && msg.contains("pytorch_model.bin")
            && msg.contains("execute code"),
        "{msg}"
    );
}
