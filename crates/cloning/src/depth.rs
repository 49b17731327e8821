//! Depth growth: a model with `depth_factor` times as many blocks, either function-preserving
//! (`zero`: new blocks whose residual contributions are exactly zero) or G_stack (`stack`: the
//! block stack repeated, not function-preserving).
//!
//! # Why zero blocks preserve the function
//! A pre-norm block adds `attn(ln_1(x))` and then `mlp(ln_2(x))` to the residual stream. Both
//! end in an output projection (`attn.c_proj`, `mlp.c_proj`); with that weight and its bias
//! zero, the block adds exactly zero and the stream passes through unchanged, whatever the
//! other weights hold, so the grown model's logits equal the source's (up to f32 rounding of
//! `x + 0`, which is exact).
//!
//! # Why the other weights are random, not zero
//! At the first step the gradient reaching a new block's `c_attn`, `c_fc` and `c_gate` is zero
//! (it passes through the zero output projections), but the gradient of each output
//! projection is `hiddenᵀ · g`: non-zero only when the block's hidden activations are. The
//! rest of the block is therefore drawn as in a fresh model (`Gpt::init`: N(0, init_std),
//! norms γ = 1), so the projections move at the first step and the whole block learns from the
//! second. A block that were all zero would stay zero forever.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use hyperclone_model::{Block, Gpt};

use crate::plan::{CloneError, DepthMode, DepthPlacement, ExpandOptions};

/// Where one block of the grown stack comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockOrigin {
    /// A copy of the source's block with this index.
    Source(usize),
    /// A new block (`zero` growth): residual contributions zero at the start.
    New,
}

/// The grown stack of a model with `n_layer` blocks, block by block: `stack` repeats
/// `[0, …, L−1]` `depth_factor` times; `zero` puts `depth_factor − 1` new blocks after every
/// source block (`interleave`) or all of them on top (`top`). Width-only options give
/// `[0, …, L−1]`.
pub fn depth_layout(n_layer: usize, opts: &ExpandOptions) -> Vec<BlockOrigin> {
    let k = opts.depth_factor.max(1);
    let source = (0..n_layer).map(BlockOrigin::Source);
    if k == 1 {
        return source.collect();
    }
    match (opts.depth_mode, opts.depth_placement) {
        (DepthMode::Stack, _) => (0..k).flat_map(|_| source.clone()).collect(),
        (DepthMode::Zero, DepthPlacement::Top) => source
            .chain(std::iter::repeat_n(BlockOrigin::New, (k - 1) * n_layer))
            .collect(),
        (DepthMode::Zero, DepthPlacement::Interleave) => source
            .flat_map(|l| std::iter::once(l).chain(std::iter::repeat_n(BlockOrigin::New, k - 1)))
            .collect(),
    }
}

/// The name of the generator stream of new block `index` of the grown stack (seeded with
/// `opts.seed`): the new weights depend only on the seed and the position, not the backend.
fn new_block_stream(index: usize) -> String {
    format!("depth/h.{index}")
}

/// Grows `model` in depth by `opts` at its current width (see [`depth_layout`]). New `zero`
/// blocks are drawn with [`Block::init`] for the model's config and their output projections
/// zeroed; repeated source blocks get parameters of their own (fresh ids, shared storage until
/// trained). Width-only options return the model unchanged.
pub fn grow_depth<B: Backend>(
    mut model: Gpt<B>,
    opts: &ExpandOptions,
) -> Result<Gpt<B>, CloneError> {
    opts.validate()?;
    if !opts.grows_depth() {
        return Ok(model);
    }
    let config = model.config().clone();
    let device = model.wte.weight.val().device();
    let layout = depth_layout(config.n_layer, opts);
    let mut source: Vec<Option<Block<B>>> =
        std::mem::take(&mut model.h).into_iter().map(Some).collect();
    // How often each source block is still to be used: its last use takes it, the others copy.
    let mut uses = vec![0usize; source.len()];
    for origin in &layout {
        if let BlockOrigin::Source(l) = origin {
            uses[*l] += 1;
        }
    }
    let mut blocks = Vec::with_capacity(layout.len());
    for (index, origin) in layout.iter().enumerate() {
        let block = match *origin {
            BlockOrigin::Source(l) => {
                uses[l] -= 1;
                if uses[l] == 0 {
                    source[l]
                        .take()
                        .expect("a source block is taken once, at its last use")
                } else {
                    let original = source[l].as_ref().expect("taken only at its last use");
                    original.clone().map(&mut FreshParams)
                }
            }
            BlockOrigin::New => zero_block(
                Block::init(&config, opts.seed, &new_block_stream(index), &device),
                &device,
            ),
        };
        blocks.push(block);
    }
    tracing::info!(
        depth_factor = opts.depth_factor,
        mode = %opts.depth_mode,
        placement = %opts.depth_placement,
        "growing n_layer {} -> {}",
        config.n_layer,
        blocks.len()
    );
    model.with_blocks(blocks).map_err(CloneError::Target)
}

/// `block` with its two output projections (weights and biases) set to zero.
fn zero_block<B: Backend>(mut block: Block<B>, device: &B::Device) -> Block<B> {
    for proj in [&mut block.attn.c_proj, &mut block.mlp.c_proj] {
        proj.weight = Param::from_tensor(Tensor::zeros(proj.weight.val().dims(), device));
        if let Some(bias) = &mut proj.bias {
            *bias = Param::from_tensor(Tensor::zeros(bias.val().dims(), device));
        }
    }
    block
}

/// Gives every parameter a new id (same values): a repeated block must not share its
/// parameters' identity with the original, or an optimizer keyed by id would merge them.
pub(crate) struct FreshParams;

impl<B: Backend> ModuleMapper<B> for FreshParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        Param::from_tensor(param.val().detach())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::GrowthOrder;
    use BlockOrigin::{New, Source as S};

    fn opts(k: usize, mode: DepthMode, placement: DepthPlacement) -> ExpandOptions {
        ExpandOptions {
            depth_factor: k,
            depth_mode: mode,
            depth_placement: placement,
            order: GrowthOrder::default(),
            ..ExpandOptions::default()
        }
    }

    #[test]
    fn layouts_follow_mode_and_placement() {
        use DepthMode::*;
        use DepthPlacement::*;
        assert_eq!(
            depth_layout(3, &opts(1, Zero, Interleave)),
            [S(0), S(1), S(2)]
        );
        assert_eq!(
            depth_layout(2, &opts(3, Zero, Interleave)),
            [S(0), New, New, S(1), New, New]
        );
        assert_eq!(depth_layout(2, &opts(2, Zero, Top)), [S(0), S(1), New, New]);
        assert_eq!(
            depth_layout(2, &opts(3, Stack, Interleave)),
            [S(0), S(1), S(0), S(1), S(0), S(1)]
        );
    }
}
