//! HyperCloning: grow a trained small GPT into a wider one that computes the same logits.
//!
//! The method is specified in `docs/hypercloning.md` (Samragh et al., 2024). In short: with
//! width factor n every hidden vector of the target is the n-fold stack `[x; …; x]` of the
//! source's; heads are duplicated (head_dim fixed), the MLP grows by an independent factor m,
//! and every weight matrix becomes a grid of blocks divided by its input factor.
//!
//! - [`plan`]: options, the derived target configuration and refusals, and the per-parameter
//!   rule table ([`plan::rule`]), in one place.
//! - [`expand`](mod@expand): applies the table to a model's tensors (variants, noise).
//! - [`depth`]: depth growth (`zero` blocks, function-preserving; `stack`, G_stack).
//! - [`verify`](mod@verify): source vs target logits on a probe batch.
//! - [`symmetry`](mod@symmetry): how far the cloned copies have drifted apart.
//! - [`record`]: the expanded model folder and its `expand.json`.
//! - [`optimizer`]: AdamW's moments and per-parameter factors through the clone (the same
//!   rule table as the weights, factors from [`plan::adam_rule`]).
//!
//! ```no_run
//! use burn::backend::Flex;
//! use hyperclone_cloning::{expand, verify, probe_tokens, ExpandOptions};
//! use hyperclone_model::{tokens_tensor, Gpt, GptConfig};
//!
//! let device = Default::default();
//! let small = Gpt::<Flex>::init(&GptConfig::cpu_tiny(), 0, &device).unwrap();
//! let large = expand(&small, &ExpandOptions::default()).unwrap();
//! let ids = probe_tokens(512, 2, 16, 0);
//! let v = verify(&small, &large, tokens_tensor(&ids, 2, 16, &device)).unwrap();
//! assert!(v.rel_err < 1e-5);
//! ```

pub mod depth;
pub mod expand;
pub mod folder;
pub mod optimizer;
pub mod plan;
pub mod record;
pub mod symmetry;
pub mod verify;

pub use depth::{depth_layout, grow_depth, BlockOrigin};
pub use expand::expand;
pub use folder::{expand_folder, FolderError, FolderExpansion, ProbeSpec};
pub use optimizer::{expand_adam_state, expand_adam_state_each, expand_moments, AdamMoments};
pub use plan::{
    adam_rule, expand_config, factors_between, source_config_of, AdamRule, CloneError, DepthMode,
    DepthPlacement, ExpandOptions, GrowthOrder, ParamKind, Rule, Section, Variant,
};
pub use record::{
    expand_record, read_expand_record, save_expanded, save_expanded_from, ExpandRecord,
    RecordError, CARRIED_ENTRIES, EXPAND_FILE,
};
pub use symmetry::{symmetry, SymmetryError, SymmetryReport};
pub use verify::{probe_tokens, verify, Verification, VerifyError, DEFAULT_TOLERANCE_F32};
