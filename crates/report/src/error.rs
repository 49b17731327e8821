//! The error type of the report crate.

use std::path::PathBuf;

/// Everything that can go wrong while reading an experiment directory or writing its report.
///
/// The message names the file (and line); the underlying cause is the error's `source()`.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file or directory could not be read, created, written or renamed.
    #[error("{action} {path}")]
    Io {
        /// What was being done ("reading", "writing", "renaming to", ...).
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A run file (`metrics.jsonl`, ...) could not be read or holds an invalid line.
    #[error(transparent)]
    RunFile(#[from] hyperclone_runfiles::RunFileError),
    /// A JSON summary file (`run_info.json`, `expand.json`) could not be parsed.
    #[error("{path}: invalid JSON")]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// Why it did not parse.
        #[source]
        source: serde_json::Error,
    },
    /// The directory holds neither stage directories (`small/`, `large/`, ...) nor
    /// `seed-<N>/` directories.
    #[error("{dir}: not an experiment directory (no small/, expand/, large/, baseline/ or seed-<N>/ found)")]
    NotAnExperiment {
        /// The directory given.
        dir: PathBuf,
    },
    /// A plot could not be drawn or encoded.
    #[error("plot {path}: {message}")]
    Plot {
        /// The plot file being written.
        path: PathBuf,
        /// What the plotting library reported.
        message: String,
    },
}

impl ReportError {
    /// Shorthand for [`ReportError::Io`].
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        ReportError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
