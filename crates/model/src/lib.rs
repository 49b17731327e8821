//! The GPT model of hyperclone: a typed configuration with presets, a decoder generic over
//! burn's backend, its loss, parameter and FLOP counts, and sampling.
//!
//! The architecture lives in one file, [`gpt`], readable top-down.

pub mod attention;
pub mod checkpoint;
pub mod config;
pub mod generate;
pub mod gpt;
pub mod rng;

pub use attention::{AttentionKernel, GptAutodiffBackend, GptBackend};
pub use config::{ConfigError, GptConfig, MlpKind, NormKind, Positional};
pub use generate::{generate, sample_token, SampleOptions};
pub use gpt::{tokens_tensor, Attention, Block, Gpt, Mlp, Norm, RopeTables};
pub use rng::SplitMix64;
