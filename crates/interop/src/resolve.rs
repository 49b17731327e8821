//! Where a model comes from: `hf:owner/name[@revision]` (fetched into the Hugging Face cache
//! through [`HubClient`], offline mode included) or a local folder.

use std::path::{Path, PathBuf};

use hyperclone_data::{HubClient, HubError, RepoKind};

use crate::error::InteropError;
use crate::import::{CONFIG_FILE, TOKENIZER_FILE};
use crate::metadata::VERBATIM_FILES;
use crate::tensors::{INDEX_FILE, WEIGHTS_FILE};

/// Prefix of hub model sources.
pub const HF_PREFIX: &str = "hf:";

/// A model source resolved to a local folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedSource {
    /// The folder holding `config.json` and the weights (a hub cache snapshot for hub sources).
    pub dir: PathBuf,
    /// `(repo, revision)` for hub sources.
    pub hub: Option<(String, String)>,
}

/// Splits `hf:owner/name[@revision]` into repo and revision (default `main`); `None` when the
/// spec does not start with `hf:`.
pub fn parse_hub_spec(spec: &str) -> Option<(String, String)> {
    let rest = spec.strip_prefix(HF_PREFIX)?;
    Some(match rest.rsplit_once('@') {
        Some((repo, rev)) => (repo.to_string(), rev.to_string()),
        None => (rest.to_string(), "main".to_string()),
    })
}

/// Resolves `spec` with a client configured from the environment (`HF_HOME`,
/// `HF_HUB_CACHE`, `HF_ENDPOINT`, `HF_HUB_OFFLINE`); see [`resolve_model_source_with`].
pub fn resolve_model_source(spec: &str) -> Result<ResolvedSource, InteropError> {
    if parse_hub_spec(spec).is_some() {
        resolve_model_source_with(spec, &HubClient::from_env()?)
    } else {
        resolve_local(spec)
    }
}

fn resolve_local(spec: &str) -> Result<ResolvedSource, InteropError> {
    let dir = Path::new(spec);
    if !dir.is_dir() {
        return Err(InteropError::BadSource {
            spec: spec.to_string(),
            reason: "not an existing folder, and not of the form hf:owner/name[@revision]".into(),
        });
    }
    Ok(ResolvedSource {
        dir: dir.to_path_buf(),
        hub: None,
    })
}

/// Resolves `spec`: a local folder is returned as is; `hf:owner/name[@revision]` fetches
/// `config.json`, `model.safetensors` (or `model.safetensors.index.json` and every shard it
/// lists) and, if the repo has them, `tokenizer.json` and the generation/tokenizer files that
/// import keeps ([`VERBATIM_FILES`]) into the cache, and returns the snapshot folder. Pickled
/// weights are never fetched.
pub fn resolve_model_source_with(
    spec: &str,
    hub: &HubClient,
) -> Result<ResolvedSource, InteropError> {
    let Some((repo, rev)) = parse_hub_spec(spec) else {
        return resolve_local(spec);
    };
    let fetch = |file: &str| hub.fetch(&repo, RepoKind::Model, &rev, file);
    let config = fetch(CONFIG_FILE)?;
    let dir = config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| InteropError::BadSource {
            spec: spec.to_string(),
            reason: format!("{} has no parent folder", config.display()),
        })?;
    let in_dir = |path: PathBuf, file: &str| -> Result<(), InteropError> {
        // hf-hub puts every file of one revision in the same snapshot folder.
        if path.parent() == Some(dir.as_path()) {
            Ok(())
        } else {
            Err(InteropError::BadSource {
                spec: spec.to_string(),
                reason: format!(
                    "{file} resolved to {}, outside the snapshot folder {} of config.json (did the revision move between downloads?)",
                    path.display(),
                    dir.display()
                ),
            })
        }
    };
    match fetch(WEIGHTS_FILE) {
        Ok(path) => in_dir(path, WEIGHTS_FILE)?,
        Err(single_err) => {
            let index = fetch(INDEX_FILE).map_err(|index_err| InteropError::BadSource {
                spec: spec.to_string(),
                reason: format!(
                    "neither {WEIGHTS_FILE} ({single_err}) nor {INDEX_FILE} ({index_err}) could be fetched; repos with only pickled weights (pytorch_model.bin) are not supported because unpickling can execute code: use a revision with safetensors"
                ),
            })?;
            let text = std::fs::read_to_string(&index).map_err(crate::error::io_err(&index))?;
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| InteropError::BadJson {
                    path: index.clone(),
                    reason: e.to_string(),
                })?;
            let mut shards: Vec<String> = value
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| InteropError::BadJson {
                    path: index.clone(),
                    reason: "missing key weight_map".into(),
                })?
                .values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            shards.sort();
            shards.dedup();
            in_dir(index, INDEX_FILE)?;
            for shard in shards {
                let path = fetch(&shard)?;
                in_dir(path, &shard)?;
            }
        }
    }
    match fetch(TOKENIZER_FILE) {
        Ok(path) => in_dir(path, TOKENIZER_FILE)?,
        Err(e @ (HubError::NotCached { .. } | HubError::Download { .. })) => {
            tracing::warn!(repo, revision = rev, "no tokenizer.json: {e}");
        }
        Err(e) => return Err(e.into()),
    }
    // Optional: how the model generates and chats (kept by import, written back by export).
    // Many repos lack some of them, so a missing one is only noted.
    for file in VERBATIM_FILES {
        match fetch(file) {
            Ok(path) => in_dir(path, file)?,
            Err(e @ (HubError::NotCached { .. } | HubError::Download { .. })) => {
                tracing::info!(repo, revision = rev, "no {file}: {e}");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(ResolvedSource {
        dir,
        hub: Some((repo, rev)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_specs_are_parsed() {
        assert_eq!(
            parse_hub_spec("hf:openai-community/gpt2"),
            Some(("openai-community/gpt2".into(), "main".into()))
        );
        assert_eq!(
            parse_hub_spec("hf:a/b@v1.0"),
            Some(("a/b".into(), "v1.0".into()))
        );
        assert_eq!(parse_hub_spec("runs/x/final"), None);
        let e = resolve_model_source("/definitely/not/here")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/definitely/not/here"), "{e}");
    }
}
