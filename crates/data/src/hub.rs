//! Files from the Hugging Face hub through `hf-hub`: a repo id + revision, cached in the standard
//! hub cache layout (`<cache>/models--org--name/{refs/<revision>, snapshots/<commit>/<file>}`).
//!
//! The cache directory is `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`;
//! the endpoint is `HF_ENDPOINT` when set. `hf-hub` itself does not read `HF_HUB_OFFLINE`, so it
//! is implemented here: when it is `1`/`true`/`yes`/`on`, only the cache is consulted. A cached
//! file is always used without any network access; a file that is missing and cannot be
//! downloaded gives an error that names the repo, the revision, the file and `HF_HUB_OFFLINE`.

use std::path::{Path, PathBuf};
use thiserror::Error;

/// The environment variable that turns the network off.
pub const OFFLINE_ENV: &str = "HF_HUB_OFFLINE";

/// Which kind of hub repository a file lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    /// A model repository (`models--…` in the cache).
    Model,
    /// A dataset repository (`datasets--…` in the cache).
    Dataset,
}

impl RepoKind {
    fn to_hf(self) -> hf_hub::RepoType {
        match self {
            RepoKind::Model => hf_hub::RepoType::Model,
            RepoKind::Dataset => hf_hub::RepoType::Dataset,
        }
    }

    fn label(self) -> &'static str {
        match self {
            RepoKind::Model => "model",
            RepoKind::Dataset => "dataset",
        }
    }
}

/// Errors of this module.
#[derive(Debug, Error)]
pub enum HubError {
    /// No cache directory could be found (no `HF_HUB_CACHE`, `HF_HOME` nor home directory).
    #[error("no Hugging Face cache directory: set HF_HOME or HF_HUB_CACHE")]
    NoCacheDir,
    /// Offline mode is on and the file is not in the cache.
    #[error("{what} is not in the Hugging Face cache {cache} and {OFFLINE_ENV} is set: run once with network access and {OFFLINE_ENV} unset, or place the file in that cache")]
    NotCached {
        /// The file, repo and revision, in words.
        what: String,
        /// The cache directory consulted.
        cache: PathBuf,
    },
    /// The file is not cached and downloading it failed (network unreachable, no such repo…).
    #[error("could not download {what} from {endpoint}: {message}. Without network access, populate the cache {cache} and set {OFFLINE_ENV}=1")]
    Download {
        /// The file, repo and revision, in words.
        what: String,
        /// The endpoint tried.
        endpoint: String,
        /// The cache directory.
        cache: PathBuf,
        /// The client's message.
        message: String,
    },
    /// A repo id, revision or file name is malformed.
    #[error("invalid hub reference {what} = {value:?}: {reason}")]
    BadReference {
        /// Which part (`repo`, `revision`, `file`).
        what: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
}

/// A client for hub files: a cache directory, an endpoint and the offline switch.
#[derive(Debug, Clone)]
pub struct HubClient {
    cache_dir: PathBuf,
    endpoint: Option<String>,
    offline: bool,
}

/// Whether an environment value turns a switch on (`1`, `true`, `yes`, `on`, any case).
fn truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

impl HubClient {
    /// A client configured from `HF_HUB_CACHE` / `HF_HOME`, `HF_ENDPOINT` and `HF_HUB_OFFLINE`.
    pub fn from_env() -> Result<Self, HubError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let cache_dir = if let Some(c) = var("HF_HUB_CACHE") {
            PathBuf::from(c)
        } else if let Some(h) = var("HF_HOME") {
            PathBuf::from(h).join("hub")
        } else if let Some(home) = var("HOME") {
            PathBuf::from(home).join(".cache/huggingface/hub")
        } else {
            return Err(HubError::NoCacheDir);
        };
        Ok(Self {
            cache_dir,
            endpoint: var("HF_ENDPOINT"),
            offline: var(OFFLINE_ENV).is_some_and(|v| truthy(&v)),
        })
    }

    /// A client over an explicit cache directory (the `hub/` folder itself).
    pub fn new(cache_dir: PathBuf, offline: bool) -> Self {
        Self {
            cache_dir,
            endpoint: None,
            offline,
        }
    }

    /// Uses another endpoint than `https://huggingface.co`.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// The cache directory.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Whether offline mode is on.
    pub fn offline(&self) -> bool {
        self.offline
    }

    fn endpoint(&self) -> String {
        self.endpoint
            .clone()
            .unwrap_or_else(|| "https://huggingface.co".to_string())
    }

    fn check(repo: &str, revision: &str, file: &str) -> Result<(), HubError> {
        let bad = |what, value: &str, reason| {
            Err(HubError::BadReference {
                what,
                value: value.to_string(),
                reason,
            })
        };
        if repo.is_empty() || repo.starts_with('/') || repo.contains("..") || repo.contains('\\') {
            return bad("repo", repo, "expected an id like `owner/name`");
        }
        if revision.is_empty() || revision.contains("..") {
            return bad("revision", revision, "expected a branch, tag or commit");
        }
        if file.is_empty() || file.starts_with('/') || file.split('/').any(|p| p == "..") {
            return bad("file", file, "expected a relative path inside the repo");
        }
        Ok(())
    }

    /// The cached copy of a file, if the cache has it (no network). A revision that is a commit
    /// hash is also found through `snapshots/<commit>/` directly.
    pub fn cached(
        &self,
        repo: &str,
        kind: RepoKind,
        revision: &str,
        file: &str,
    ) -> Option<PathBuf> {
        let hf_repo =
            hf_hub::Repo::with_revision(repo.to_string(), kind.to_hf(), revision.to_string());
        let folder = self.cache_dir.join(hf_repo.folder_name());
        let cache = hf_hub::Cache::new(self.cache_dir.clone());
        if let Some(p) = cache.repo(hf_repo).get(file) {
            return Some(p);
        }
        let direct = folder.join("snapshots").join(revision).join(file);
        direct.is_file().then_some(direct)
    }

    /// The local path of `file` in `repo` at `revision`: from the cache when present, otherwise
    /// downloaded into the cache (unless offline mode is on).
    pub fn fetch(
        &self,
        repo: &str,
        kind: RepoKind,
        revision: &str,
        file: &str,
    ) -> Result<PathBuf, HubError> {
        Self::check(repo, revision, file)?;
        if let Some(p) = self.cached(repo, kind, revision, file) {
            tracing::debug!(repo, revision, file, path = %p.display(), "hub file from cache");
            return Ok(p);
        }
        let what = format!(
            "{file} of {} repo {repo} at revision {revision}",
            kind.label()
        );
        if self.offline {
            return Err(HubError::NotCached {
                what,
                cache: self.cache_dir.clone(),
            });
        }
        let download_err = |message: String| HubError::Download {
            what: what.clone(),
            endpoint: self.endpoint(),
            cache: self.cache_dir.clone(),
            message,
        };
        tracing::info!(repo, revision, file, endpoint = %self.endpoint(), "downloading from the hub");
        let api = hf_hub::api::sync::ApiBuilder::new()
            .with_cache_dir(self.cache_dir.clone())
            .with_endpoint(self.endpoint())
            .with_progress(false)
            .build()
            .map_err(|e| download_err(e.to_string()))?;
        let hf_repo =
            hf_hub::Repo::with_revision(repo.to_string(), kind.to_hf(), revision.to_string());
        api.repo(hf_repo)
            .download(file)
            .map_err(|e| download_err(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// Lays out `<cache>/<prefix>--org--name/{refs/main, snapshots/<commit>/<file>}` as hf-hub does.
    fn populate(cache: &Path, folder: &str, file: &str, body: &[u8]) -> PathBuf {
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let repo = cache.join(folder);
        fs::create_dir_all(repo.join("refs")).unwrap();
        fs::write(repo.join("refs/main"), commit).unwrap();
        let snap = repo.join("snapshots").join(commit);
        fs::create_dir_all(&snap).unwrap();
        fs::write(snap.join(file), body).unwrap();
        snap.join(file)
    }

    #[test]
    fn populated_cache_works_offline() {
        let dir = tempfile::tempdir().unwrap();
        let expected = populate(dir.path(), "models--acme--tiny", "tokenizer.json", b"{}");
        let client = HubClient::new(dir.path().to_path_buf(), true);
        let got = client
            .fetch("acme/tiny", RepoKind::Model, "main", "tokenizer.json")
            .unwrap();
        assert_eq!(got, expected);
        assert_eq!(fs::read(got).unwrap(), b"{}");
        // A commit-hash revision finds the snapshot directly.
        let by_commit = client
            .fetch(
                "acme/tiny",
                RepoKind::Model,
                "0123456789abcdef0123456789abcdef01234567",
                "tokenizer.json",
            )
            .unwrap();
        assert_eq!(by_commit, expected);
    }

    #[test]
    fn dataset_repos_use_their_own_folder() {
        let dir = tempfile::tempdir().unwrap();
        populate(
            dir.path(),
            "datasets--acme--stories",
            "train.jsonl",
            b"{\"text\":\"a\"}\n",
        );
        let client = HubClient::new(dir.path().to_path_buf(), true);
        assert!(client
            .fetch("acme/stories", RepoKind::Dataset, "main", "train.jsonl")
            .is_ok());
        let err = client
            .fetch("acme/stories", RepoKind::Model, "main", "train.jsonl")
            .unwrap_err();
        assert!(matches!(err, HubError::NotCached { .. }));
    }

    #[test]
    fn offline_miss_names_repo_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let client = HubClient::new(dir.path().to_path_buf(), true);
        let err = client
            .fetch("acme/missing", RepoKind::Model, "v1.0", "tokenizer.json")
            .unwrap_err();
        assert!(matches!(err, HubError::NotCached { .. }));
        let msg = err.to_string();
        assert!(msg.contains("acme/missing"), "{msg}");
        assert!(msg.contains("v1.0"), "{msg}");
        assert!(msg.contains("HF_HUB_OFFLINE"), "{msg}");
    }

    #[test]
    fn unreachable_endpoint_names_repo_and_env() {
        // Port 9 on loopback: nothing listens, the connection is refused at once.
        let dir = tempfile::tempdir().unwrap();
        let client =
            HubClient::new(dir.path().to_path_buf(), false).with_endpoint("http://127.0.0.1:9");
        let err = client
            .fetch("acme/elsewhere", RepoKind::Model, "main", "tokenizer.json")
            .unwrap_err();
        assert!(matches!(err, HubError::Download { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("acme/elsewhere"), "{msg}");
        assert!(msg.contains("HF_HUB_OFFLINE"), "{msg}");
    }

    #[test]
    fn bad_references_are_refused() {
        let client = HubClient::new(PathBuf::from("/nonexistent"), true);
        for (repo, rev, file) in [("", "main", "a"), ("a/b", "", "a"), ("a/b", "main", "../x")] {
            let err = client.fetch(repo, RepoKind::Model, rev, file).unwrap_err();
            assert!(matches!(err, HubError::BadReference { .. }), "{err}");
        }
    }

    #[test]
    fn truthy_values() {
        for v in ["1", "true", "TRUE", "yes", "on"] {
            assert!(truthy(v));
        }
        for v in ["0", "false", "", "no"] {
            assert!(!truthy(v));
        }
    }
}
