//! Input corpora: text files, directories of them, JSONL files with a named text field, parquet
//! files with a named text column, and files from Hugging Face dataset repos (one file, or the
//! files matching glob patterns).
//!
//! - A text file (any extension but `.jsonl`/`.ndjson`) is one document.
//! - A `.jsonl`/`.ndjson` file holds one JSON object per line; the text is the string in the
//!   configured field; blank lines are skipped; every other line must be an object with that
//!   field as a string, or the whole input is refused with the file and line number.
//! - A `.parquet` file holds one document per row, the string in the configured column
//!   (`parquet_column`, default `text`); it is read row group by row group, never as a whole
//!   (see `input/parquet_text.rs`). Null and empty values are skipped. A missing column, a column
//!   that is not a top-level string, and a file that is not readable parquet are refused, naming
//!   the file, the column and what was found.
//! - A directory is walked recursively in sorted order; it contributes its `.txt`, `.text`,
//!   `.md`, `.jsonl`, `.ndjson` and `.parquet` files (hidden files and other extensions are
//!   skipped).
//! - A hub input with `files` patterns lists the repo's files at the revision (online through
//!   the hub API, offline from the cached snapshot), keeps those matching any pattern (see
//!   [`crate::hub::glob_match`]), and reads them in sorted order.
//!
//! **Invalid UTF-8**: by default ([`Utf8Policy::Error`]) a file with bytes that are not UTF-8 is
//! refused, naming the file, line and byte offset. With [`Utf8Policy::Replace`] each invalid
//! sequence becomes U+FFFD; the replacements are counted per input, logged as a warning and
//! recorded in the manifest.

mod parquet_text;

use crate::fsutil;
use crate::hub::{HubClient, HubError, RepoKind};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Errors of this module.
#[derive(Debug, Error)]
pub enum InputError {
    /// An input path does not exist.
    #[error("input {path} does not exist")]
    Missing {
        /// The path given.
        path: PathBuf,
    },
    /// An input could not be read.
    #[error("input {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file holds bytes that are not UTF-8 and the policy is `error`.
    #[error("input {path} is not valid UTF-8 at line {line}, byte offset {offset}; fix the file or set invalid_utf8 = \"replace\" to substitute U+FFFD")]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// 1-based line number of the first invalid byte.
        line: u64,
        /// Byte offset of the first invalid byte.
        offset: u64,
    },
    /// A JSONL line is not valid JSON.
    #[error("{path}:{line}: not valid JSON: {message}")]
    JsonlParse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The parser's message.
        message: String,
    },
    /// A JSONL line is not an object with the text field.
    #[error("{path}:{line}: no field {field:?} in this JSON line (set jsonl_field to the field that holds the text)")]
    MissingField {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The field looked for.
        field: String,
    },
    /// The text field of a JSONL line is not a string.
    #[error("{path}:{line}: field {field:?} is {found}, not a string")]
    FieldNotString {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The field.
        field: String,
        /// The JSON type found.
        found: &'static str,
    },
    /// A parquet file cannot be read: not parquet, truncated, corrupt, or an unsupported codec.
    #[error("input {path}: not a readable parquet file: {message}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The reader's message (with the row group and column when known).
        message: String,
    },
    /// A parquet file has no top-level column of the configured name.
    #[error("input {path}: no column {column:?}; its columns are: {found} (set parquet_column / --parquet-column to the column that holds the text)")]
    ParquetMissingColumn {
        /// The file.
        path: PathBuf,
        /// The column looked for.
        column: String,
        /// The file's top-level columns, comma-separated.
        found: String,
    },
    /// The configured parquet column does not hold strings (or is nested or repeated).
    #[error("input {path}: column {column:?} is {found}, not a string column")]
    ParquetColumnNotString {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
        /// Its type, in words.
        found: String,
    },
    /// A value of the parquet text column is not UTF-8 and the policy is `error`.
    #[error("input {path}: column {column:?}, row {row} (0-based) is not valid UTF-8; fix the file or set invalid_utf8 = \"replace\" to substitute U+FFFD")]
    ParquetInvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
        /// 0-based row number over the whole file.
        row: u64,
    },
    /// The inputs hold no text at all.
    #[error("empty corpus: the {split} inputs [{inputs}] hold no text (no files, or only empty documents)")]
    EmptyCorpus {
        /// `train` or `val`.
        split: String,
        /// The inputs as given.
        inputs: String,
    },
    /// A hub file could not be had.
    #[error(transparent)]
    Hub(#[from] HubError),
}

/// What to do with bytes that are not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Utf8Policy {
    /// Refuse the input, naming the file, line and byte offset (the default).
    #[default]
    Error,
    /// Replace each invalid sequence by U+FFFD, count the replacements and log them.
    Replace,
}

/// One input as written in a config: a path (file or directory), or a file of a Hugging Face
/// dataset repo (`{ hub = "owner/name", file = "train.jsonl", revision = "main" }`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InputSpec {
    /// A text file, JSONL file or directory.
    Path(PathBuf),
    /// A file of a Hugging Face dataset repository, fetched through the hub cache.
    Hub {
        /// Dataset repo id, `owner/name`.
        hub: String,
        /// File inside the repo.
        file: String,
        /// Branch, tag or commit (default `main`).
        #[serde(default = "default_revision")]
        revision: String,
    },
    /// The files of a Hugging Face dataset repository that match glob patterns
    /// (`{ hub = "owner/name", files = ["data/*.parquet"], revision = "main" }`), read in sorted
    /// order. `*` and `?` match within one path segment, `**` any number of segments.
    HubFiles {
        /// Dataset repo id, `owner/name`.
        hub: String,
        /// Glob patterns over the repo's paths; a file matching any of them is read.
        files: Vec<String>,
        /// Branch, tag or commit (default `main`).
        #[serde(default = "default_revision")]
        revision: String,
    },
}

fn default_revision() -> String {
    "main".to_string()
}

impl std::fmt::Display for InputSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputSpec::Path(p) => write!(f, "{}", p.display()),
            InputSpec::Hub {
                hub,
                file,
                revision,
            } => write!(f, "hf://datasets/{hub}@{revision}/{file}"),
            InputSpec::HubFiles {
                hub,
                files,
                revision,
            } => write!(f, "hf://datasets/{hub}@{revision}/{{{}}}", files.join(",")),
        }
    }
}

/// How a file's bytes become documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// The whole file is one document.
    Text,
    /// One JSON object per line.
    Jsonl,
    /// A parquet file: one document per row of the text column.
    Parquet,
}

/// A concrete file to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Where the bytes are.
    pub path: PathBuf,
    /// How to read them.
    pub kind: FileKind,
    /// Name recorded in manifests (the path, or an `hf://` reference).
    pub name: String,
}

/// A source file's identity as recorded in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRecord {
    /// The file (path or `hf://` reference).
    pub name: String,
    /// How it was read.
    pub kind: FileKind,
    /// Length in bytes.
    pub bytes: u64,
    /// SHA-256 of its contents.
    pub sha256: String,
}

/// How a file named explicitly (not found by a directory walk) is read, by its extension.
fn kind_of(path: &Path) -> FileKind {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "jsonl" | "ndjson" => FileKind::Jsonl,
        "parquet" => FileKind::Parquet,
        _ => FileKind::Text,
    }
}

fn walk(dir: &Path, out: &mut Vec<SourceFile>) -> Result<(), InputError> {
    let io = |source| InputError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            let ext = path
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            let kind = match ext.as_str() {
                "txt" | "text" | "md" => FileKind::Text,
                "jsonl" | "ndjson" => FileKind::Jsonl,
                "parquet" => FileKind::Parquet,
                _ => {
                    tracing::debug!(path = %path.display(), "skipped: not a text, JSONL or parquet file");
                    continue;
                }
            };
            out.push(SourceFile {
                name: path.display().to_string(),
                path,
                kind,
            });
        }
    }
    Ok(())
}

/// Turns input specs into the list of files to read, in order. Missing paths are refused;
/// hub files are fetched (or found in the cache) through `hub`; hub patterns that match no file
/// are refused with [`HubError::NoMatch`].
pub fn resolve(
    specs: &[InputSpec],
    hub: Option<&HubClient>,
) -> Result<Vec<SourceFile>, InputError> {
    let mut out = Vec::new();
    for spec in specs {
        match spec {
            InputSpec::Path(path) => {
                if path.is_dir() {
                    walk(path, &mut out)?;
                } else if path.is_file() {
                    out.push(SourceFile {
                        path: path.clone(),
                        kind: kind_of(path),
                        name: path.display().to_string(),
                    });
                } else {
                    return Err(InputError::Missing { path: path.clone() });
                }
            }
            InputSpec::Hub {
                hub: repo,
                file,
                revision,
            } => {
                let client = match hub {
                    Some(c) => c.clone(),
                    None => HubClient::from_env()?,
                };
                let path = client.fetch(repo, RepoKind::Dataset, revision, file)?;
                out.push(SourceFile {
                    path,
                    kind: kind_of(Path::new(file)),
                    name: spec.to_string(),
                });
            }
            InputSpec::HubFiles {
                hub: repo,
                files,
                revision,
            } => {
                let client = match hub {
                    Some(c) => c.clone(),
                    None => HubClient::from_env()?,
                };
                for file in client.matching_files(repo, RepoKind::Dataset, revision, files)? {
                    let path = client.fetch(repo, RepoKind::Dataset, revision, &file)?;
                    out.push(SourceFile {
                        path,
                        kind: kind_of(Path::new(&file)),
                        name: format!("hf://datasets/{repo}@{revision}/{file}"),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Records (name, kind, size, SHA-256) of `files`.
pub fn fingerprint(files: &[SourceFile]) -> Result<Vec<InputRecord>, InputError> {
    files
        .iter()
        .map(|f| {
            let (sha256, bytes) =
                fsutil::sha256_file(&f.path).map_err(|source| InputError::Io {
                    path: f.path.clone(),
                    source,
                })?;
            Ok(InputRecord {
                name: f.name.clone(),
                kind: f.kind,
                bytes,
                sha256,
            })
        })
        .collect()
}

/// Documents read from one file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileDocs {
    /// The documents, in file order; empty documents are dropped.
    pub docs: Vec<String>,
    /// Invalid UTF-8 sequences replaced by U+FFFD (always 0 under [`Utf8Policy::Error`]).
    pub replaced: u64,
    /// Bytes read (for parquet: bytes of text decoded, the file being compressed).
    pub bytes: u64,
}

/// Decodes `bytes` under `policy`. `line_base` is the 1-based line of `bytes[0]`, `offset_base`
/// its offset in the file; both are only used in errors.
fn decode(
    bytes: &[u8],
    policy: Utf8Policy,
    path: &Path,
    line_base: u64,
    offset_base: u64,
) -> Result<(String, u64), InputError> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok((s.to_string(), 0)),
        Err(e) => match policy {
            Utf8Policy::Error => {
                let at = e.valid_up_to();
                let line = line_base + bytes[..at].iter().filter(|&&b| b == b'\n').count() as u64;
                Err(InputError::InvalidUtf8 {
                    path: path.to_path_buf(),
                    line,
                    offset: offset_base + at as u64,
                })
            }
            Utf8Policy::Replace => {
                let replaced = bytes
                    .utf8_chunks()
                    .filter(|c| !c.invalid().is_empty())
                    .count() as u64;
                Ok((String::from_utf8_lossy(bytes).into_owned(), replaced))
            }
        },
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Reads one file's documents: the text in `jsonl_field` of JSONL lines, the values of
/// `parquet_column` of parquet rows.
pub fn read_file(
    file: &SourceFile,
    jsonl_field: &str,
    parquet_column: &str,
    policy: Utf8Policy,
) -> Result<FileDocs, InputError> {
    if file.kind == FileKind::Parquet {
        let out = parquet_text::read(&file.path, parquet_column, policy)?;
        if out.replaced > 0 {
            tracing::warn!(
                path = %file.path.display(),
                replaced = out.replaced,
                "invalid UTF-8 sequences replaced by U+FFFD"
            );
        }
        return Ok(out);
    }
    let bytes = std::fs::read(&file.path).map_err(|source| InputError::Io {
        path: file.path.clone(),
        source,
    })?;
    let mut out = FileDocs {
        bytes: bytes.len() as u64,
        ..FileDocs::default()
    };
    match file.kind {
        FileKind::Text => {
            let (text, replaced) = decode(&bytes, policy, &file.path, 1, 0)?;
            out.replaced = replaced;
            if !text.is_empty() {
                out.docs.push(text);
            }
        }
        // Read above, column by column, without loading the file.
        FileKind::Parquet => unreachable!("parquet files are read by parquet_text::read"),
        FileKind::Jsonl => {
            let mut offset = 0u64;
            for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
                let line = i as u64 + 1;
                let line_offset = offset;
                offset += raw.len() as u64 + 1;
                let (text, replaced) = decode(raw, policy, &file.path, line, line_offset)?;
                out.replaced += replaced;
                if text.trim().is_empty() {
                    continue;
                }
                let value: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| InputError::JsonlParse {
                        path: file.path.clone(),
                        line,
                        message: e.to_string(),
                    })?;
                let field = value
                    .as_object()
                    .and_then(|o| o.get(jsonl_field))
                    .ok_or_else(|| InputError::MissingField {
                        path: file.path.clone(),
                        line,
                        field: jsonl_field.to_string(),
                    })?;
                match field {
                    serde_json::Value::String(s) => {
                        if !s.is_empty() {
                            out.docs.push(s.clone());
                        }
                    }
                    other => {
                        return Err(InputError::FieldNotString {
                            path: file.path.clone(),
                            line,
                            field: jsonl_field.to_string(),
                            found: json_type(other),
                        })
                    }
                }
            }
        }
    }
    if out.replaced > 0 {
        tracing::warn!(
            path = %file.path.display(),
            replaced = out.replaced,
            "invalid UTF-8 sequences replaced by U+FFFD"
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn text_file(path: &Path) -> SourceFile {
        SourceFile {
            path: path.to_path_buf(),
            kind: kind_of(path),
            name: path.display().to_string(),
        }
    }

    #[test]
    fn directories_are_walked_sorted_and_filtered() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("b.txt"), "b").unwrap();
        fs::write(dir.path().join("a.md"), "a").unwrap();
        fs::write(dir.path().join("sub/c.jsonl"), "{\"text\":\"c\"}").unwrap();
        fs::write(dir.path().join("sub/d.parquet"), b"PAR1").unwrap();
        fs::write(dir.path().join("image.png"), [0u8, 1, 2]).unwrap();
        fs::write(dir.path().join(".hidden.txt"), "h").unwrap();
        let files = resolve(&[InputSpec::Path(dir.path().to_path_buf())], None).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.path.strip_prefix(dir.path()).unwrap().to_path_buf())
            .collect();
        assert_eq!(
            names,
            vec![
                PathBuf::from("a.md"),
                "b.txt".into(),
                "sub/c.jsonl".into(),
                "sub/d.parquet".into()
            ]
        );
        assert_eq!(files[2].kind, FileKind::Jsonl);
        assert_eq!(files[3].kind, FileKind::Parquet);
    }

    #[test]
    fn missing_path_is_refused_by_name() {
        let err = resolve(&[InputSpec::Path("/no/such/corpus.txt".into())], None).unwrap_err();
        assert!(matches!(err, InputError::Missing { .. }));
        assert!(err.to_string().contains("/no/such/corpus.txt"));
    }

    #[test]
    fn corrupt_parquet_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data.parquet");
        fs::write(&p, b"PAR1 this is not a parquet file PAR1").unwrap();
        let files = resolve(&[InputSpec::Path(p.clone())], None).unwrap();
        assert_eq!(files[0].kind, FileKind::Parquet);
        let err = read_file(&files[0], "text", "text", Utf8Policy::Error).unwrap_err();
        assert!(matches!(err, InputError::Parquet { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        assert!(msg.contains("not a readable parquet file"), "{msg}");
    }

    #[test]
    fn invalid_utf8_error_names_line_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("latin1.txt");
        fs::write(&p, b"line one\nline two caf\xe9\n").unwrap();
        let err = read_file(&text_file(&p), "text", "text", Utf8Policy::Error).unwrap_err();
        match &err {
            InputError::InvalidUtf8 { line, offset, .. } => {
                assert_eq!(*line, 2);
                assert_eq!(*offset, 21);
            }
            other => panic!("wrong error {other}"),
        }
        assert!(err.to_string().contains("latin1.txt"));
    }

    #[test]
    fn invalid_utf8_replace_counts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mixed.txt");
        fs::write(&p, b"a\xe9b\xff\xfec").unwrap();
        let docs = read_file(&text_file(&p), "text", "text", Utf8Policy::Replace).unwrap();
        assert_eq!(docs.replaced, 3);
        assert_eq!(docs.docs, vec!["a\u{fffd}b\u{fffd}\u{fffd}c".to_string()]);
    }

    #[test]
    fn jsonl_reads_field_and_skips_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        fs::write(
            &p,
            "{\"body\":\"one\",\"id\":1}\n\n{\"body\":\"two\"}\n{\"body\":\"\"}\n",
        )
        .unwrap();
        let docs = read_file(&text_file(&p), "body", "text", Utf8Policy::Error).unwrap();
        assert_eq!(docs.docs, vec!["one".to_string(), "two".to_string()]);
    }

    #[test]
    fn jsonl_errors_carry_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.jsonl");
        fs::write(&p, "{\"text\":\"ok\"}\n{\"other\":\"x\"}\n").unwrap();
        let err = read_file(&text_file(&p), "text", "text", Utf8Policy::Error).unwrap_err();
        assert!(matches!(err, InputError::MissingField { line: 2, .. }));
        assert!(err.to_string().contains("bad.jsonl:2"), "{err}");
        assert!(err.to_string().contains("\"text\""), "{err}");

        fs::write(
            &p,
            "{\"text\":\"ok\"}\n{\"text\":\"ok\"}\nnot json at all\n",
        )
        .unwrap();
        let err = read_file(&text_file(&p), "text", "text", Utf8Policy::Error).unwrap_err();
        assert!(matches!(err, InputError::JsonlParse { line: 3, .. }));
        assert!(err.to_string().contains("bad.jsonl:3"), "{err}");

        fs::write(&p, "{\"text\":5}\n").unwrap();
        let err = read_file(&text_file(&p), "text", "text", Utf8Policy::Error).unwrap_err();
        assert!(matches!(
            err,
            InputError::FieldNotString {
                line: 1,
                found: "a number",
                ..
            }
        ));

        fs::write(&p, "[1,2]\n").unwrap();
        let err = read_file(&text_file(&p), "text", "text", Utf8Policy::Error).unwrap_err();
        assert!(matches!(err, InputError::MissingField { line: 1, .. }));
    }

    #[test]
    fn jsonl_invalid_utf8_names_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("u.jsonl");
        fs::write(&p, b"{\"text\":\"a\"}\n{\"text\":\"\xff\"}\n").unwrap();
        let err = read_file(&text_file(&p), "text", "text", Utf8Policy::Error).unwrap_err();
        assert!(
            matches!(
                err,
                InputError::InvalidUtf8 {
                    line: 2,
                    offset: 22,
                    ..
                }
            ),
            "{err}"
        );
        let ok = read_file(&text_file(&p), "text", "text", Utf8Policy::Replace).unwrap();
        assert_eq!(ok.replaced, 1);
        assert_eq!(ok.docs[1], "\u{fffd}");
    }

    #[test]
    fn input_spec_from_toml_and_display() {
        #[derive(Deserialize)]
        struct T {
            inputs: Vec<InputSpec>,
        }
        let t: T = toml_like(r#"{"inputs": ["a/b.txt", {"hub": "acme/s", "file": "x.jsonl"}]}"#);
        assert_eq!(t.inputs[0], InputSpec::Path("a/b.txt".into()));
        assert_eq!(t.inputs[1].to_string(), "hf://datasets/acme/s@main/x.jsonl");
        let t: T = toml_like(
            r#"{"inputs": [{"hub": "acme/web", "files": ["data/*.parquet", "b/*"], "revision": "v1"}]}"#,
        );
        assert_eq!(
            t.inputs[0],
            InputSpec::HubFiles {
                hub: "acme/web".into(),
                files: vec!["data/*.parquet".into(), "b/*".into()],
                revision: "v1".into()
            }
        );
        assert_eq!(
            t.inputs[0].to_string(),
            "hf://datasets/acme/web@v1/{data/*.parquet,b/*}"
        );
    }

    fn toml_like<T: serde::de::DeserializeOwned>(json: &str) -> T {
        serde_json::from_str(json).unwrap()
    }
}
