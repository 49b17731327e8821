//! `prepare` on the parquet files of a hub dataset chosen by a glob (`files = ["data/*.parquet"]`),
//! served from a local cache laid out as hf-hub expects (HF_HOME), with HF_HUB_OFFLINE=1: no
//! network. One test in this file because it sets process-wide environment variables.

mod common;

use common::{write_strings, TEXT_SCHEMA};
use hyperclone_data::input::FileKind;
use hyperclone_data::{prepare, HubError, InputSpec, PrepareError, PrepareOptions, TokenizerSpec};
use parquet::basic::Compression;
use std::fs;
use std::path::Path;

fn rows<'a>(texts: &[&'a str]) -> Vec<Option<&'a str>> {
    texts.iter().map(|p| Some(*p)).collect()
}

const COMMIT: &str = "fedcba9876543210fedcba9876543210fedcba98";

#[test]
fn hub_parquet_glob_from_populated_cache_offline() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/gutenberg");
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("hub/datasets--acme--web");
    fs::create_dir_all(repo.join("refs")).unwrap();
    fs::write(repo.join("refs/v1"), COMMIT).unwrap();
    let snap = repo.join("snapshots").join(COMMIT);
    fs::create_dir_all(snap.join("data")).unwrap();

    let text = fs::read_to_string(corpus.join("train/carroll-alice.txt")).unwrap();
    let paras: Vec<&str> = text
        .split("\n\n")
        .filter(|p| !p.trim().is_empty())
        .collect();
    let (first, second) = paras.split_at(paras.len() / 2);
    // Written in reverse name order, so that sorted order is not creation order.
    write_strings(
        &snap.join("data/train-00001.parquet"),
        TEXT_SCHEMA,
        &[rows(second)],
        Compression::ZSTD(Default::default()),
    );
    let (f1, f2) = first.split_at(first.len() / 2);
    write_strings(
        &snap.join("data/train-00000.parquet"),
        TEXT_SCHEMA,
        &[rows(f1), rows(f2)],
        Compression::SNAPPY,
    );
    // Files the pattern must leave out.
    fs::write(snap.join("README.md"), "# web\n").unwrap();
    fs::write(snap.join("data/notes.txt"), "not data\n").unwrap();

    std::env::set_var("HF_HOME", home.path());
    std::env::remove_var("HF_HUB_CACHE");
    std::env::set_var("HF_HUB_OFFLINE", "1");

    let tokenizer = TokenizerSpec::File(corpus.join("tokenizer-4096.json"));
    let hub_spec = |files: &[&str], revision: &str| InputSpec::HubFiles {
        hub: "acme/web".into(),
        files: files.iter().map(|s| s.to_string()).collect(),
        revision: revision.into(),
    };
    let opts = PrepareOptions::new(
        vec![hub_spec(&["data/*.parquet"], "v1")],
        tokenizer.clone(),
        home.path().join("prepared"),
    );
    let data = prepare(&opts).unwrap();
    let m = &data.manifest;
    let names: Vec<&str> = m.train.inputs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "hf://datasets/acme/web@v1/data/train-00000.parquet",
            "hf://datasets/acme/web@v1/data/train-00001.parquet",
        ]
    );
    assert!(m.train.inputs.iter().all(|r| r.kind == FileKind::Parquet));
    assert_eq!(m.train.documents + m.val.documents, paras.len() as u64);

    // Same tokens as the same two files given by path, in sorted order: both were used, in order.
    let local = PrepareOptions::new(
        vec![
            InputSpec::Path(snap.join("data/train-00000.parquet")),
            InputSpec::Path(snap.join("data/train-00001.parquet")),
        ],
        tokenizer.clone(),
        home.path().join("local"),
    );
    let local = prepare(&local).unwrap();
    assert_eq!(local.manifest.train.tokens, m.train.tokens);
    assert_eq!(local.manifest.train.shards, m.train.shards);
    assert_eq!(local.manifest.val.shards, m.val.shards);

    // A pattern that matches nothing: named with the repo and revision.
    let mut none = opts.clone();
    none.out = home.path().join("none");
    none.train = vec![hub_spec(&["data/*.arrow"], "v1")];
    let err = prepare(&none).unwrap_err();
    assert!(
        matches!(
            err,
            PrepareError::Input(hyperclone_data::InputError::Hub(HubError::NoMatch { .. }))
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("acme/web") && msg.contains("v1") && msg.contains("data/*.arrow"),
        "{msg}"
    );

    // A revision that was never downloaded, offline: NotCached naming the repo and the switch.
    let mut uncached = opts.clone();
    uncached.out = home.path().join("uncached");
    uncached.train = vec![hub_spec(&["data/*.parquet"], "v2")];
    let err = prepare(&uncached).unwrap_err();
    assert!(
        matches!(
            err,
            PrepareError::Input(hyperclone_data::InputError::Hub(HubError::NotCached { .. }))
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("acme/web") && msg.contains("v2") && msg.contains("HF_HUB_OFFLINE"),
        "{msg}"
    );
    assert!(!home.path().join("none").exists() && !home.path().join("uncached").exists());
}
