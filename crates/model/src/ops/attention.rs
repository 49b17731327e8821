//! Causal attention as one differentiable operation ([`GptBackend::causal_attention`]).
//!
//! burn 0.21 has a fused attention kernel for inference (flash attention on the CubeCL
//! backends, a tiled kernel on flex), but its autodiff backend does not use it: under autodiff,
//! `attention` is composed of matmul, mask, max, exp, sum and divide, each recorded and
//! differentiated on its own, so a training step writes and keeps several `[B, nh, T, T]`
//! tensors per layer. [`GptBackend::causal_attention`] is the one attention the GPT calls in
//! training: on the autodiff backend its forward is the inner backend's attention kernel and
//! its backward recomputes the attention matrix from q and k (the FlashAttention recipe,
//! without the tiling), so only q, k, v and the output are kept per layer.
//!
//! The backward, for `S = scale·q·kᵀ + causal mask`, `P = softmax(S)`, `O = P·v` and the
//! incoming gradient `dO`:
//!
//! ```text
//! dv = Pᵀ·dO
//! dP = dO·vᵀ
//! dS = P ∘ (dP − rowsum(dO ∘ O))     (rowsum(dO ∘ O) = rowsum(P ∘ dP), one [T, hs] pass)
//! dq = scale · dS·k
//! dk = scale · dSᵀ·q
//! ```

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{AttentionModuleOptions, FloatTensor};
use burn::tensor::{Bool, DType, Tensor, TensorPrimitive};

use super::GptBackend;

/// How a training step differentiates attention (a run-time choice, not part of the model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKernel {
    /// [`AttentionKernel::Fused`] where it pays on the backend for the sequence length
    /// ([`GptBackend::fused_attention_pays`]), else [`AttentionKernel::Composed`].
    #[default]
    Auto,
    /// [`GptBackend::causal_attention`]: the backend's attention kernel forward (flash
    /// attention on CUDA and wgpu), a backward that recomputes the attention matrix.
    Fused,
    /// burn 0.21's own autodiff attention: composed of separate ops, each differentiated and
    /// each keeping its `[B, nh, T, T]` input. Kept to measure [`AttentionKernel::Fused`]
    /// against.
    Composed,
}

impl AttentionKernel {
    /// The name used in configs and on the command line (`auto`, `fused`, `composed`).
    pub fn as_str(self) -> &'static str {
        match self {
            AttentionKernel::Auto => "auto",
            AttentionKernel::Fused => "fused",
            AttentionKernel::Composed => "composed",
        }
    }

    /// Whether training on backend `B` with sequences of `seq_len` tokens runs the fused
    /// attention (`Auto` asks the backend).
    pub fn is_fused_on<B: GptBackend>(self, seq_len: usize) -> bool {
        match self {
            AttentionKernel::Auto => B::fused_attention_pays(seq_len),
            AttentionKernel::Fused => true,
            AttentionKernel::Composed => false,
        }
    }

    /// The name of what runs on backend `B` for `seq_len` tokens: `fused` or `composed`.
    pub fn resolved_name<B: GptBackend>(self, seq_len: usize) -> &'static str {
        if self.is_fused_on::<B>(seq_len) {
            AttentionKernel::Fused.as_str()
        } else {
            AttentionKernel::Composed.as_str()
        }
    }
}

impl std::str::FromStr for AttentionKernel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(AttentionKernel::Auto),
            "fused" => Ok(AttentionKernel::Fused),
            "composed" => Ok(AttentionKernel::Composed),
            other => Err(format!(
                "unknown attention kernel {other:?} (expected \"auto\", \"fused\" or \"composed\")"
            )),
        }
    }
}

/// The options of GPT attention: causal, scale `1/√head_dim`.
pub fn causal_options() -> AttentionModuleOptions {
    AttentionModuleOptions {
        scale: None, // 1/√head_dim; an explicit scale would make CubeCL skip its flash kernel
        softcap: None,
        is_causal: true,
    }
}

/// [`GptBackend::causal_attention`] on the autodiff backend: the inner backend's kernel forward,
/// [`causal_attention_backward`] as its backward.
pub(crate) fn autodiff_causal_attention<B: GptBackend, C: CheckpointStrategy>(
    q: FloatTensor<Autodiff<B, C>>,
    k: FloatTensor<Autodiff<B, C>>,
    v: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    /// State kept for the backward: q, k, v (as checkpointed nodes) and the output.
    #[derive(Debug)]
    struct CausalAttentionBackward;

    impl<B: Backend> Backward<B, 3> for CausalAttentionBackward {
        type State = (NodeId, NodeId, NodeId, FloatTensor<B>);

        fn backward(
            self,
            ops: Ops<Self::State, 3>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let (q, k, v, out) = ops.state;
            let q = checkpointer.retrieve_node_output(q);
            let k = checkpointer.retrieve_node_output(k);
            let v = checkpointer.retrieve_node_output(v);
            let grad_out = grads.consume::<B>(&ops.node);
            let [grad_q, grad_k, grad_v] = causal_attention_backward::<B>(q, k, v, out, grad_out);
            let [parent_q, parent_k, parent_v] = ops.parents;
            for (parent, grad) in [(parent_q, grad_q), (parent_k, grad_k), (parent_v, grad_v)] {
                if let Some(node) = parent {
                    grads.register::<B>(node.id, grad);
                }
            }
        }
    }

    match CausalAttentionBackward
        .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let state_q = prep.checkpoint(&q);
            let state_k = prep.checkpoint(&k);
            let state_v = prep.checkpoint(&v);
            let out = B::causal_attention(q.primitive, k.primitive, v.primitive);
            prep.finish((state_q, state_k, state_v, out.clone()), out)
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(B::causal_attention(q.primitive, k.primitive, v.primitive))
        }
    }
}

fn float<B: Backend>(x: FloatTensor<B>) -> Tensor<B, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

/// `x` in `dtype`; no operation when it already is.
fn in_dtype<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if x.dtype() == dtype {
        x
    } else {
        x.cast(dtype)
    }
}

/// The gradients of causal attention with respect to q, k and v (see the module docs), in the
/// inputs' dtype. The matmuls run in the inputs' dtype; the softmax and its gradient (`P`,
/// `dS`) in f32 at least, as FlashAttention keeps them, so bf16 inputs lose precision only
/// where the matmuls round.
///
/// # Shapes
/// `q, k, v, out, grad_out: [B, nh, T, hs]` → three `[B, nh, T, hs]`
pub fn causal_attention_backward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    out: FloatTensor<B>,
    grad_out: FloatTensor<B>,
) -> [FloatTensor<B>; 3] {
    let (q, k, v, out, grad_out) = (float(q), float(k), float(v), float(out), float(grad_out));
    let dtype = q.dtype();
    let acc = if dtype == DType::F64 {
        dtype
    } else {
        DType::F32
    };
    let [_, _, t, hs] = q.dims();
    let scale = 1.0 / (hs as f64).sqrt();
    let future = Tensor::<B, 2, Bool>::tril_mask([t, t], 0, &q.device()).unsqueeze::<4>(); // [1, 1, T, T]
                                                                                           // The scale goes on [T, hs] operands, never on a [T, T] matrix (a pass fewer).
    let q_scaled = q * scale;
    let scores = q_scaled.clone().matmul(k.clone().swap_dims(2, 3)); // [B, nh, T, T]
    let scores = in_dtype(scores, acc).mask_fill(future, f32::NEG_INFINITY);
    let probs = softmax(scores, 3); // [B, nh, T, T], f32
    let probs_mm = in_dtype(probs.clone(), dtype);
    let grad_v = probs_mm.swap_dims(2, 3).matmul(grad_out.clone()); // [B, nh, T, hs]
    let grad_probs = in_dtype(grad_out.clone().matmul(v.swap_dims(2, 3)), acc); // [B, nh, T, T]
    let row_dot = (in_dtype(grad_out, acc) * in_dtype(out, acc)).sum_dim(3); // [B, nh, T, 1]
    let grad_scores = in_dtype(probs * (grad_probs - row_dot), dtype); // [B, nh, T, T]; 0 where masked
    let grad_q = grad_scores.clone().matmul(k * scale); // [B, nh, T, hs]
    let grad_k = grad_scores.swap_dims(2, 3).matmul(q_scaled); // [B, nh, T, hs]
    [grad_q, grad_k, grad_v].map(|g| g.into_primitive().tensor())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::module::attention;
    use burn::tensor::Distribution;

    type AB = Autodiff<Flex>;

    /// q, k, v drawn from N(0, 1) in `dtype`, each a leaf that requires its gradient.
    fn inputs(shape: [usize; 4], seed: u64, dtype: DType) -> [Tensor<AB, 4>; 3] {
        <Flex as Backend>::seed(&Default::default(), seed);
        let device = Default::default();
        [0, 1, 2].map(|_| {
            Tensor::<AB, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device)
                .cast(dtype)
                .require_grad()
        })
    }

    fn max_abs_diff(a: Tensor<Flex, 4>, b: Tensor<Flex, 4>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    fn fused(q: Tensor<AB, 4>, k: Tensor<AB, 4>, v: Tensor<AB, 4>) -> Tensor<AB, 4> {
        let out = AB::causal_attention(
            q.into_primitive().tensor(),
            k.into_primitive().tensor(),
            v.into_primitive().tensor(),
        );
        float(out)
    }

    /// Output and all three gradients of the fused op against burn's composed autodiff
    /// attention, for a loss that weights every output element differently.
    fn compare(shape: [usize; 4], dtype: DType, tolerance: f32) {
        let [q, k, v] = inputs(shape, 7, dtype);
        let weights =
            Tensor::<AB, 4>::random(shape, Distribution::Normal(0.0, 1.0), &q.device()).cast(dtype);
        let run = |use_fused: bool| {
            let (q, k, v) = (q.clone(), k.clone(), v.clone());
            let out = if use_fused {
                fused(q.clone(), k.clone(), v.clone())
            } else {
                attention(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    None,
                    None,
                    causal_options(),
                )
            };
            let grads = (out.clone() * weights.clone()).sum().backward();
            let grad = |x: &Tensor<AB, 4>| x.grad(&grads).expect("gradient").cast(DType::F32);
            [out.inner().cast(DType::F32), grad(&q), grad(&k), grad(&v)]
        };
        let composed = run(false);
        let ours = run(true);
        for (name, (a, b)) in ["out", "grad_q", "grad_k", "grad_v"]
            .iter()
            .zip(ours.into_iter().zip(composed))
        {
            let scale: f32 = b.clone().abs().max().into_scalar();
            let diff = max_abs_diff(a, b);
            assert!(
                diff <= tolerance * scale.max(1.0),
                "{name} {shape:?} {dtype:?}: max |fused − composed| = {diff} (scale {scale})"
            );
        }
    }

    #[test]
    fn fused_attention_matches_composed_autodiff_in_f32() {
        // Short sequence (flex's naive kernel) and one past its flash threshold (T² > 256 Ki).
        compare([2, 3, 17, 8], DType::F32, 1e-5);
        compare([1, 2, 520, 16], DType::F32, 1e-5);
    }

    /// In bf16 both attentions round. Against the f32 computation on the same (bf16-exact)
    /// inputs, the fused one (f32 softmax in its backward) is at least as accurate: seen here,
    /// max errors out 3.9e-3 vs 1.1e-2, grad_q 1.5e-2 vs 1.5e-2, grad_k 1.1e-2 vs 2.1e-2,
    /// grad_v equal (scales 2–4); the matmuls' bf16 outputs dominate what remains.
    #[test]
    fn fused_attention_in_bf16_is_as_accurate_as_composed() {
        let shape = [2, 3, 33, 16];
        let [q, k, v] = inputs(shape, 11, DType::BF16);
        let weights = Tensor::<AB, 4>::random(shape, Distribution::Normal(0.0, 1.0), &q.device())
            .cast(DType::BF16);
        let run = |dtype: DType, use_fused: bool| {
            let [q, k, v] = [&q, &k, &v].map(|x| x.clone().inner().cast(dtype));
            let [q, k, v] = [q, k, v].map(|x| Tensor::<AB, 4>::from_inner(x).require_grad());
            let out = if use_fused {
                fused(q.clone(), k.clone(), v.clone())
            } else {
                attention(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    None,
                    None,
                    causal_options(),
                )
            };
            let w = Tensor::<AB, 4>::from_inner(weights.clone().inner().cast(dtype));
            let grads = (out.clone() * w).sum().backward();
            let grad = |x: &Tensor<AB, 4>| x.grad(&grads).expect("gradient").cast(DType::F32);
            [out.inner().cast(DType::F32), grad(&q), grad(&k), grad(&v)]
        };
        let reference = run(DType::F32, false);
        let (mut total_ours, mut total_composed) = (0.0, 0.0);
        let composed = run(DType::BF16, false);
        let ours = run(DType::BF16, true);
        for (i, name) in ["out", "grad_q", "grad_k", "grad_v"].iter().enumerate() {
            let err_composed = max_abs_diff(composed[i].clone(), reference[i].clone());
            let err_ours = max_abs_diff(ours[i].clone(), reference[i].clone());
            let scale: f32 = reference[i].clone().abs().max().into_scalar();
            assert!(
                err_ours <= 2e-2 * scale,
                "{name}: fused bf16 off f32 by {err_ours} (scale {scale})"
            );
            assert!(
                err_ours <= 1.25 * err_composed,
                "{name}: fused bf16 off f32 by {err_ours}, composed by {err_composed}"
            );
            total_ours += err_ours;
            total_composed += err_composed;
        }
        assert!(
            total_ours < total_composed,
            "{total_ours} vs {total_composed}"
        );
    }

    #[test]
    fn gradient_is_zero_for_future_keys() {
        // The loss reads only the first query position, which may attend to key 0 alone: every
        // later key and value gets exactly zero gradient.
        let [q, k, v] = inputs([1, 2, 6, 4], 3, DType::F32);
        let out = fused(q.clone(), k.clone(), v.clone());
        let grads = out.narrow(2, 0, 1).sum().backward();
        for x in [&k, &v] {
            let later: f32 = x
                .grad(&grads)
                .unwrap()
                .narrow(2, 1, 5)
                .abs()
                .max()
                .into_scalar();
            assert_eq!(later, 0.0);
        }
        let first: f32 = v
            .grad(&grads)
            .unwrap()
            .narrow(2, 0, 1)
            .abs()
            .max()
            .into_scalar();
        assert!(first > 0.0);
    }

    #[test]
    fn untracked_inputs_get_no_gradient_and_no_panic() {
        let [q, _, v] = inputs([1, 1, 5, 4], 5, DType::F32);
        let k = Tensor::<AB, 4>::ones([1, 1, 5, 4], &q.device()); // a constant: not tracked
        let out = fused(q.clone(), k.clone(), v.clone());
        let grads = out.sum().backward();
        assert!(q.grad(&grads).is_some());
        assert!(k.grad(&grads).is_none());
        assert!(v.grad(&grads).is_some());
    }

    #[test]
    fn kernel_names_round_trip() {
        for kernel in [
            AttentionKernel::Auto,
            AttentionKernel::Fused,
            AttentionKernel::Composed,
        ] {
            assert_eq!(kernel.as_str().parse::<AttentionKernel>(), Ok(kernel));
        }
        assert!("flash".parse::<AttentionKernel>().is_err());
    }
}
