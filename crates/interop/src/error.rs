//! The one error type of the interop crate.

use std::path::PathBuf;

use hyperclone_data::HubError;
use hyperclone_model::checkpoint::CheckpointError;
use hyperclone_model::ConfigError;

/// Why a Hugging Face checkpoint could not be imported, exported or fetched.
#[derive(Debug, thiserror::Error)]
pub enum InteropError {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `config.json`, the shard index or a kept metadata file (`generation_config.json`,
    /// `tokenizer_config.json`, `special_tokens_map.json`, `hf_metadata/token_ids.json`) is not
    /// valid JSON of the expected shape.
    #[error("{path}: {reason}")]
    BadJson {
        /// The JSON file.
        path: PathBuf,
        /// The parser's message (it names the key).
        reason: String,
    },
    /// A special token id key (`bos_token_id`, `eos_token_id`, `pad_token_id`) of a source's
    /// `config.json`, or of the copy kept in `hf_metadata/token_ids.json`, is not an integer,
    /// a list of integers or `null`: exporting it would give transformers a config it rejects
    /// or misreads.
    #[error(
        "{path}: {key} = {value}: expected a token id (an integer), a list of token ids or null"
    )]
    BadTokenId {
        /// The `config.json` or `token_ids.json` file.
        path: PathBuf,
        /// The key at fault.
        key: &'static str,
        /// Its value, as written in JSON.
        value: String,
    },
    /// `config.json` names an architecture or `model_type` that we do not model.
    #[error("{path}: unsupported architecture: model_type = {model_type:?}, architectures = {architectures:?}; supported: model_type \"gpt2\" (GPT2LMHeadModel) and \"llama\" (LlamaForCausalLM)")]
    UnsupportedArchitecture {
        /// The `config.json` file.
        path: PathBuf,
        /// Its `model_type` (empty when absent).
        model_type: String,
        /// Its `architectures` list.
        architectures: Vec<String>,
    },
    /// A `config.json` key has a value that our model cannot represent.
    #[error("{path}: {key} = {value}: {reason}")]
    UnsupportedConfig {
        /// The `config.json` file.
        path: PathBuf,
        /// The key at fault.
        key: &'static str,
        /// Its value, as written in JSON.
        value: String,
        /// What is supported instead.
        reason: &'static str,
    },
    /// The configuration derived from `config.json` fails our own validation.
    #[error("{path}: the model it describes is invalid: {source}")]
    BadConfig {
        /// The `config.json` file.
        path: PathBuf,
        /// The validation error (names the field and value).
        source: ConfigError,
    },
    /// The folder has only pickled PyTorch weights, which are never loaded.
    #[error("{dir} holds only pickled PyTorch weights ({files:?}); they are not loaded because unpickling can execute arbitrary code. Convert the checkpoint to safetensors (model.safetensors, e.g. with transformers' `save_pretrained(..., safe_serialization=True)`) or pick a repo revision that has one")]
    PickleRefused {
        /// The model folder.
        dir: PathBuf,
        /// The pickle files found.
        files: Vec<String>,
    },
    /// The folder has neither `model.safetensors` nor `model.safetensors.index.json`.
    #[error("{dir}: no model.safetensors or model.safetensors.index.json")]
    NoWeights {
        /// The model folder.
        dir: PathBuf,
    },
    /// A safetensors file could not be parsed or written.
    #[error("{path}: safetensors: {reason}")]
    Safetensors {
        /// The weights file.
        path: PathBuf,
        /// The library's message.
        reason: String,
    },
    /// A tensor has an element type we cannot convert to f32.
    #[error("{path}: tensor {name} has dtype {dtype}; supported: F32, F16, BF16, F64")]
    UnsupportedDtype {
        /// The weights file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// Its dtype.
        dtype: String,
    },
    /// A tensor that the architecture needs is absent.
    #[error("{dir}: tensor {name} (shape {expected:?}) is missing from the checkpoint")]
    MissingTensor {
        /// The model folder.
        dir: PathBuf,
        /// The Hugging Face tensor name.
        name: String,
        /// The shape it should have.
        expected: Vec<usize>,
    },
    /// A tensor does not have the shape that `config.json` implies.
    #[error("{path}: tensor {name} has shape {found:?}, expected {expected:?} from config.json")]
    ShapeMismatch {
        /// The weights file holding it.
        path: PathBuf,
        /// The Hugging Face tensor name.
        name: String,
        /// The shape `config.json` implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// The checkpoint holds tensors that the architecture does not use.
    #[error("{dir}: unexpected tensors {names:?} (not part of the architecture in config.json)")]
    UnexpectedTensors {
        /// The model folder.
        dir: PathBuf,
        /// Their names.
        names: Vec<String>,
    },
    /// The shard index points to a file that is not in the folder, or a tensor is in two shards.
    #[error("{path}: {reason}")]
    BadShards {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Our model's architecture has no Hugging Face counterpart that loads without custom code.
    #[error("cannot export as a Hugging Face model: {reason}")]
    NotExportable {
        /// Which combination of settings is refused.
        reason: String,
    },
    /// A model source is neither `hf:owner/name[@revision]` nor an existing folder.
    #[error("model source {spec:?}: {reason}")]
    BadSource {
        /// The source as given.
        spec: String,
        /// Why it is refused.
        reason: String,
    },
    /// A file could not be fetched from the hub (or the cache, offline).
    #[error(transparent)]
    Hub(#[from] HubError),
    /// Writing our own model folder failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// `map_err` helper for I/O errors on `path`.
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> InteropError + '_ {
    move |source| InteropError::Io {
        path: path.to_path_buf(),
        source,
    }
}
