//! Why a run file could not be read or written.

use std::path::PathBuf;

/// Everything that can go wrong with a run file; the message names the file (and line).
#[derive(Debug, thiserror::Error)]
pub enum RunFileError {
    /// The file could not be read, opened or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("reading", "appending to", ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line of a `metrics.jsonl` file is not a valid metrics record.
    #[error("{path} line {line}: invalid metrics record: {source}")]
    MetricsLine {
        /// The metrics file.
        path: PathBuf,
        /// 1-based line number of the bad line.
        line: usize,
        /// Why the line did not parse.
        #[source]
        source: serde_json::Error,
    },
    /// A metrics line has a key with a value that cannot be used (e.g. a negative or
    /// non-finite cumulative counter).
    #[error("{path} line {line}: key `{key}` has invalid value {value}")]
    MetricsValue {
        /// The metrics file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The offending key.
        key: &'static str,
        /// The offending value, as text.
        value: String,
    },
    /// A JSON file (`run_info.json`, `expand.json`) could not be parsed.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// Why it did not parse.
        #[source]
        source: serde_json::Error,
    },
}
