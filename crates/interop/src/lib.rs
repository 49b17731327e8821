//! Hugging Face interop: import GPT-2 and Llama checkpoints (`config.json` +
//! `model.safetensors`, sharded or not, from a folder or the hub) into our [`Gpt`], and export
//! our models back in the same formats, loadable by transformers without custom code.
//!
//! - [`config`]: the `config.json` structs ([`HfConfig`]) and their mapping to [`GptConfig`].
//! - [`import`](mod@import): [`import_hf`].
//! - [`export`](mod@export): [`export_hf`], [`export_hf_with_metadata`].
//! - [`metadata`]: [`HfMetadata`], the source's special token ids, generation config and
//!   tokenizer config (chat template included), kept from import to export.
//! - [`resolve`]: [`resolve_model_source`] for `hf:owner/name[@rev]` or a local folder.
//! - [`tensors`]: reading and writing raw safetensors (f32; F16/BF16/F64 converted on read).
//!
//! Pickled PyTorch files (`.bin`, `.pt`) are never loaded: unpickling can execute code.
//!
//! [`Gpt`]: hyperclone_model::Gpt
//! [`GptConfig`]: hyperclone_model::GptConfig

#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod export;
pub mod import;
pub mod metadata;
pub mod resolve;
pub mod tensors;

pub use config::{Gpt2HfConfig, HfArchitecture, HfConfig, LlamaHfConfig, RopeParameters};
pub use error::InteropError;
pub use export::{eot_id, export_hf, export_hf_with_metadata, hf_tensors, ExportInfo};
pub use import::{import_hf, ImportInfo, CONFIG_FILE, TOKENIZER_FILE};
pub use metadata::{
    HfMetadata, SpecialTokenIds, TokenIdKey, TokenIds, METADATA_DIR, TOKEN_IDS_FILE, VERBATIM_FILES,
};
pub use resolve::{
    parse_hub_spec, resolve_model_source, resolve_model_source_with, ResolvedSource,
};
