//! The norms (LayerNorm, RMSNorm) and the tanh GELU as single differentiable operations
//! ([`GptBackend::fused_norm`], [`GptBackend::fused_gelu_tanh`]).
//!
//! burn 0.21's autodiff records LayerNorm as mean, subtract, multiply, mean, add, sqrt, divide,
//! multiply and add (its `layer_norm` op has no backward of its own), and the GELU as five
//! elementwise ops; each keeps its inputs for the backward and each backward writes
//! temporaries. Per layer that is several `[B·T, d]` tensors per norm and several
//! `[B·T, d_ff]` tensors for the GELU, the largest activations of the block. Here:
//!
//! ```text
//! norm:  x̂ = (x − μ)·r,  r = 1/√(mean((x − μ)²) + ε)   (RMSNorm: μ = 0)
//!        y = x̂·γ + β
//!        dγ = Σ_rows dy·x̂,  dβ = Σ_rows dy,  d = dy·γ
//!        dx = r·(d − mean(d) − x̂·mean(d·x̂))              (RMSNorm: without − mean(d))
//! gelu:  y  = x·σ(u),  u = a·x·(1 + b·x²),  a = 2·√(2/π), b = 0.044715
//!        dx = dy·(σ(u) + x·σ(u)·(1 − σ(u))·a·(1 + 3·b·x²))
//! ```
//!
//! The norm keeps x (the block's input, alive anyway), γ and two `[B·T, 1]` row statistics;
//! the GELU keeps only its input. Both compute in f32 for bf16 or f16 inputs and return the
//! inputs' dtype.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, Tensor};

use super::{accumulation_dtype, cast_to, float_tensor, GptBackend};

/// How a training step differentiates the norms and the GELU (a run-time choice, not part of
/// the model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerOpsKernel {
    /// [`GptBackend::fused_norm`] and [`GptBackend::fused_gelu_tanh`]: one operation each, with
    /// the backward of this module.
    #[default]
    Fused,
    /// burn's ops, each recorded and differentiated. Kept to measure
    /// [`LayerOpsKernel::Fused`] against.
    Composed,
}

impl LayerOpsKernel {
    /// The name used in configs and on the command line (`fused`, `composed`).
    pub fn as_str(self) -> &'static str {
        match self {
            LayerOpsKernel::Fused => "fused",
            LayerOpsKernel::Composed => "composed",
        }
    }
}

impl std::str::FromStr for LayerOpsKernel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fused" => Ok(LayerOpsKernel::Fused),
            "composed" => Ok(LayerOpsKernel::Composed),
            other => Err(format!(
                "unknown norm/GELU kernel {other:?} (expected \"fused\" or \"composed\")"
            )),
        }
    }
}

/// The GELU's constants: `a = 2·√(2/π)`, `b = 0.044715`.
pub(crate) const GELU_A: f64 = 2.0 * 0.797_884_560_802_865_4;
pub(crate) const GELU_B: f64 = 0.044_715;

/// Output and row statistics of a norm: `(y, μ, r)`, `μ` absent for RMSNorm; the statistics
/// in f32 at least, `y` in `x`'s dtype.
///
/// # Shapes
/// `x: [N, d]`, `gamma, beta: [d]` → `y: [N, d]`, `μ, r: [N, 1]`
pub fn norm_forward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: Option<FloatTensor<B>>,
    eps: f64,
    centered: bool,
) -> (FloatTensor<B>, Option<FloatTensor<B>>, FloatTensor<B>) {
    let x: Tensor<B, 2> = float_tensor(x);
    let dtype = x.dtype();
    let acc = accumulation_dtype(dtype);
    let x = cast_to(x, acc);
    let (centred, mean) = if centered {
        let mean = x.clone().mean_dim(1); // [N, 1]
        (x - mean.clone(), Some(mean))
    } else {
        (x, None)
    };
    let rstd = (centred.clone().square().mean_dim(1) + eps).sqrt().recip(); // [N, 1]
    let gamma = cast_to(float_tensor::<B, 1>(gamma), acc).unsqueeze::<2>(); // [1, d]
    let y = centred * rstd.clone() * gamma; // [N, d]
    let y = match beta {
        Some(beta) => y + cast_to(float_tensor::<B, 1>(beta), acc).unsqueeze::<2>(),
        None => y,
    };
    (
        cast_to(y, dtype).into_primitive().tensor(),
        mean.map(|m| m.into_primitive().tensor()),
        rstd.into_primitive().tensor(),
    )
}

/// The gradients of a norm with respect to `x`, `γ` and, `with_beta`, `β` (each in its input's
/// dtype) from the statistics of [`norm_forward`] and the output's gradient `grad`.
///
/// # Shapes
/// `x, grad: [N, d]`, `gamma: [d]`, `mean, rstd: [N, 1]` → `[N, d]`, `[d]`(, `[d]`)
pub fn norm_backward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    mean: Option<FloatTensor<B>>,
    rstd: FloatTensor<B>,
    grad: FloatTensor<B>,
    with_beta: bool,
) -> Vec<FloatTensor<B>> {
    let x: Tensor<B, 2> = float_tensor(x);
    let gamma: Tensor<B, 1> = float_tensor(gamma);
    let (dtype, gamma_dtype) = (x.dtype(), gamma.dtype());
    let acc = accumulation_dtype(dtype);
    let [_, d] = x.dims();
    let x = cast_to(x, acc);
    let centered = mean.is_some();
    let centred = match mean {
        Some(mean) => x - float_tensor::<B, 2>(mean),
        None => x,
    };
    let rstd: Tensor<B, 2> = float_tensor(rstd);
    let x_hat = centred * rstd.clone(); // [N, d]
    let grad = cast_to(float_tensor::<B, 2>(grad), acc); // [N, d]
    let grad_beta = with_beta.then(|| grad.clone().sum_dim(0).reshape([d])); // [d]
    let grad_gamma = (grad.clone() * x_hat.clone()).sum_dim(0).reshape([d]); // [d]
    let grad_x_hat = grad * cast_to(gamma, acc).unsqueeze::<2>(); // [N, d]
    let projection = (grad_x_hat.clone() * x_hat.clone()).mean_dim(1); // [N, 1]
    let inner = if centered {
        let row_mean = grad_x_hat.clone().mean_dim(1); // [N, 1]
        grad_x_hat - row_mean - x_hat * projection
    } else {
        grad_x_hat - x_hat * projection
    }; // [N, d]
    let grad_x = cast_to(inner * rstd, dtype);
    // β shares γ's dtype (both are the norm's parameters).
    let as_param = |g: Tensor<B, 1>| cast_to(g, gamma_dtype).into_primitive().tensor();
    let mut grads = vec![grad_x.into_primitive().tensor(), as_param(grad_gamma)];
    grads.extend(grad_beta.map(as_param));
    grads
}

/// `x` as a flat `[numel]` tensor, and its shape to restore.
fn flat<B: Backend>(x: FloatTensor<B>) -> (Tensor<B, 1>, Shape) {
    use burn::tensor::TensorMetadata;
    let shape = x.shape();
    let n = shape.num_elements();
    (
        float_tensor::<B, 1>(B::float_reshape(x, Shape::new([n]))),
        shape,
    )
}

/// `x·σ(a·x·(1 + b·x²))`, the tanh GELU, in f32 at least; returned in `x`'s dtype. Any shape.
pub fn gelu_tanh_forward<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let (x, shape) = flat::<B>(x);
    let dtype = x.dtype();
    let x = cast_to(x, accumulation_dtype(dtype));
    let u = (x.clone() * x.clone() * (GELU_A * GELU_B) + GELU_A) * x.clone();
    let y = cast_to(x * sigmoid(u), dtype);
    B::float_reshape(y.into_primitive().tensor(), shape)
}

/// The tanh GELU's input gradient (in `x`'s dtype) from its input and the output's gradient.
/// Any shape.
pub fn gelu_tanh_backward<B: Backend>(x: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
    let (x, shape) = flat::<B>(x);
    let (grad, _) = flat::<B>(grad);
    let dtype = x.dtype();
    let acc = accumulation_dtype(dtype);
    let x = cast_to(x, acc);
    let x2 = x.clone() * x.clone();
    let s = sigmoid((x2.clone() * (GELU_A * GELU_B) + GELU_A) * x.clone()); // σ(u)
    let du = x2 * (3.0 * GELU_A * GELU_B) + GELU_A; // a·(1 + 3·b·x²)
    let slope = s.clone() + x * s.clone() * (s.neg() + 1.0) * du;
    let grad_x = cast_to(cast_to(grad, acc) * slope, dtype);
    B::float_reshape(grad_x.into_primitive().tensor(), shape)
}

/// [`GptBackend::fused_norm`] on the autodiff backend: [`norm_forward`] keeping the row
/// statistics, [`norm_backward`] as its backward.
pub(crate) fn autodiff_norm<B: GptBackend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    gamma: FloatTensor<Autodiff<B, C>>,
    beta: Option<FloatTensor<Autodiff<B, C>>>,
    eps: f64,
    centered: bool,
) -> FloatTensor<Autodiff<B, C>> {
    /// State kept for the backward: x and γ (as checkpointed nodes), μ and r. `N` parents:
    /// x, γ and, with a bias, β.
    #[derive(Debug)]
    struct NormBackward<const N: usize>;

    impl<B: Backend, const N: usize> Backward<B, N> for NormBackward<N> {
        type State = (NodeId, NodeId, Option<FloatTensor<B>>, FloatTensor<B>);

        fn backward(
            self,
            ops: Ops<Self::State, N>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let (x, gamma, mean, rstd) = ops.state;
            let x = checkpointer.retrieve_node_output(x);
            let gamma = checkpointer.retrieve_node_output(gamma);
            let grad = grads.consume::<B>(&ops.node);
            let computed = norm_backward::<B>(x, gamma, mean, rstd, grad, N == 3);
            for (parent, grad) in ops.parents.into_iter().zip(computed) {
                if let Some(node) = parent {
                    grads.register::<B>(node.id, grad);
                }
            }
        }
    }

    // One body for both arities (burn does not export the node type a helper would name).
    macro_rules! record {
        ($n:literal, [$($node:expr),+], $beta:expr) => {
            match NormBackward::<$n>
                .prepare::<C>([$($node),+])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let state_x = prep.checkpoint(&x);
                    let state_gamma = prep.checkpoint(&gamma);
                    let (y, mean, rstd) =
                        norm_forward::<B>(x.primitive, gamma.primitive, $beta, eps, centered);
                    prep.finish((state_x, state_gamma, mean, rstd), y)
                }
                OpsKind::UnTracked(prep) => prep.finish(B::fused_norm(
                    x.primitive,
                    gamma.primitive,
                    $beta,
                    eps,
                    centered,
                )),
            }
        };
    }

    match beta {
        Some(beta) => record!(
            3,
            [x.node.clone(), gamma.node.clone(), beta.node.clone()],
            Some(beta.primitive)
        ),
        None => record!(2, [x.node.clone(), gamma.node.clone()], None),
    }
}

/// [`GptBackend::fused_gelu_tanh`] on the autodiff backend: [`gelu_tanh_forward`],
/// [`gelu_tanh_backward`] recomputing from the input.
pub(crate) fn autodiff_gelu_tanh<B: GptBackend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    /// State kept for the backward: the input (as a checkpointed node).
    #[derive(Debug)]
    struct GeluBackward;

    impl<B: GptBackend> Backward<B, 1> for GeluBackward {
        type State = NodeId;

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let x = checkpointer.retrieve_node_output(ops.state);
            let grad = grads.consume::<B>(&ops.node);
            let [parent] = ops.parents;
            if let Some(node) = parent {
                grads.register::<B>(node.id, B::gelu_tanh_backward(x, grad));
            }
        }
    }

    match GeluBackward
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let state = prep.checkpoint(&x);
            prep.finish(state, B::fused_gelu_tanh(x.primitive))
        }
        OpsKind::UnTracked(prep) => prep.finish(B::fused_gelu_tanh(x.primitive)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpt::gelu_tanh;
    use crate::rng::SplitMix64;
    use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
    use burn::backend::Flex;
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::{DType, TensorData};

    type AB = Autodiff<Flex>;

    const EPS: f64 = 1e-5;

    /// `[rows, cols]` values `offset + N(0, spread²)` from a local generator.
    fn random<B: Backend>(
        rows: usize,
        cols: usize,
        spread: f64,
        offset: f32,
        seed: u64,
    ) -> Tensor<B, 2> {
        let values: Vec<f32> = SplitMix64::new(seed)
            .normal_vec(rows * cols, spread)
            .into_iter()
            .map(|v| v + offset)
            .collect();
        Tensor::from_data(TensorData::new(values, [rows, cols]), &Default::default())
    }

    fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.cast(DType::F32).into_data().to_vec::<f32>().unwrap()
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
    }

    fn max_abs(a: &[f32]) -> f32 {
        a.iter().fold(0f32, |m, x| m.max(x.abs()))
    }

    /// burn's ops, as the composed path runs them (LayerNorm as burn's default `layer_norm`
    /// decomposes it; RMSNorm as `Norm::forward` writes it).
    fn composed_norm<B: Backend>(
        x: Tensor<B, 2>,
        gamma: Tensor<B, 1>,
        beta: Option<Tensor<B, 1>>,
        centered: bool,
    ) -> Tensor<B, 2> {
        let y = if centered {
            let centred = x.clone() - x.mean_dim(1);
            let var = centred.clone().square().mean_dim(1);
            centred / (var + EPS).sqrt()
        } else {
            let rms = (x.clone().square().mean_dim(1) + EPS).sqrt();
            x / rms
        } * gamma.unsqueeze::<2>();
        match beta {
            Some(beta) => y + beta.unsqueeze::<2>(),
            None => y,
        }
    }

    fn fused_norm<B: GptBackend>(
        x: Tensor<B, 2>,
        gamma: Tensor<B, 1>,
        beta: Option<Tensor<B, 1>>,
        centered: bool,
    ) -> Tensor<B, 2> {
        float_tensor(B::fused_norm(
            x.into_primitive().tensor(),
            gamma.into_primitive().tensor(),
            beta.map(|b| b.into_primitive().tensor()),
            EPS,
            centered,
        ))
    }

    /// Output and the gradients of x, γ, β (as f32) of a norm in `dtype`, under an upstream
    /// gradient `w` (so that it is not all ones).
    fn norm_run<B: GptBackend + AutodiffBackend>(
        inputs: &(Tensor<B, 2>, Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 2>),
        dtype: DType,
        centered: bool,
        with_beta: bool,
        fused: bool,
    ) -> [Vec<f32>; 4] {
        let (x, gamma, beta, w) = inputs;
        let x = x.clone().cast(dtype).require_grad();
        let gamma = gamma.clone().cast(dtype).require_grad();
        let beta = beta.clone().cast(dtype).require_grad();
        let b = with_beta.then(|| beta.clone());
        let y = if fused {
            fused_norm(x.clone(), gamma.clone(), b, centered)
        } else {
            composed_norm(x.clone(), gamma.clone(), b, centered)
        };
        assert_eq!(
            y.dtype(),
            dtype,
            "the output comes back in the input's dtype"
        );
        let grads = (y.clone() * w.clone().cast(dtype)).sum().backward();
        let grad_x = x.grad(&grads).unwrap();
        assert_eq!(grad_x.dtype(), dtype);
        let grad_beta = if with_beta {
            values(beta.grad(&grads).unwrap())
        } else {
            assert!(beta.grad(&grads).is_none(), "β was not an input");
            Vec::new()
        };
        [
            values(y),
            values(grad_x),
            values(gamma.grad(&grads).unwrap()),
            grad_beta,
        ]
    }

    fn norm_inputs<B: Backend>(
        n: usize,
        d: usize,
        seed: u64,
    ) -> (Tensor<B, 2>, Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 2>) {
        (
            random(n, d, 2.0, 0.7, seed), // an offset mean: centring matters
            random::<B>(1, d, 0.2, 1.0, seed + 1).reshape([d]), // γ near 1
            random::<B>(1, d, 0.1, 0.0, seed + 2).reshape([d]),
            random(n, d, 1.0, 0.0, seed + 3),
        )
    }

    /// LayerNorm with and without β, and RMSNorm: output and every gradient as burn's ops give
    /// them.
    #[test]
    fn norms_match_composed_values_and_gradients() {
        for (n, d) in [(3, 8), (64, 384)] {
            let inputs = norm_inputs::<AB>(n, d, 11);
            for (centered, with_beta) in [(true, true), (true, false), (false, false)] {
                let want = norm_run(&inputs, DType::F32, centered, with_beta, false);
                let got = norm_run(&inputs, DType::F32, centered, with_beta, true);
                for (i, name) in ["y", "dx", "dγ", "dβ"].into_iter().enumerate() {
                    let (worst, scale) = (max_abs_diff(&got[i], &want[i]), max_abs(&want[i]));
                    assert!(
                        worst <= 1e-5 * scale.max(1e-6),
                        "[{n}, {d}] centered {centered} β {with_beta}: {name} off by {worst} (scale {scale})"
                    );
                }
            }
        }
    }

    /// The GELU's value and gradient as the composed formula gives them, over a range that
    /// includes the saturated tails.
    #[test]
    fn gelu_matches_composed_value_and_gradient() {
        let x = random::<AB>(16, 257, 3.0, 0.0, 4);
        let w = random::<AB>(16, 257, 1.0, 0.0, 5);
        let run = |fused: bool| {
            let x = x.clone().require_grad();
            let y: Tensor<AB, 2> = if fused {
                float_tensor(AB::fused_gelu_tanh(x.clone().into_primitive().tensor()))
            } else {
                gelu_tanh(x.clone())
            };
            let grads = (y.clone() * w.clone()).sum().backward();
            (values(y), values(x.grad(&grads).unwrap()))
        };
        let ((y_c, g_c), (y_f, g_f)) = (run(false), run(true));
        assert!(max_abs_diff(&y_f, &y_c) <= 1e-5 * max_abs(&y_c));
        assert!(max_abs_diff(&g_f, &g_c) <= 1e-5 * max_abs(&g_c));
    }

    /// bf16 inputs (`bf16-pure`): statistics and slopes in f32 inside keep the results within
    /// bf16's rounding of the f32 answer, closer than burn's ops all in bf16.
    #[test]
    fn bf16_inputs_keep_f32_accuracy() {
        let inputs = norm_inputs::<AB>(64, 384, 21);
        // The f32 reference sees the same bf16-representable inputs.
        let round = |t: Tensor<AB, 2>| t.cast(DType::BF16).cast(DType::F32);
        let inputs = (
            round(inputs.0),
            round(inputs.1.unsqueeze::<2>()).reshape([384]),
            round(inputs.2.unsqueeze::<2>()).reshape([384]),
            round(inputs.3),
        );
        let reference = norm_run(&inputs, DType::F32, true, true, false);
        let ours = norm_run(&inputs, DType::BF16, true, true, true);
        let composed = norm_run(&inputs, DType::BF16, true, true, false);
        for (i, name) in ["y", "dx", "dγ", "dβ"].into_iter().enumerate() {
            let scale = max_abs(&reference[i]);
            let (err_ours, err_comp) = (
                max_abs_diff(&ours[i], &reference[i]),
                max_abs_diff(&composed[i], &reference[i]),
            );
            assert!(
                err_ours <= 1e-2 * scale,
                "{name}: ours off by {err_ours} (scale {scale})"
            );
            assert!(
                err_ours <= err_comp,
                "{name}: ours {err_ours} vs composed {err_comp}"
            );
        }
        let x = round(random::<AB>(8, 512, 3.0, 0.0, 6));
        let gelu = |t: Tensor<AB, 2>| -> Vec<f32> {
            let t = t.require_grad();
            let y: Tensor<AB, 2> =
                float_tensor(AB::fused_gelu_tanh(t.clone().into_primitive().tensor()));
            let grads = y.sum().backward();
            values(t.grad(&grads).unwrap())
        };
        let (g_ref, g_bf16) = (gelu(x.clone()), gelu(x.cast(DType::BF16)));
        assert!(max_abs_diff(&g_bf16, &g_ref) <= 1e-2 * max_abs(&g_ref));
    }

    /// Without tracked inputs the ops record nothing and still compute; with only some inputs
    /// tracked, only those get gradients.
    #[test]
    fn untracked_inputs() {
        let (x, gamma, beta, _) = norm_inputs::<AB>(4, 16, 31);
        let want = values(composed_norm(
            x.clone(),
            gamma.clone(),
            Some(beta.clone()),
            true,
        ));
        let got = values(fused_norm(
            x.clone(),
            gamma.clone(),
            Some(beta.clone()),
            true,
        ));
        assert!(max_abs_diff(&got, &want) <= 1e-5 * max_abs(&want));
        let x = x.require_grad();
        let grads = fused_norm(x.clone(), gamma.clone(), Some(beta.clone()), true)
            .sum()
            .backward();
        assert!(x.grad(&grads).is_some());
        assert!(gamma.grad(&grads).is_none() && beta.grad(&grads).is_none());
        let plain = random::<AB>(4, 16, 2.0, 0.0, 32);
        let f: Tensor<AB, 2> =
            float_tensor(AB::fused_gelu_tanh(plain.clone().into_primitive().tensor()));
        let (want, got) = (values(gelu_tanh(plain)), values(f));
        assert!(max_abs_diff(&got, &want) <= 1e-6 * max_abs(&want));
    }

    /// Under burn's balanced checkpointing (which may recompute memory-bound ops instead of
    /// keeping them) the inputs come out of recorded ops and the gradients still match.
    #[test]
    fn works_under_balanced_checkpointing() {
        type Balanced = Autodiff<Flex, BalancedCheckpointing>;
        let (x, gamma, beta, w) = norm_inputs::<Balanced>(8, 32, 41);
        let run = |fused: bool| {
            let x = x.clone().require_grad();
            let gamma = gamma.clone().require_grad();
            let h = x.clone().exp().log() * 1.5; // recorded, memory-bound ops before the norm
            let y = if fused {
                let n = fused_norm(h, gamma.clone(), Some(beta.clone()), true);
                float_tensor::<Balanced, 2>(Balanced::fused_gelu_tanh(n.into_primitive().tensor()))
            } else {
                gelu_tanh(composed_norm(h, gamma.clone(), Some(beta.clone()), true))
            };
            let grads = (y * w.clone()).sum().backward();
            (
                values(x.grad(&grads).unwrap()),
                values(gamma.grad(&grads).unwrap()),
            )
        };
        let ((x_f, g_f), (x_c, g_c)) = (run(true), run(false));
        assert!(max_abs_diff(&x_f, &x_c) <= 1e-5 * max_abs(&x_c));
        assert!(max_abs_diff(&g_f, &g_c) <= 1e-5 * max_abs(&g_c));
    }
}
