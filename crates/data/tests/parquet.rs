//! `prepare` on parquet inputs written here with the `parquet` crate's writer: the same tokens as
//! the same texts in JSONL, across row groups and codecs; and the refusals (missing column,
//! non-string column, corrupt file), each naming the file and the column.

use common::write_strings;
use hyperclone_data::input::{FileKind, InputError};
use hyperclone_data::{prepare, InputSpec, PrepareError, PrepareOptions, TokenizerSpec};
use parquet::basic::Compression;
use parquet::data_type::Int64Type;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod common;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/gutenberg")
}

fn tokenizer() -> TokenizerSpec {
    TokenizerSpec::File(corpus().join("tokenizer-4096.json"))
}

/// Paragraphs of a shipped book: many documents of varied length.
fn paragraphs() -> Vec<String> {
    let text = fs::read_to_string(corpus().join("train/carroll-alice.txt")).unwrap();
    text.split("\n\n")
        .filter(|p| !p.trim().is_empty())
        .map(str::to_string)
        .collect()
}

use common::TEXT_SCHEMA;

fn opts(inputs: Vec<PathBuf>, out: PathBuf) -> PrepareOptions {
    let mut o = PrepareOptions::new(
        inputs.into_iter().map(InputSpec::Path).collect(),
        tokenizer(),
        out,
    );
    o.threads = 2;
    o
}

fn all_tokens(data: &hyperclone_data::PreparedData) -> Vec<u32> {
    let mut t = data.train.window(0, data.train.len() as usize).unwrap();
    t.extend(data.val.window(0, data.val.len() as usize).unwrap());
    t
}

fn rows(texts: &[String]) -> Vec<Option<&str>> {
    texts.iter().map(|p| Some(p.as_str())).collect()
}

#[test]
fn parquet_row_groups_give_the_tokens_of_the_same_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let paras = paragraphs();
    assert!(paras.len() > 300);
    let (a, b) = paras.split_at(paras.len() / 2);

    // The same texts as JSONL (two files, like the two parquet files below).
    let mut jsonl_paths = Vec::new();
    for (i, half) in [a, b].iter().enumerate() {
        let mut jsonl = String::new();
        for p in *half {
            jsonl.push_str(&serde_json::json!({ "text": p }).to_string());
            jsonl.push('\n');
        }
        let path = dir.path().join(format!("part-{i}.jsonl"));
        fs::write(&path, jsonl).unwrap();
        jsonl_paths.push(path);
    }
    let from_jsonl = prepare(&opts(jsonl_paths, dir.path().join("from-jsonl"))).unwrap();

    // Parquet: the first half in 3 row groups with snappy, the second in 2 with zstd (the two
    // codecs of hub datasets).
    let (a1, rest) = a.split_at(40);
    let (a2, a3) = rest.split_at(rest.len() / 2);
    let pq_a = dir.path().join("part-0.parquet");
    write_strings(
        &pq_a,
        TEXT_SCHEMA,
        &[rows(a1), rows(a2), rows(a3)],
        Compression::SNAPPY,
    );
    let (b1, b2) = b.split_at(b.len() / 3);
    let pq_b = dir.path().join("part-1.parquet");
    write_strings(
        &pq_b,
        TEXT_SCHEMA,
        &[rows(b1), rows(b2)],
        Compression::ZSTD(Default::default()),
    );
    let from_parquet = prepare(&opts(
        vec![pq_a.clone(), pq_b.clone()],
        dir.path().join("from-parquet"),
    ))
    .unwrap();

    let (mj, mp) = (&from_jsonl.manifest, &from_parquet.manifest);
    assert_eq!(mp.train.documents + mp.val.documents, paras.len() as u64);
    assert_eq!(mp.train.tokens, mj.train.tokens);
    assert_eq!(mp.val.tokens, mj.val.tokens);
    assert_eq!(all_tokens(&from_parquet), all_tokens(&from_jsonl));
    // The manifest names each input, read as parquet, and the column used.
    let names: Vec<&str> = mp.train.inputs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            pq_a.display().to_string().as_str(),
            pq_b.display().to_string().as_str()
        ]
    );
    assert!(mp.train.inputs.iter().all(|r| r.kind == FileKind::Parquet));
    assert_eq!(mp.parquet_column.as_deref(), Some("text"));
    assert_eq!(mj.parquet_column, None);

    // Deterministic: preparing again gives the same fingerprint and shards.
    let again = prepare(&opts(
        vec![pq_a.clone(), pq_b.clone()],
        dir.path().join("again"),
    ))
    .unwrap();
    assert_eq!(again.manifest.fingerprint, mp.fingerprint);
    assert_eq!(again.manifest.train.shards, mp.train.shards);

    // A directory walk picks the parquet files up too (and the JSONL ones beside them).
    let walked = prepare(&opts(
        vec![dir.path().to_path_buf()],
        dir.path().join("walked"),
    ));
    let walked = walked.unwrap();
    let kinds: Vec<FileKind> = walked
        .manifest
        .train
        .inputs
        .iter()
        .map(|r| r.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![
            FileKind::Jsonl,
            FileKind::Parquet,
            FileKind::Jsonl,
            FileKind::Parquet
        ]
    );
}

#[test]
fn other_column_names_nulls_and_empty_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web.parquet");
    write_strings(
        &path,
        "message doc { OPTIONAL BYTE_ARRAY content (STRING); }",
        &[
            vec![Some("first document"), None, Some("")],
            vec![None, Some("second document")],
        ],
        Compression::UNCOMPRESSED,
    );
    let mut o = opts(vec![path.clone()], dir.path().join("out"));
    o.val_fraction = 0.2;
    let err = prepare(&o).unwrap_err();
    assert!(
        matches!(
            err,
            PrepareError::Input(InputError::ParquetMissingColumn { .. })
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("\"text\"") && msg.contains("content"), "{msg}");

    o.parquet_column = "content".into();
    let data = prepare(&o).unwrap();
    // Nulls and empty strings are not documents.
    assert_eq!(data.manifest.train.documents, 2);
    assert_eq!(data.manifest.parquet_column.as_deref(), Some("content"));
    assert_eq!(
        data.manifest.train.bytes,
        ("first document".len() + "second document".len()) as u64
    );
}

#[test]
fn non_string_and_corrupt_parquet_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();

    // An integer column named `text`.
    let ints = dir.path().join("ints.parquet");
    {
        let schema = Arc::new(parse_message_type("message doc { REQUIRED INT64 text; }").unwrap());
        let file = fs::File::create(&ints).unwrap();
        let mut writer =
            SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::default())).unwrap();
        let mut group = writer.next_row_group().unwrap();
        let mut col = group.next_column().unwrap().unwrap();
        col.typed::<Int64Type>()
            .write_batch(&[1, 2, 3], None, None)
            .unwrap();
        col.close().unwrap();
        group.close().unwrap();
        writer.close().unwrap();
    }
    let err = prepare(&opts(vec![ints.clone()], dir.path().join("o1"))).unwrap_err();
    assert!(
        matches!(
            err,
            PrepareError::Input(InputError::ParquetColumnNotString { .. })
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&ints.display().to_string())
            && msg.contains("\"text\"")
            && msg.contains("INT64"),
        "{msg}"
    );

    // Bytes without a string annotation are binary, not text.
    let binary = dir.path().join("binary.parquet");
    write_strings(
        &binary,
        "message doc { REQUIRED BYTE_ARRAY text; }",
        &[vec![Some("abc")]],
        Compression::UNCOMPRESSED,
    );
    let err = prepare(&opts(vec![binary], dir.path().join("o2"))).unwrap_err();
    assert!(err.to_string().contains("binary"), "{err}");

    // A valid file cut short: its footer is gone.
    let good = dir.path().join("good.parquet");
    write_strings(
        &good,
        TEXT_SCHEMA,
        &[vec![Some("some text"); 50]],
        Compression::SNAPPY,
    );
    let bytes = fs::read(&good).unwrap();
    let cut = dir.path().join("cut.parquet");
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = prepare(&opts(vec![cut.clone()], dir.path().join("o3"))).unwrap_err();
    assert!(
        matches!(err, PrepareError::Input(InputError::Parquet { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains(&cut.display().to_string()),
        "{err}"
    );

    // A damaged data page inside an otherwise intact file: refused, never silently skipped.
    let mut damaged = bytes.clone();
    for b in &mut damaged[8..bytes.len() / 2] {
        *b = 0xAB;
    }
    let bad = dir.path().join("damaged.parquet");
    fs::write(&bad, &damaged).unwrap();
    let err = prepare(&opts(vec![bad.clone()], dir.path().join("o4"))).unwrap_err();
    assert!(
        matches!(err, PrepareError::Input(InputError::Parquet { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains(&bad.display().to_string()),
        "{err}"
    );
    for out in ["o1", "o2", "o3", "o4"] {
        assert!(!dir.path().join(out).exists(), "{out} written");
    }
}
