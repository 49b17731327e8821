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
use burn::tensor::{Bool, Tensor};

use super::{accumulation_dtype, cast_to, float_tensor, GptBackend};

/// How a training step differentiates attention (a run-time choice, not part of the model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKernel {
    /// The faster of the two on every backend and length measured so far:
    /// [`AttentionKernel::Fused`] ([`AttentionKernel::resolve`]). (Until the CPU got an attention kernel of its own
    /// ([`super::cpu_kernels`]), flex trained sequences shorter than 256 tokens composed.)
    #[default]
    Auto,
    /// [`GptBackend::causal_attention`]: the backend's attention kernel forward (on CUDA and
    /// wgpu CubeCL's, autotuned between its flash kernels and its fallback), a backward that
    /// recomputes the attention matrix.
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

    /// The kernel that runs for this choice, never `Auto`. The one place where `Auto` is
    /// decided: it is [`AttentionKernel::Fused`] on every backend (fused was the faster at every
    /// length measured, `benches/results/cpu-throughput.md`). `Auto` stays a value of its own
    /// so that configs that say `attention = "auto"` keep their meaning (and their hash) if the
    /// choice ever depends on the backend again.
    pub fn resolve(self) -> AttentionKernel {
        match self {
            AttentionKernel::Auto | AttentionKernel::Fused => AttentionKernel::Fused,
            AttentionKernel::Composed => AttentionKernel::Composed,
        }
    }

    /// Whether training runs the fused attention.
    pub fn is_fused(self) -> bool {
        self.resolve() == AttentionKernel::Fused
    }

    /// The name of what runs: `fused` or `composed`.
    pub fn resolved_name(self) -> &'static str {
        self.resolve().as_str()
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

    impl<B: GptBackend> Backward<B, 3> for CausalAttentionBackward {
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
            let [grad_q, grad_k, grad_v] = B::causal_attention_backward(q, k, v, out, grad_out);
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

/// The gradients of causal attention with respect to q, k and v (see the module docs), in the
/// inputs' dtype. For bf16 or f16 inputs the recomputed scores `q·kᵀ`, the softmax and its
/// gradient (`S`, `P`, `dS`) are f32, as FlashAttention keeps them and as the forward kernels
/// accumulate, so the backward's `P` is the forward's up to f32 rounding; the four other
/// matmuls run in the inputs' dtype.
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
    let [q, k, v, out, grad_out] = [q, k, v, out, grad_out].map(float_tensor::<B, 4>);
    let dtype = q.dtype();
    let acc = accumulation_dtype(dtype);
    let [_, _, t, hs] = q.dims();
    assert_eq!(
        k.dims()[2],
        t,
        "causal attention here has as many keys as queries (no KV cache in training)"
    );
    let scale = 1.0 / (hs as f64).sqrt();
    // [1, 1, T, T]: true above the diagonal (future keys)
    let future = Tensor::<B, 2, Bool>::tril_mask([t, t], 0, &q.device()).unsqueeze::<4>();
    // The scale goes on [T, hs] operands, never on a [T, T] matrix (a pass fewer).
    let q_scaled = q * scale;
    let k_t = cast_to(k.clone(), acc).swap_dims(2, 3); // [B, nh, hs, T]
    let scores = cast_to(q_scaled.clone(), acc).matmul(k_t); // [B, nh, T, T]
    let probs = softmax(scores.mask_fill(future, f32::NEG_INFINITY), 3); // [B, nh, T, T]
    let grad_v = cast_to(probs.clone(), dtype)
        .swap_dims(2, 3)
        .matmul(grad_out.clone()); // [B, nh, T, hs]
    let grad_probs = cast_to(grad_out.clone().matmul(v.swap_dims(2, 3)), acc); // [B, nh, T, T]
    let row_dot = (cast_to(grad_out, acc) * cast_to(out, acc)).sum_dim(3); // [B, nh, T, 1]
                                                                           // [B, nh, T, T]; 0 where masked (P is)
    let grad_scores = cast_to(probs * (grad_probs - row_dot), dtype);
    let grad_q = grad_scores.clone().matmul(k * scale); // [B, nh, T, hs]
    let grad_k = grad_scores.swap_dims(2, 3).matmul(q_scaled); // [B, nh, T, hs]
    [grad_q, grad_k, grad_v].map(|g| g.into_primitive().tensor())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;
    use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
    use burn::backend::Flex;
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::module::attention;
    use burn::tensor::{DType, TensorData};

    type AB = Autodiff<Flex>;

    /// `[B, nh, T, hs]` values N(0, 1) from a local generator: reproducible whatever other
    /// tests draw meanwhile.
    fn normal<B: Backend>(shape: [usize; 4], seed: u64, dtype: DType) -> Tensor<B, 4> {
        let values = SplitMix64::new(seed).normal_vec(shape.iter().product(), 1.0);
        Tensor::<B, 4>::from_data(TensorData::new(values, shape), &Default::default()).cast(dtype)
    }

    /// q, k, v in `dtype`, each a leaf that requires its gradient.
    fn inputs<B: Backend>(shape: [usize; 4], seed: u64, dtype: DType) -> [Tensor<B, 4>; 3] {
        [0, 1, 2].map(|i| normal::<B>(shape, seed * 3 + i, dtype).require_grad())
    }

    fn max_abs_diff<B: Backend>(a: Tensor<B, 4>, b: Tensor<B, 4>) -> f32 {
        (a - b).abs().max().into_data().to_vec::<f32>().unwrap()[0]
    }

    fn max_abs<B: Backend>(a: Tensor<B, 4>) -> f32 {
        a.abs().max().into_data().to_vec::<f32>().unwrap()[0]
    }

    fn fused<B: GptBackend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
        let out = B::causal_attention(
            q.into_primitive().tensor(),
            k.into_primitive().tensor(),
            v.into_primitive().tensor(),
        );
        float_tensor(out)
    }

    fn composed<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
        attention(q, k, v, None, None, causal_options())
    }

    /// Output and the gradients of those of q, k, v that require one (as f32), for a loss that
    /// weights every output element differently.
    fn run<B: GptBackend + AutodiffBackend>(
        [q, k, v]: &[Tensor<B, 4>; 3],
        weights: &Tensor<B, 4>,
        use_fused: bool,
    ) -> Vec<Option<Tensor<B::InnerBackend, 4>>> {
        let (q, k, v) = (q.clone(), k.clone(), v.clone());
        let out = if use_fused {
            fused(q.clone(), k.clone(), v.clone())
        } else {
            composed(q.clone(), k.clone(), v.clone())
        };
        let grads = (out.clone() * weights.clone()).sum().backward();
        let grad = |x: &Tensor<B, 4>| x.grad(&grads).map(|g| g.cast(DType::F32));
        vec![
            Some(out.inner().cast(DType::F32)),
            grad(&q),
            grad(&k),
            grad(&v),
        ]
    }

    /// The fused op against burn's composed autodiff attention: every output and gradient
    /// within `tolerance` of its scale, the same gradients present.
    fn compare<B: GptBackend + AutodiffBackend>(
        qkv: [Tensor<B, 4>; 3],
        tolerance: f32,
        what: &str,
    ) {
        let shape = qkv[0].dims();
        let weights = normal::<B>(shape, 99, qkv[0].dtype());
        let ours = run(&qkv, &weights, true);
        let reference = run(&qkv, &weights, false);
        for (name, (a, b)) in ["out", "grad_q", "grad_k", "grad_v"]
            .iter()
            .zip(ours.into_iter().zip(reference))
        {
            match (a, b) {
                (Some(a), Some(b)) => {
                    let scale = max_abs(b.clone());
                    let diff = max_abs_diff(a, b);
                    assert!(
                        diff <= tolerance * scale.max(1.0),
                        "{what} {name}: max |fused − composed| = {diff} (scale {scale})"
                    );
                }
                (None, None) => {}
                (a, b) => panic!(
                    "{what} {name}: fused has a gradient: {}, composed: {}",
                    a.is_some(),
                    b.is_some()
                ),
            }
        }
    }

    /// The generic backward (what GPU backends run; flex has kernels of its own) against
    /// burn's composed autodiff, in f32, at a short and a long sequence.
    #[test]
    fn generic_backward_matches_composed_autodiff_in_f32() {
        for shape in [[2, 3, 17, 8], [1, 2, 520, 16]] {
            let qkv = inputs::<AB>(shape, 5, DType::F32);
            let weights = normal::<AB>(shape, 98, DType::F32);
            let reference = run(&qkv, &weights, false);
            let out = reference[0].clone().unwrap();
            let [q, k, v] = qkv.map(|x| x.inner().into_primitive().tensor());
            let grads = causal_attention_backward::<Flex>(
                q,
                k,
                v,
                out.into_primitive().tensor(),
                weights.inner().into_primitive().tensor(),
            );
            for (name, (ours, want)) in ["grad_q", "grad_k", "grad_v"]
                .iter()
                .zip(grads.into_iter().zip(&reference[1..]))
            {
                let want = want.clone().unwrap();
                let scale = max_abs(want.clone());
                let diff = max_abs_diff(float_tensor::<Flex, 4>(ours), want);
                assert!(
                    diff <= 1e-5 * scale.max(1.0),
                    "{shape:?} {name}: {diff} (scale {scale})"
                );
            }
        }
    }

    #[test]
    fn fused_attention_matches_composed_autodiff_in_f32() {
        // A short sequence and a longer one, neither a multiple of 8.
        compare(inputs::<AB>([2, 3, 17, 8], 7, DType::F32), 1e-5, "T=17");
        compare(inputs::<AB>([1, 2, 520, 16], 7, DType::F32), 1e-5, "T=520");
    }

    /// Only some inputs tracked (here a constant, random k): those get no gradient, the others
    /// the composed attention's.
    #[test]
    fn untracked_inputs_get_no_gradient() {
        let shape = [2, 2, 9, 4];
        let [q, _, v] = inputs::<AB>(shape, 5, DType::F32);
        let k = normal::<AB>(shape, 77, DType::F32); // not tracked
        compare([q, k, v.clone()], 1e-5, "k untracked");
        let q = normal::<AB>(shape, 78, DType::F32);
        let k = normal::<AB>(shape, 79, DType::F32);
        compare([q, k, v], 1e-5, "only v tracked");
    }

    /// Under burn's balanced checkpointing (which recomputes memory-bound ops rather than keep
    /// them), with q, k, v made by recorded ops the way the model makes them (a strided
    /// `swap_dims` view, and GQA's `expand` + `reshape` of k and v).
    #[test]
    fn works_under_balanced_checkpointing_with_views_and_gqa() {
        type Balanced = Autodiff<Flex, BalancedCheckpointing>;
        let (b, nh, nkv, t, hs) = (2, 4, 2, 11, 8);
        let leaves = [0, 1, 2].map(|i| {
            let values = SplitMix64::new(40 + i).normal_vec(b * t * nh * hs, 1.0);
            Tensor::<Balanced, 4>::from_data(
                TensorData::new(values, [b, t, nh, hs]),
                &Default::default(),
            )
            .require_grad()
        });
        let group = |x: Tensor<Balanced, 4>| {
            x.narrow(1, 0, nkv) // [B, nkv, T, hs]
                .unsqueeze_dim::<5>(2)
                .expand([b, nkv, nh / nkv, t, hs])
                .reshape([b, nh, t, hs])
        };
        let weights = normal::<Balanced>([b, nh, t, hs], 98, DType::F32);
        // Each backward consumes its graph's checkpoints: build the graph anew for each run.
        let grads_of = |use_fused: bool| {
            let [q, k, v] = leaves.clone().map(|x| x.swap_dims(1, 2) * 1.0); // [B, nh, T, hs]
            let (k, v) = (group(k), group(v));
            let out = if use_fused {
                fused(q, k, v)
            } else {
                composed(q, k, v)
            };
            let grads = (out * weights.clone()).sum().backward();
            leaves
                .clone()
                .map(|x| x.grad(&grads).expect("every leaf has a gradient"))
        };
        let (ours, reference) = (grads_of(true), grads_of(false));
        for (a, r) in ours.into_iter().zip(reference) {
            let scale = max_abs(r.clone());
            assert!(max_abs_diff(a, r) <= 1e-5 * scale.max(1.0));
        }
    }

    /// In bf16 both attentions round. Against the f32 computation on the same (bf16-exact)
    /// inputs, the fused one (f32 scores and softmax in its backward) is at least as accurate:
    /// seen here, max errors out 6.2e-3 vs 1.3e-2, grad_q 9.4e-3 vs 2.2e-2, grad_k 1.2e-2 vs
    /// 2.2e-2, grad_v 1.0e-2 vs 1.1e-2 (scales 2–3); the bf16 outputs of the other matmuls
    /// dominate what remains.
    #[test]
    fn fused_attention_in_bf16_is_as_accurate_as_composed() {
        let shape = [2, 3, 33, 16];
        let [q, k, v] = inputs::<AB>(shape, 11, DType::BF16);
        let weights = normal::<AB>(shape, 12, DType::BF16);
        let to = |x: &Tensor<AB, 4>, dtype: DType| {
            Tensor::<AB, 4>::from_inner(x.clone().inner().cast(dtype)).require_grad()
        };
        let as_f32 = [&q, &k, &v].map(|x| to(x, DType::F32));
        let reference = run(&as_f32, &to(&weights, DType::F32), false);
        let composed = run(&[q.clone(), k.clone(), v.clone()], &weights, false);
        let ours = run(&[q, k, v], &weights, true);
        let (mut total_ours, mut total_composed) = (0.0, 0.0);
        for (i, name) in ["out", "grad_q", "grad_k", "grad_v"].iter().enumerate() {
            let reference = reference[i].clone().unwrap();
            let err_composed = max_abs_diff(composed[i].clone().unwrap(), reference.clone());
            let err_ours = max_abs_diff(ours[i].clone().unwrap(), reference.clone());
            let scale = max_abs(reference);
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

    /// The loss reads query position 2 only, which attends to keys 0..=2: those keys and
    /// values get a gradient, every later one exactly zero.
    #[test]
    fn gradient_is_zero_for_future_keys() {
        let [q, k, v] = inputs::<AB>([1, 2, 6, 4], 3, DType::F32);
        let out = fused(q.clone(), k.clone(), v.clone());
        let grads = out.narrow(2, 2, 1).sum().backward();
        for x in [&k, &v] {
            let grad = x.grad(&grads).unwrap();
            assert_eq!(max_abs(grad.clone().narrow(2, 3, 3)), 0.0);
            for key in 0..3 {
                assert!(max_abs(grad.clone().narrow(2, key, 1)) > 0.0, "key {key}");
            }
        }
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
