//! The GPT model of hyperclone: a typed configuration with presets, a decoder generic over
//! burn's backend, its loss, parameter and FLOP counts, and sampling.
//!
//! The architecture lives in one file, [`gpt`], readable top-down. Its two operations that carry
//! a backward of their own (causal attention, cross-entropy) are in [`ops`], behind the
//! [`GptBackend`] trait that every backend the model runs on implements.

pub mod checkpoint;
pub mod config;
pub mod generate;
pub mod gpt;
pub mod kernels;
pub mod ops;
pub mod rng;

pub use config::{ConfigError, GptConfig, MlpKind, NormKind, Positional};
pub use generate::{generate, sample_token, SampleOptions};
pub use gpt::{tokens_tensor, Attention, Block, Gpt, Mlp, Norm, RopeTables};
pub use kernels::Kernels;
pub use ops::attention::AttentionKernel;
pub use ops::cross_entropy::CrossEntropyKernel;
pub use ops::layer_ops::LayerOpsKernel;
pub use ops::{GptAutodiffBackend, GptBackend};
pub use rng::SplitMix64;
