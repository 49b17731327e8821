//! The Hugging Face files that decide how a model generates and chats, kept from `import` to
//! `export`: the special token ids of `config.json` (`bos_token_id`, `eos_token_id`,
//! `pad_token_id`) and, byte for byte, `generation_config.json`, `tokenizer_config.json` (with
//! its `chat_template`), `special_tokens_map.json` and `chat_template.jinja` (where transformers
//! ≥ 4.50 saves the template).
//!
//! `config.json` is written anew on export from our model's configuration (an expansion changes
//! its widths), so only its three token-id keys are carried, as a small typed record
//! ([`SpecialTokenIds`], `token_ids.json`). The record tells an absent key from an explicit
//! `null`: transformers fills an absent key with the architecture's default (Llama's 1 and 2,
//! GPT-2's 50256), so the export leaves out what the source left out. The other files do not
//! depend on the architecture and are copied verbatim: they hold keys of every transformers
//! version and templates whose whitespace matters, which a typed copy would drop or reformat.
//! The JSON ones must be JSON objects: a malformed one is refused on import, naming the file,
//! rather than copied into an export that transformers would then fail to load.
//!
//! In one of our model folders they live in [`METADATA_DIR`] (`hf_metadata/`), which
//! `hyperclone expand` and training with `--init-from` carry along, so that an expanded or
//! further-trained model exports with its source's ids, generation settings and chat template.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use hyperclone_model::checkpoint::write_file_atomically;
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::error::{io_err, InteropError};
use crate::import::CONFIG_FILE;

/// Folder of a model folder holding the kept Hugging Face metadata.
pub const METADATA_DIR: &str = "hf_metadata";
/// The special token ids of the source's `config.json` ([`SpecialTokenIds`]), in [`METADATA_DIR`].
pub const TOKEN_IDS_FILE: &str = "token_ids.json";
/// transformers' generation defaults (`bos`/`eos`/`pad` ids, `max_new_tokens`, sampling…).
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
/// The tokenizer's settings: special tokens by name, `chat_template`, `model_max_length`…
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// The special tokens by role (older transformers versions write it).
pub const SPECIAL_TOKENS_MAP_FILE: &str = "special_tokens_map.json";
/// The chat template as a file of its own (transformers ≥ 4.50 saves it there).
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";
/// The files copied verbatim from a Hugging Face folder, when it has them.
pub const VERBATIM_FILES: [&str; 4] = [
    GENERATION_CONFIG_FILE,
    TOKENIZER_CONFIG_FILE,
    SPECIAL_TOKENS_MAP_FILE,
    CHAT_TEMPLATE_FILE,
];
/// The `config.json` keys kept in [`SpecialTokenIds`].
pub const TOKEN_ID_KEYS: [&str; 3] = ["bos_token_id", "eos_token_id", "pad_token_id"];

/// The value of a token-id key: one id, or a list (`eos_token_id` often is one, e.g. Llama 3's
/// end-of-text and end-of-turn tokens). Signed, because some configs say `-1` for "none".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(i64),
    /// Several ids (generation stops at any of them).
    Many(Vec<i64>),
}

/// One token-id key of `config.json` as the source had it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TokenIdKey {
    /// The key is not there: transformers uses the architecture's default.
    #[default]
    Absent,
    /// `null`: no such token.
    Null,
    /// The id(s).
    Ids(TokenIds),
}

impl TokenIdKey {
    /// Whether the key is absent (left out when serialised).
    pub fn is_absent(&self) -> bool {
        matches!(self, TokenIdKey::Absent)
    }

    /// The JSON value to write, `None` for an absent key.
    pub fn to_json(&self) -> Option<Value> {
        match self {
            TokenIdKey::Absent => None,
            TokenIdKey::Null => Some(Value::Null),
            TokenIdKey::Ids(ids) => Some(serde_json::to_value(ids).expect("ids serialise")),
        }
    }
}

impl Serialize for TokenIdKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            // Skipped by `skip_serializing_if`; `null` should it ever be written on its own.
            TokenIdKey::Absent | TokenIdKey::Null => s.serialize_none(),
            TokenIdKey::Ids(ids) => ids.serialize(s),
        }
    }
}

/// The special token ids of a source `config.json` (`token_ids.json` in [`METADATA_DIR`]): only
/// the keys the source has are written.
///
/// Read back with [`SpecialTokenIds::from_kept`] rather than serde, so that a damaged file is
/// refused naming the key and value, as a bad `config.json` is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SpecialTokenIds {
    /// `bos_token_id`.
    #[serde(default, skip_serializing_if = "TokenIdKey::is_absent")]
    pub bos_token_id: TokenIdKey,
    /// `eos_token_id` (one id or a list).
    #[serde(default, skip_serializing_if = "TokenIdKey::is_absent")]
    pub eos_token_id: TokenIdKey,
    /// `pad_token_id`.
    #[serde(default, skip_serializing_if = "TokenIdKey::is_absent")]
    pub pad_token_id: TokenIdKey,
}

impl SpecialTokenIds {
    /// The three keys of a parsed `config.json` (`path` is named in errors). A value that is
    /// not an integer, a list of integers or `null` is refused naming the key and the value.
    pub fn from_config(config: &Value, path: &Path) -> Result<Self, InteropError> {
        let key = |name: &'static str| -> Result<TokenIdKey, InteropError> {
            let Some(value) = config.get(name) else {
                return Ok(TokenIdKey::Absent);
            };
            let bad = || InteropError::BadTokenId {
                path: path.to_path_buf(),
                key: name,
                value: value.to_string(),
            };
            Ok(match value {
                Value::Null => TokenIdKey::Null,
                Value::Number(n) => TokenIdKey::Ids(TokenIds::One(n.as_i64().ok_or_else(bad)?)),
                Value::Array(items) => TokenIdKey::Ids(TokenIds::Many(
                    items
                        .iter()
                        .map(Value::as_i64)
                        .collect::<Option<Vec<i64>>>()
                        .ok_or_else(bad)?,
                )),
                _ => return Err(bad()),
            })
        };
        Ok(Self {
            bos_token_id: key("bos_token_id")?,
            eos_token_id: key("eos_token_id")?,
            pad_token_id: key("pad_token_id")?,
        })
    }

    /// Parses a kept `token_ids.json` (`path` is named in errors): a JSON object with only
    /// [`TOKEN_ID_KEYS`], each valued as in [`from_config`](Self::from_config). Anything else
    /// is refused rather than exported: a mistyped key would silently become "absent", and
    /// transformers would then apply its architecture default instead of the source's id.
    pub fn from_kept(text: &str, path: &Path) -> Result<Self, InteropError> {
        let bad = |reason: String| InteropError::BadJson {
            path: path.to_path_buf(),
            reason,
        };
        let value: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let Value::Object(map) = &value else {
            return Err(bad(format!(
                "expected a JSON object, found {}",
                json_kind(&value)
            )));
        };
        if let Some(unknown) = map.keys().find(|k| !TOKEN_ID_KEYS.contains(&k.as_str())) {
            return Err(bad(format!(
                "unknown key {unknown:?}; the keys are {}",
                TOKEN_ID_KEYS.join(", ")
            )));
        }
        Self::from_config(&value, path)
    }

    /// The keys in [`TOKEN_ID_KEYS`] order.
    pub fn keys(&self) -> [(&'static str, &TokenIdKey); 3] {
        [
            ("bos_token_id", &self.bos_token_id),
            ("eos_token_id", &self.eos_token_id),
            ("pad_token_id", &self.pad_token_id),
        ]
    }

    /// Writes the keys into a `config.json` object: present ones set to the source's value,
    /// absent ones removed (so that transformers' default applies as it did to the source).
    pub fn apply(&self, config: &mut serde_json::Map<String, Value>) {
        for (name, key) in self.keys() {
            match key.to_json() {
                Some(value) => {
                    config.insert(name.to_string(), value);
                }
                None => {
                    config.remove(name);
                }
            }
        }
    }
}

/// The kept Hugging Face metadata of a model: its source's special token ids and the
/// [`VERBATIM_FILES`] the source has, byte for byte.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HfMetadata {
    /// The token-id keys of the source's `config.json`.
    pub token_ids: SpecialTokenIds,
    /// File name (one of [`VERBATIM_FILES`]) → its bytes.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// Reads `dir/name` if it is there; a JSON file must hold a JSON object.
fn read_verbatim(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, InteropError> {
    let path = dir.join(name);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path)(e)),
    };
    if name.ends_with(".json") {
        let bad = |reason: String| InteropError::BadJson {
            path: path.clone(),
            reason,
        };
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(_)) => {}
            Ok(other) => {
                return Err(bad(format!(
                    "expected a JSON object, found {}",
                    json_kind(&other)
                )))
            }
            Err(e) => return Err(bad(e.to_string())),
        }
    }
    Ok(Some(bytes))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl HfMetadata {
    /// Reads it from a Hugging Face model folder: the token-id keys of its `config.json` and
    /// whichever [`VERBATIM_FILES`] it has. A malformed JSON file or token id is refused,
    /// naming the file (and key).
    pub fn from_hf_dir(dir: &Path) -> Result<Self, InteropError> {
        let config_path = dir.join(CONFIG_FILE);
        let text = fs::read_to_string(&config_path).map_err(io_err(&config_path))?;
        let config: Value = serde_json::from_str(&text).map_err(|e| InteropError::BadJson {
            path: config_path.clone(),
            reason: e.to_string(),
        })?;
        let token_ids = SpecialTokenIds::from_config(&config, &config_path)?;
        Ok(Self {
            token_ids,
            files: Self::read_files(dir)?,
        })
    }

    fn read_files(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, InteropError> {
        let mut files = BTreeMap::new();
        for name in VERBATIM_FILES {
            if let Some(bytes) = read_verbatim(dir, name)? {
                files.insert(name.to_string(), bytes);
            }
        }
        Ok(files)
    }

    /// Reads `model_dir/`[`METADATA_DIR`]; `Ok(None)` when the folder has none (a model trained
    /// here, or imported before the metadata was kept).
    pub fn load(model_dir: &Path) -> Result<Option<Self>, InteropError> {
        let dir = model_dir.join(METADATA_DIR);
        if !dir.is_dir() {
            return Ok(None);
        }
        let ids_path = dir.join(TOKEN_IDS_FILE);
        let text = fs::read_to_string(&ids_path).map_err(io_err(&ids_path))?;
        let token_ids = SpecialTokenIds::from_kept(&text, &ids_path)?;
        let files = Self::read_files(&dir)?;
        Ok(Some(Self { token_ids, files }))
    }

    /// Writes `model_dir/`[`METADATA_DIR`]`/` (`token_ids.json` and the verbatim files). Meant
    /// for a model folder being built (inside `write_dir_atomically`): the files are written
    /// one by one.
    pub fn save(&self, model_dir: &Path) -> Result<(), InteropError> {
        let dir = model_dir.join(METADATA_DIR);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut ids = serde_json::to_vec_pretty(&self.token_ids).expect("token ids serialise");
        ids.push(b'\n');
        write_file_atomically(&dir.join(TOKEN_IDS_FILE), &ids)?;
        self.write_files(&dir)
    }

    /// Writes the verbatim files into `dir`, under their own names.
    pub fn write_files(&self, dir: &Path) -> Result<(), InteropError> {
        for (name, bytes) in &self.files {
            write_file_atomically(&dir.join(name), bytes)?;
        }
        Ok(())
    }

    /// The names of the verbatim files held.
    pub fn file_names(&self) -> Vec<String> {
        self.files.keys().cloned().collect()
    }

    /// A JSON summary for provenance records: the token ids and the file names.
    pub fn summary(&self) -> Value {
        serde_json::json!({
            "token_ids": self.token_ids,
            "files": self.file_names(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(text: &str) -> Result<SpecialTokenIds, InteropError> {
        SpecialTokenIds::from_config(
            &serde_json::from_str(text).unwrap(),
            Path::new("m/config.json"),
        )
    }

    #[test]
    fn absent_null_single_and_list_ids_are_told_apart_and_round_trip() {
        let t = ids(r#"{"bos_token_id": 1, "eos_token_id": [2, 32007], "pad_token_id": null}"#)
            .unwrap();
        assert_eq!(t.bos_token_id, TokenIdKey::Ids(TokenIds::One(1)));
        assert_eq!(
            t.eos_token_id,
            TokenIdKey::Ids(TokenIds::Many(vec![2, 32007]))
        );
        assert_eq!(t.pad_token_id, TokenIdKey::Null);
        let text = serde_json::to_string(&t).unwrap();
        assert_eq!(
            text,
            r#"{"bos_token_id":1,"eos_token_id":[2,32007],"pad_token_id":null}"#
        );
        assert_eq!(
            SpecialTokenIds::from_kept(&text, Path::new("token_ids.json")).unwrap(),
            t
        );

        // Absent keys stay absent (transformers' architecture default then applies).
        let t = ids(r#"{"eos_token_id": -1}"#).unwrap();
        assert_eq!(t.bos_token_id, TokenIdKey::Absent);
        assert_eq!(t.eos_token_id, TokenIdKey::Ids(TokenIds::One(-1)));
        let text = serde_json::to_string(&t).unwrap();
        assert_eq!(text, r#"{"eos_token_id":-1}"#);
        assert_eq!(
            SpecialTokenIds::from_kept(&text, Path::new("token_ids.json")).unwrap(),
            t
        );

        // apply() sets present keys and removes absent ones.
        let mut config = serde_json::json!({"bos_token_id": 0, "eos_token_id": 0, "x": 1});
        t.apply(config.as_object_mut().unwrap());
        assert_eq!(config, serde_json::json!({"eos_token_id": -1, "x": 1}));
    }

    #[test]
    fn malformed_ids_are_refused_naming_file_key_and_value() {
        for (text, key, value) in [
            (r#"{"eos_token_id": "2"}"#, "eos_token_id", r#""2""#),
            (r#"{"bos_token_id": 1.5}"#, "bos_token_id", "1.5"),
            (
                r#"{"eos_token_id": [2, "x"]}"#,
                "eos_token_id",
                r#"[2,"x"]"#,
            ),
            (r#"{"pad_token_id": {}}"#, "pad_token_id", "{}"),
        ] {
            let e = ids(text).unwrap_err();
            assert!(matches!(e, InteropError::BadTokenId { .. }), "{e}");
            let msg = e.to_string();
            assert!(
                msg.contains("m/config.json") && msg.contains(key) && msg.contains(value),
                "{msg}"
            );
        }
        // A kept token_ids.json is held to the same rules, and to its three keys.
        let kept = |text: &str| {
            SpecialTokenIds::from_kept(text, Path::new("m/hf_metadata/token_ids.json"))
                .unwrap_err()
                .to_string()
        };
        let e = kept(r#"{"eos_token": 2}"#);
        assert!(
            e.contains("m/hf_metadata/token_ids.json") && e.contains("unknown key \"eos_token\""),
            "{e}"
        );
        let e = kept(r#"{"eos_token_id": "2"}"#);
        assert!(
            e.contains("token_ids.json") && e.contains("eos_token_id = \"2\""),
            "{e}"
        );
        assert!(kept("[1]").contains("found an array"));
        assert!(kept("{").contains("token_ids.json"));
    }

    #[test]
    fn folders_without_metadata_load_as_none_and_bad_json_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(HfMetadata::load(tmp.path()).unwrap(), None);
        std::fs::write(tmp.path().join(CONFIG_FILE), r#"{"eos_token_id": 2}"#).unwrap();
        std::fs::write(tmp.path().join(CHAT_TEMPLATE_FILE), "{{ x }}\n").unwrap();
        let meta = HfMetadata::from_hf_dir(tmp.path()).unwrap();
        assert_eq!(meta.file_names(), vec![CHAT_TEMPLATE_FILE.to_string()]);
        std::fs::write(
            tmp.path().join(GENERATION_CONFIG_FILE),
            "{\"eos_token_id\": ",
        )
        .unwrap();
        let e = HfMetadata::from_hf_dir(tmp.path()).unwrap_err();
        assert!(matches!(e, InteropError::BadJson { .. }), "{e}");
        assert!(e.to_string().contains(GENERATION_CONFIG_FILE), "{e}");
        std::fs::write(tmp.path().join(GENERATION_CONFIG_FILE), "[1, 2]").unwrap();
        let e = HfMetadata::from_hf_dir(tmp.path()).unwrap_err().to_string();
        assert!(
            e.contains(GENERATION_CONFIG_FILE) && e.contains("an array"),
            "{e}"
        );
    }
}
