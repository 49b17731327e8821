//! End-to-end tests of `prepare` on the shipped corpus and on bad inputs.

use hyperclone_data::input::InputError;
use hyperclone_data::shard::ShardError;
use hyperclone_data::{
    ensure_prepared, prepare, validation_batches, BatchSampler, InputSpec, PrepareError,
    PrepareOptions, PreparedData, Tokenizer, TokenizerError, TokenizerSpec, Utf8Policy,
};
use std::fs;
use std::path::{Path, PathBuf};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/gutenberg")
}

fn shipped_tokenizer() -> TokenizerSpec {
    TokenizerSpec::File(corpus().join("tokenizer-4096.json"))
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Options over a few small books (fast), val = one small book.
fn small_options(out: PathBuf) -> PrepareOptions {
    let train = [
        "carroll-alice.txt",
        "blake-poems.txt",
        "shakespeare-macbeth.txt",
    ]
    .iter()
    .map(|b| InputSpec::Path(corpus().join("train").join(b)))
    .collect();
    let mut o = PrepareOptions::new(train, shipped_tokenizer(), out);
    o.val = vec![InputSpec::Path(
        corpus().join("train/burgess-busterbrown.txt"),
    )];
    o.shard_tokens = 20_000;
    o
}

#[test]
fn shipped_corpus_prepares_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = PrepareOptions::new(
        vec![InputSpec::Path(corpus().join("train"))],
        shipped_tokenizer(),
        dir.path().join("gutenberg-4096"),
    );
    o.val = vec![InputSpec::Path(corpus().join("val"))];
    o.threads = 2;
    let data = prepare(&o).unwrap();
    let m = &data.manifest;
    assert_eq!(m.vocab_size, 4096);
    assert_eq!(m.eot_id, Some(0));
    assert_eq!(m.train.inputs.len(), 16);
    assert_eq!(m.val.inputs.len(), 2);
    assert_eq!(m.train.documents, 16);
    assert_eq!(m.val.documents, 2);
    assert_eq!(m.train.bytes + m.val.bytes, 10_944_585 + 786_813);
    // A 4096-token BPE packs English text at well over 3 bytes per token.
    let bytes_per_token = m.train.bytes as f64 / m.train.tokens as f64;
    assert!(
        bytes_per_token > 3.0 && bytes_per_token < 5.0,
        "{bytes_per_token}"
    );
    assert_eq!(data.train.len(), m.train.tokens);
    assert_eq!(
        names_in(&data.dir),
        vec!["manifest.json", "tokenizer.json", "train", "val"]
    );
    assert_eq!(
        names_in(dir.path()),
        vec!["gutenberg-4096"],
        "temporary directory left behind"
    );

    // The stream starts with <|endoftext|> and then the first book (sorted: austen-emma).
    let tok = data.tokenizer().unwrap();
    let emma = fs::read_to_string(corpus().join("train/austen-emma.txt")).unwrap();
    let n = tok.encode(&emma).unwrap().len();
    let head = data.train.window(0, n + 2).unwrap();
    assert_eq!(head[0], 0);
    assert_eq!(tok.decode(&head[1..n + 1]).unwrap(), emma);
    assert_eq!(head[n + 1], 0, "next document starts with <|endoftext|>");
    // The val stream is the two val books.
    let val_all = data.val.window(0, data.val.len() as usize).unwrap();
    let text = tok.decode(&val_all).unwrap();
    let persuasion = fs::read_to_string(corpus().join("val/austen-persuasion.txt")).unwrap();
    let thursday = fs::read_to_string(corpus().join("val/chesterton-thursday.txt")).unwrap();
    assert_eq!(
        text,
        format!("<|endoftext|>{persuasion}<|endoftext|>{thursday}")
    );

    // Batches work on it.
    let s = BatchSampler::new(4, 64, 7).unwrap();
    let b = s.random_batch(&data.train, 3).unwrap();
    assert_eq!(b.tokens.len(), 4 * 65);
    assert!(b.tokens.iter().all(|&t| t < 4096));
    let v = validation_batches(&data.val, 4, 64, 10).unwrap();
    assert_eq!(v.len(), 10);
}

#[test]
fn output_does_not_depend_on_threads_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = small_options(dir.path().join("a"));
    a.threads = 1;
    let mut b = small_options(dir.path().join("b"));
    b.threads = 2;
    let da = prepare(&a).unwrap();
    let db = prepare(&b).unwrap();
    assert!(
        da.manifest.train.shards.len() > 1,
        "expected several shards"
    );
    for rel in ["manifest.json", "tokenizer.json"] {
        assert_eq!(
            fs::read(da.dir.join(rel)).unwrap(),
            fs::read(db.dir.join(rel)).unwrap(),
            "{rel}"
        );
    }
    for s in &da.manifest.train.shards {
        assert_eq!(
            fs::read(da.dir.join(&s.file)).unwrap(),
            fs::read(db.dir.join(&s.file)).unwrap()
        );
    }
    let reopened = PreparedData::open(&da.dir).unwrap();
    assert_eq!(reopened.manifest, da.manifest);
    assert_eq!(
        reopened.train.window(0, 1000).unwrap(),
        db.train.window(0, 1000).unwrap()
    );
}

#[test]
fn ensure_prepared_reuses_and_notices_changes() {
    let dir = tempfile::tempdir().unwrap();
    let books = dir.path().join("books");
    fs::create_dir(&books).unwrap();
    fs::copy(
        corpus().join("train/carroll-alice.txt"),
        books.join("alice.txt"),
    )
    .unwrap();
    fs::copy(
        corpus().join("train/blake-poems.txt"),
        books.join("blake.txt"),
    )
    .unwrap();
    let mut o = PrepareOptions::new(
        vec![InputSpec::Path(books.clone())],
        shipped_tokenizer(),
        dir.path().join("out"),
    );
    o.val_fraction = 0.1;
    let first = ensure_prepared(&o).unwrap();
    assert_eq!(first.manifest.val.held_out_fraction, Some(0.1));
    let total = first.manifest.train.tokens + first.manifest.val.tokens;
    assert_eq!(
        first.manifest.val.tokens,
        (total as f64 * 0.1).round() as u64
    );
    let shard = first.dir.join(&first.manifest.train.shards[0].file);
    let mtime = fs::metadata(&shard).unwrap().modified().unwrap();
    drop(first);

    std::thread::sleep(std::time::Duration::from_millis(20));
    let again = ensure_prepared(&o).unwrap();
    assert_eq!(
        fs::metadata(&shard).unwrap().modified().unwrap(),
        mtime,
        "should have been reused"
    );

    // Same size, different content: detected by hash.
    let mut alice = fs::read(books.join("alice.txt")).unwrap();
    alice[100] = if alice[100] == b'x' { b'y' } else { b'x' };
    fs::write(books.join("alice.txt"), &alice).unwrap();
    let redone = ensure_prepared(&o).unwrap();
    assert_ne!(redone.manifest.fingerprint, again.manifest.fingerprint);
    assert_ne!(
        redone.manifest.train.inputs[0].sha256,
        again.manifest.train.inputs[0].sha256
    );

    // Another tokenizer: prepared again, with a different hash.
    o.tokenizer = TokenizerSpec::Gpt2;
    let gpt2 = ensure_prepared(&o).unwrap();
    assert_eq!(gpt2.manifest.vocab_size, 50257);
    assert_eq!(gpt2.manifest.eot_id, Some(50256));
    assert_ne!(gpt2.manifest.tokenizer_hash, redone.manifest.tokenizer_hash);
    assert_eq!(names_in(dir.path()), vec!["books", "out"]);
}

#[test]
fn trained_bpe_and_jsonl_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("docs.jsonl");
    let alice = fs::read_to_string(corpus().join("train/carroll-alice.txt")).unwrap();
    let mut lines = String::new();
    for para in alice.split("\n\n").filter(|p| !p.trim().is_empty()) {
        lines.push_str(&serde_json::json!({ "id": 1, "body": para }).to_string());
        lines.push('\n');
    }
    fs::write(&jsonl, &lines).unwrap();
    let mut o = PrepareOptions::new(
        vec![InputSpec::Path(jsonl.clone())],
        TokenizerSpec::TrainBpe { vocab_size: 600 },
        dir.path().join("out"),
    );
    o.jsonl_field = "body".into();
    let data = prepare(&o).unwrap();
    let n_docs = alice.split("\n\n").filter(|p| !p.trim().is_empty()).count() as u64;
    assert_eq!(data.manifest.train.documents, n_docs);
    assert_eq!(data.manifest.vocab_size, 600);
    let tok = data.tokenizer().unwrap();
    assert_eq!(tok.vocab_size(), 600);
    // Every document is preceded by <|endoftext|> (id 0); the val split is carved from the end.
    let train = data.train.window(0, data.train.len() as usize).unwrap();
    let val = data.val.window(0, data.val.len() as usize).unwrap();
    let eots = train.iter().chain(&val).filter(|&&t| t == 0).count() as u64;
    assert_eq!(eots, n_docs);
    let all: Vec<u32> = train.iter().chain(&val).copied().collect();
    let text = tok.decode(&all).unwrap();
    let expected: String = alice
        .split("\n\n")
        .filter(|p| !p.trim().is_empty())
        .map(|p| format!("<|endoftext|>{p}"))
        .collect();
    assert_eq!(text, expected);
}

/// Asserts that `parent` holds exactly `expected` (nothing half-written left behind).
fn assert_only(parent: &Path, expected: &[&str]) {
    assert_eq!(
        names_in(parent),
        expected,
        "unexpected leftovers in {}",
        parent.display()
    );
}

#[test]
fn missing_path_is_refused_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let o = PrepareOptions::new(
        vec![InputSpec::Path(dir.path().join("no-such-book.txt"))],
        shipped_tokenizer(),
        dir.path().join("out"),
    );
    let err = prepare(&o).unwrap_err();
    assert!(
        matches!(err, PrepareError::Input(InputError::Missing { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("no-such-book.txt"), "{err}");
    assert_only(dir.path(), &[]);
}

#[test]
fn empty_corpus_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let empty_dir = dir.path().join("empty");
    fs::create_dir(&empty_dir).unwrap();
    fs::write(empty_dir.join("notes.bin"), [1u8, 2, 3]).unwrap();
    let o = PrepareOptions::new(
        vec![InputSpec::Path(empty_dir.clone())],
        shipped_tokenizer(),
        dir.path().join("out"),
    );
    let err = prepare(&o).unwrap_err();
    assert!(
        matches!(err, PrepareError::Input(InputError::EmptyCorpus { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("empty"), "{err}");

    // Files that exist but hold no text.
    fs::write(empty_dir.join("blank.txt"), "").unwrap();
    fs::write(empty_dir.join("blank.jsonl"), "\n\n{\"text\": \"\"}\n").unwrap();
    let err = prepare(&o).unwrap_err();
    assert!(
        matches!(err, PrepareError::Input(InputError::EmptyCorpus { ref split, .. }) if split == "train"),
        "{err}"
    );
    assert!(err.to_string().contains("blank.txt"), "{err}");
    assert_only(dir.path(), &["empty"]);
}

#[test]
fn non_utf8_is_an_error_by_default_and_counted_when_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("latin1.txt");
    let mut bytes = b"An ordinary line.\nThe caf".to_vec();
    bytes.push(0xe9);
    bytes.extend_from_slice(b" was closed, and so was the other caf");
    bytes.push(0xe9);
    bytes.extend_from_slice(b".\n");
    fs::write(&f, &bytes).unwrap();
    let mut o = PrepareOptions::new(
        vec![InputSpec::Path(f.clone())],
        shipped_tokenizer(),
        dir.path().join("out"),
    );
    o.val_fraction = 0.2;
    let err = prepare(&o).unwrap_err();
    match &err {
        PrepareError::Input(InputError::InvalidUtf8 { line, offset, .. }) => {
            assert_eq!((*line, *offset), (2, 25));
        }
        other => panic!("wrong error: {other}"),
    }
    assert!(err.to_string().contains("latin1.txt"), "{err}");
    assert_only(dir.path(), &["latin1.txt"]);

    o.invalid_utf8 = Utf8Policy::Replace;
    let data = prepare(&o).unwrap();
    assert_eq!(data.manifest.train.replaced_invalid_utf8, 2);
    let tok = data.tokenizer().unwrap();
    let all: Vec<u32> = data
        .train
        .window(0, data.train.len() as usize)
        .unwrap()
        .into_iter()
        .chain(data.val.window(0, data.val.len() as usize).unwrap())
        .collect();
    assert_eq!(tok.decode(&all).unwrap().matches('\u{fffd}').count(), 2);
}

#[test]
fn bad_jsonl_lines_are_refused_with_line_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("corpus.jsonl");
    fs::write(
        &f,
        "{\"text\": \"fine\"}\n{\"text\": \"fine too\"}\n{\"content\": \"wrong field\"}\n",
    )
    .unwrap();
    let mut o = PrepareOptions::new(
        vec![InputSpec::Path(f.clone())],
        shipped_tokenizer(),
        dir.path().join("out"),
    );
    let err = prepare(&o).unwrap_err();
    assert!(
        matches!(
            err,
            PrepareError::Input(InputError::MissingField { line: 3, .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("corpus.jsonl:3"), "{err}");

    fs::write(&f, "{\"text\": \"fine\"}\n{\"text\": oops}\n").unwrap();
    let err = prepare(&o).unwrap_err();
    assert!(
        matches!(
            err,
            PrepareError::Input(InputError::JsonlParse { line: 2, .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("corpus.jsonl:2"), "{err}");

    o.jsonl_field = "content".into();
    fs::write(&f, "{\"content\": [\"not\", \"a string\"]}\n").unwrap();
    let err = prepare(&o).unwrap_err();
    assert!(
        matches!(
            err,
            PrepareError::Input(InputError::FieldNotString { line: 1, .. })
        ),
        "{err}"
    );
    assert_only(dir.path(), &["corpus.jsonl"]);
}

#[test]
fn damaged_shards_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = prepare(&small_options(dir.path().join("out"))).unwrap();
    let shard = data.dir.join(&data.manifest.train.shards[1].file);
    drop(data);
    let good = fs::read(&shard).unwrap();

    // Truncated.
    fs::write(&shard, &good[..good.len() - 2]).unwrap();
    let err = PreparedData::open(&dir.path().join("out")).unwrap_err();
    assert!(
        matches!(err, PrepareError::Shard(ShardError::LengthMismatch { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("shard-00001.bin"), "{err}");

    // One flipped bit in the tokens.
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x04;
    fs::write(&shard, &flipped).unwrap();
    let err = PreparedData::open(&dir.path().join("out")).unwrap_err();
    assert!(
        matches!(
            err,
            PrepareError::Shard(ShardError::ChecksumMismatch { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("shard-00001.bin"), "{err}");

    // Restored: opens again.
    fs::write(&shard, &good).unwrap();
    assert!(PreparedData::open(&dir.path().join("out")).is_ok());
}

#[test]
fn shard_from_another_tokenizer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mine = prepare(&small_options(dir.path().join("mine"))).unwrap();
    let mut other_opts = small_options(dir.path().join("other"));
    other_opts.tokenizer = TokenizerSpec::Gpt2;
    let other = prepare(&other_opts).unwrap();
    let target = mine.dir.join(&mine.manifest.train.shards[0].file);
    fs::copy(
        other.dir.join(&other.manifest.train.shards[0].file),
        &target,
    )
    .unwrap();
    let err = PreparedData::open(&mine.dir).unwrap_err();
    assert!(
        matches!(
            err,
            PrepareError::Shard(ShardError::TokenizerMismatch { .. })
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains(&other.manifest.tokenizer_hash),
        "{err}"
    );
    assert!(err.to_string().contains("shard-00000.bin"), "{err}");

    // A swapped tokenizer.json is refused too.
    let mine2 = prepare(&small_options(dir.path().join("mine2"))).unwrap();
    fs::copy(
        other.dir.join("tokenizer.json"),
        mine2.dir.join("tokenizer.json"),
    )
    .unwrap();
    let err = PreparedData::open(&mine2.dir).unwrap_err();
    assert!(
        matches!(err, PrepareError::TokenizerFileMismatch { .. }),
        "{err}"
    );

    // A run that expects another tokenizer refuses the data.
    let err = other
        .check_tokenizer_hash(&mine.manifest.tokenizer_hash)
        .unwrap_err();
    assert!(
        matches!(err, PrepareError::TokenizerHashMismatch { .. }),
        "{err}"
    );
    assert!(other
        .check_tokenizer_hash(&other.manifest.tokenizer_hash)
        .is_ok());
}

#[test]
fn vocab_larger_than_the_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = small_options(dir.path().join("out"));
    o.tokenizer = TokenizerSpec::Gpt2;
    let data = prepare(&o).unwrap();
    let err = data.check_model_vocab(4096).unwrap_err();
    assert!(
        matches!(
            err,
            PrepareError::VocabTooLarge {
                data_vocab: 50257,
                model_vocab: 4096,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("50257") && err.to_string().contains("4096"),
        "{err}"
    );
    assert!(data.check_model_vocab(50304).is_ok());
}

#[test]
fn failures_leave_an_existing_output_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = small_options(dir.path().join("out"));
    let data = prepare(&o).unwrap();
    let manifest_before = fs::read(data.dir.join("manifest.json")).unwrap();
    drop(data);

    // A bad val input: refused, old output intact, no temporary directories.
    let bad = dir.path().join("bad.jsonl");
    fs::write(&bad, "not json\n").unwrap();
    o.val = vec![InputSpec::Path(bad)];
    assert!(prepare(&o).is_err());
    assert_eq!(
        fs::read(dir.path().join("out/manifest.json")).unwrap(),
        manifest_before
    );
    assert!(PreparedData::open(&dir.path().join("out")).is_ok());
    assert_only(dir.path(), &["bad.jsonl", "out"]);

    // A tokenizer file that does not parse.
    let broken = dir.path().join("broken.json");
    fs::write(&broken, "{").unwrap();
    let mut o2 = small_options(dir.path().join("out"));
    o2.tokenizer = TokenizerSpec::File(broken);
    let err = prepare(&o2).unwrap_err();
    assert!(
        matches!(err, PrepareError::Tokenizer(TokenizerError::Parse { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("broken.json"), "{err}");
    assert_eq!(
        fs::read(dir.path().join("out/manifest.json")).unwrap(),
        manifest_before
    );

    // An output path that holds something else is never replaced.
    let precious = dir.path().join("precious");
    fs::create_dir(&precious).unwrap();
    fs::write(precious.join("thesis.txt"), "keep me").unwrap();
    let o3 = small_options(precious.clone());
    let err = prepare(&o3).unwrap_err();
    assert!(matches!(err, PrepareError::OutNotPrepared { .. }), "{err}");
    assert_eq!(
        fs::read_to_string(precious.join("thesis.txt")).unwrap(),
        "keep me"
    );
}

#[test]
fn not_prepared_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = PreparedData::open(dir.path()).unwrap_err();
    assert!(matches!(err, PrepareError::NotPrepared { .. }), "{err}");
    assert!(err.to_string().contains(&dir.path().display().to_string()));
}

#[test]
fn gpt2_tokenizer_is_available_offline() {
    let tok = Tokenizer::gpt2().unwrap();
    assert_eq!(tok.encode("Hello world").unwrap(), vec![15496, 995]);
}

#[test]
fn concurrent_ensure_prepared_calls_agree() {
    let dir = tempfile::tempdir().unwrap();
    let o = small_options(dir.path().join("shared"));
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3).map(|_| s.spawn(|| ensure_prepared(&o))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let fingerprints: Vec<String> = results
        .into_iter()
        .map(|r| r.unwrap().manifest.fingerprint)
        .collect();
    assert!(fingerprints.windows(2).all(|w| w[0] == w[1]));
    assert!(PreparedData::open(&dir.path().join("shared")).is_ok());
    assert_only(dir.path(), &["shared"]);
}

#[test]
fn a_corrupted_directory_is_prepared_again() {
    let dir = tempfile::tempdir().unwrap();
    let o = small_options(dir.path().join("out"));
    let data = prepare(&o).unwrap();
    let shard = data.dir.join(&data.manifest.val.shards[0].file);
    drop(data);
    let mut bytes = fs::read(&shard).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&shard, &bytes).unwrap();
    assert!(PreparedData::open(&dir.path().join("out")).is_err());
    // ensure_prepared notices (same fingerprint, but verification fails) and rebuilds.
    let again = ensure_prepared(&o).unwrap();
    assert!(PreparedData::open(&again.dir).is_ok());
    // prepare (--force) also replaces a damaged directory with the same fingerprint.
    fs::write(&shard, &bytes).unwrap();
    prepare(&o).unwrap();
    assert!(PreparedData::open(&dir.path().join("out")).is_ok());
    assert_only(dir.path(), &["out"]);
}
