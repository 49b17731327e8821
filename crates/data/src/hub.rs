//! Files from the Hugging Face hub through `hf-hub`: a repo id + revision, cached in the standard
//! hub cache layout (`<cache>/models--org--name/{refs/<revision>, snapshots/<commit>/<file>}`).
//!
//! The cache directory is `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`;
//! the endpoint is `HF_ENDPOINT` when set. `hf-hub` itself does not read `HF_HUB_OFFLINE`, so it
//! is implemented here: when it is `1`/`true`/`yes`/`on`, only the cache is consulted. A cached
//! file is always used without any network access; a file that is missing and cannot be
//! downloaded gives an error that names the repo, the revision, the file and `HF_HUB_OFFLINE`.
//!
//! [`HubClient::matching_files`] lists a repo's files at a revision and keeps those matching glob
//! patterns ([`glob_match`]): online through the hub's repo-info API, offline (or when that API
//! cannot be reached) from the cached snapshot of that revision.

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
    /// No file of the repo at the revision matches the patterns.
    #[error("no file of {what} matches {patterns} (the revision has {files} file(s){listing})")]
    NoMatch {
        /// The repo and revision, in words (`dataset repo owner/name at revision main`); one
        /// string rather than three keeps this error, and every error that holds it, small.
        what: String,
        /// The patterns, comma-separated.
        patterns: String,
        /// How many files the revision has.
        files: usize,
        /// Where the listing came from (`, listed from the cache …`), or empty.
        listing: String,
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

/// Whether `path` (segments separated by `/`) matches the glob `pattern`: within a segment `*`
/// matches any characters and `?` exactly one; a segment `**` matches any number of whole
/// segments (none included). Everything else matches itself. Written here rather than taken
/// from `globset`, whose regex engine would be a large build for this one use.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').collect();
    let segs: Vec<&str> = path.split('/').collect();
    match_segments(&pat, &segs)
}

fn match_segments(pat: &[&str], segs: &[&str]) -> bool {
    match pat.split_first() {
        None => segs.is_empty(),
        Some((&"**", rest)) => (0..=segs.len()).any(|skip| match_segments(rest, &segs[skip..])),
        Some((p, rest)) => match segs.split_first() {
            Some((s, more)) => {
                match_segment(p.as_bytes(), s.as_bytes()) && match_segments(rest, more)
            }
            None => false,
        },
    }
}

/// `*`/`?` matching of one segment, over bytes: `?` is one byte, which is one character for the
/// ASCII names of hub files; iterative with backtracking to the last `*`, so linear-ish.
fn match_segment(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == s[i]) {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// All files under `dir`, as `/`-separated paths relative to it, sorted. Hidden entries are
/// kept: a repo may hold `.gitattributes`, and patterns decide.
fn list_tree(dir: &Path) -> std::io::Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            // `is_dir`/`is_file` follow the snapshot's symlinks into `blobs/`.
            if path.is_dir() {
                walk(root, &path, out)?;
            } else if path.is_file() {
                if let Ok(rel) = path.strip_prefix(root) {
                    let parts: Vec<String> = rel
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect();
                    out.push(parts.join("/"));
                }
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
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

    /// The cached snapshot folder of `repo` at `revision` (through `refs/<revision>`, or a
    /// commit hash directly), if there is one.
    pub fn cached_snapshot(&self, repo: &str, kind: RepoKind, revision: &str) -> Option<PathBuf> {
        let hf_repo =
            hf_hub::Repo::with_revision(repo.to_string(), kind.to_hf(), revision.to_string());
        let folder = self.cache_dir.join(hf_repo.folder_name());
        let commit = std::fs::read_to_string(folder.join("refs").join(revision))
            .map(|c| c.trim().to_string())
            .unwrap_or_else(|_| revision.to_string());
        if commit.is_empty() || commit.contains('/') || commit.contains("..") {
            return None;
        }
        let snap = folder.join("snapshots").join(commit);
        snap.is_dir().then_some(snap)
    }

    /// The files of `repo` at `revision` matching any of `patterns` (see [`glob_match`]), sorted
    /// and without duplicates. The list comes from the hub's API when online; offline, or when
    /// the API cannot be reached, from the cached snapshot of that revision (which holds only the
    /// files downloaded before). Errors: [`HubError::NotCached`] offline without a snapshot,
    /// [`HubError::Download`] online without network nor snapshot, [`HubError::NoMatch`] when
    /// nothing matches.
    pub fn matching_files(
        &self,
        repo: &str,
        kind: RepoKind,
        revision: &str,
        patterns: &[String],
    ) -> Result<Vec<String>, HubError> {
        Self::check(repo, revision, "x")?;
        if patterns.is_empty() {
            return Err(HubError::BadReference {
                what: "files",
                value: String::new(),
                reason: "give at least one pattern",
            });
        }
        for p in patterns {
            if p.is_empty() || p.starts_with('/') || p.split('/').any(|s| s == "..") {
                return Err(HubError::BadReference {
                    what: "files",
                    value: p.clone(),
                    reason: "expected a relative path pattern inside the repo",
                });
            }
        }
        let what = format!(
            "the file list of {} repo {repo} at revision {revision}",
            kind.label()
        );
        let from_cache = || -> Option<(Vec<String>, String)> {
            let snap = self.cached_snapshot(repo, kind, revision)?;
            let files = list_tree(&snap).ok()?;
            Some((files, format!(", listed from the cache {}", snap.display())))
        };
        let (all, listing) = if self.offline {
            from_cache().ok_or_else(|| HubError::NotCached {
                what: what.clone(),
                cache: self.cache_dir.clone(),
            })?
        } else {
            match self.list_online(repo, kind, revision) {
                Ok(files) => (files, String::new()),
                Err(message) => match from_cache() {
                    Some(cached) => {
                        tracing::warn!(
                            repo,
                            revision,
                            "hub file list unavailable ({message}); using the cached snapshot"
                        );
                        cached
                    }
                    None => {
                        return Err(HubError::Download {
                            what,
                            endpoint: self.endpoint(),
                            cache: self.cache_dir.clone(),
                            message,
                        })
                    }
                },
            }
        };
        let mut matched: Vec<String> = all
            .iter()
            .filter(|f| patterns.iter().any(|p| glob_match(p, f)))
            .cloned()
            .collect();
        matched.sort();
        matched.dedup();
        if matched.is_empty() {
            return Err(HubError::NoMatch {
                what: format!("{} repo {repo} at revision {revision}", kind.label()),
                patterns: patterns.join(", "),
                files: all.len(),
                listing,
            });
        }
        Ok(matched)
    }

    /// The repo's file list at `revision` from the hub API, or the client's message.
    fn list_online(
        &self,
        repo: &str,
        kind: RepoKind,
        revision: &str,
    ) -> Result<Vec<String>, String> {
        tracing::info!(repo, revision, endpoint = %self.endpoint(), "listing hub files");
        let api = hf_hub::api::sync::ApiBuilder::new()
            .with_cache_dir(self.cache_dir.clone())
            .with_endpoint(self.endpoint())
            .with_progress(false)
            .build()
            .map_err(|e| e.to_string())?;
        let hf_repo =
            hf_hub::Repo::with_revision(repo.to_string(), kind.to_hf(), revision.to_string());
        let info = api.repo(hf_repo).info().map_err(|e| e.to_string())?;
        Ok(info.siblings.into_iter().map(|s| s.rfilename).collect())
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
    fn glob_matches_segments() {
        assert!(glob_match("data/*.parquet", "data/train-00000.parquet"));
        assert!(!glob_match("data/*.parquet", "data/sub/train.parquet"));
        assert!(!glob_match("data/*.parquet", "other/train.parquet"));
        assert!(!glob_match("data/*.parquet", "data/train.jsonl"));
        assert!(glob_match(
            "data/train-0000?.parquet",
            "data/train-00001.parquet"
        ));
        assert!(!glob_match(
            "data/train-0000?.parquet",
            "data/train-00010.parquet"
        ));
        assert!(glob_match("**/*.parquet", "a/b/c.parquet"));
        assert!(glob_match("**/*.parquet", "c.parquet"));
        assert!(!glob_match(
            "sample/**/0*_0000.parquet",
            "sample/10BT/000_00000.parquet"
        ));
        assert!(glob_match(
            "sample/**/0*_0000.parquet",
            "sample/10BT/000_0000.parquet"
        ));
        assert!(glob_match("a*b*c", "abc") && glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("exact.txt", "exact.txt") && !glob_match("exact.txt", "exact.txt2"));
    }

    #[test]
    fn cached_listing_matches_sorted_and_no_match_is_named() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["data/b.parquet", "data/a.parquet", "README.md"] {
            let p = dir
                .path()
                .join("datasets--acme--web/snapshots/0123456789abcdef0123456789abcdef01234567")
                .join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"x").unwrap();
        }
        fs::create_dir_all(dir.path().join("datasets--acme--web/refs")).unwrap();
        fs::write(
            dir.path().join("datasets--acme--web/refs/main"),
            "0123456789abcdef0123456789abcdef01234567",
        )
        .unwrap();
        let client = HubClient::new(dir.path().to_path_buf(), true);
        let pats = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let got = client
            .matching_files(
                "acme/web",
                RepoKind::Dataset,
                "main",
                &pats(&["data/*.parquet", "data/a.*"]),
            )
            .unwrap();
        assert_eq!(got, vec!["data/a.parquet", "data/b.parquet"]);
        let err = client
            .matching_files(
                "acme/web",
                RepoKind::Dataset,
                "main",
                &pats(&["train/*.parquet"]),
            )
            .unwrap_err();
        assert!(matches!(err, HubError::NoMatch { files: 3, .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("acme/web") && msg.contains("main") && msg.contains("train/*.parquet"),
            "{msg}"
        );
        // Offline without a snapshot of that revision: NotCached, naming HF_HUB_OFFLINE.
        let err = client
            .matching_files("acme/web", RepoKind::Dataset, "v2", &pats(&["data/*"]))
            .unwrap_err();
        assert!(matches!(err, HubError::NotCached { .. }), "{err}");
        assert!(err.to_string().contains("HF_HUB_OFFLINE") && err.to_string().contains("v2"));
        // Online, the API unreachable and nothing cached: a download error naming the repo.
        let online =
            HubClient::new(dir.path().to_path_buf(), false).with_endpoint("http://127.0.0.1:9");
        let err = online
            .matching_files("acme/elsewhere", RepoKind::Dataset, "main", &pats(&["*"]))
            .unwrap_err();
        assert!(matches!(err, HubError::Download { .. }), "{err}");
        assert!(err.to_string().contains("acme/elsewhere"), "{err}");
        // Online, the API unreachable but the revision cached: the cached listing is used.
        let got = online
            .matching_files(
                "acme/web",
                RepoKind::Dataset,
                "main",
                &pats(&["data/b.parquet"]),
            )
            .unwrap();
        assert_eq!(got, vec!["data/b.parquet"]);
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
