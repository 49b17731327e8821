//! `prepare` with a hub tokenizer and a hub dataset file, served from a local cache laid out as
//! hf-hub expects (HF_HOME), with HF_HUB_OFFLINE=1: no network. One test in this file because it
//! sets process-wide environment variables.

use hyperclone_data::{prepare, HubError, InputSpec, PrepareError, PrepareOptions, TokenizerSpec};
use std::fs;
use std::path::Path;

fn put(cache: &Path, folder: &str, revision: &str, file: &str, body: &[u8]) {
    let commit = "89abcdef0123456789abcdef0123456789abcdef";
    let repo = cache.join(folder);
    fs::create_dir_all(repo.join("refs")).unwrap();
    fs::write(repo.join("refs").join(revision), commit).unwrap();
    let snap = repo.join("snapshots").join(commit);
    fs::create_dir_all(snap.join(Path::new(file).parent().unwrap())).unwrap();
    fs::write(snap.join(file), body).unwrap();
}

#[test]
fn hub_tokenizer_and_dataset_from_populated_cache_offline() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/gutenberg");
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("hub");
    let tokenizer_bytes = fs::read(corpus.join("tokenizer-4096.json")).unwrap();
    put(
        &cache,
        "models--acme--gutenberg-bpe",
        "main",
        "tokenizer.json",
        &tokenizer_bytes,
    );
    let alice = fs::read_to_string(corpus.join("train/carroll-alice.txt")).unwrap();
    let mut jsonl = String::new();
    for para in alice.split("\n\n").filter(|p| !p.trim().is_empty()) {
        jsonl.push_str(&serde_json::json!({ "text": para }).to_string());
        jsonl.push('\n');
    }
    put(
        &cache,
        "datasets--acme--alice",
        "v1",
        "data/train.jsonl",
        jsonl.as_bytes(),
    );

    std::env::set_var("HF_HOME", home.path());
    std::env::remove_var("HF_HUB_CACHE");
    std::env::set_var("HF_HUB_OFFLINE", "1");

    let out = home.path().join("prepared");
    let opts = PrepareOptions::new(
        vec![InputSpec::Hub {
            hub: "acme/alice".into(),
            file: "data/train.jsonl".into(),
            revision: "v1".into(),
        }],
        TokenizerSpec::Hub {
            repo: "acme/gutenberg-bpe".into(),
            revision: "main".into(),
            file: "tokenizer.json".into(),
        },
        out.clone(),
    );
    let data = prepare(&opts).unwrap();
    assert_eq!(data.manifest.vocab_size, 4096);
    assert_eq!(
        data.manifest.tokenizer_hash,
        hyperclone_data::Tokenizer::from_file(&corpus.join("tokenizer-4096.json"))
            .unwrap()
            .hash()
    );
    assert_eq!(
        data.manifest.train.inputs[0].name,
        "hf://datasets/acme/alice@v1/data/train.jsonl"
    );
    assert!(data.manifest.train.documents > 100);

    // A repo that is not cached: a clear error naming the repo and HF_HUB_OFFLINE.
    let mut missing = opts.clone();
    missing.out = home.path().join("other");
    missing.tokenizer = TokenizerSpec::Hub {
        repo: "acme/not-downloaded".into(),
        revision: "main".into(),
        file: "tokenizer.json".into(),
    };
    let err = prepare(&missing).unwrap_err();
    assert!(
        matches!(err, PrepareError::Hub(HubError::NotCached { .. })),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("acme/not-downloaded") && msg.contains("HF_HUB_OFFLINE"),
        "{msg}"
    );
    assert!(!home.path().join("other").exists());
}
