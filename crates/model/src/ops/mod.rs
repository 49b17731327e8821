//! The operations the GPT needs beyond burn's: causal attention and cross-entropy, each a
//! single differentiable operation with a backward of its own.
//!
//! burn 0.21's autodiff backend differentiates both op by op: attention as matmul, mask, max,
//! exp, sum and divide; the loss as `log_softmax` then `gather`. Each recorded op keeps its
//! input for the backward, so a step writes and keeps several `[B, nh, T, T]` tensors per layer,
//! and writes several `[B·T, V]` temporaries at the head. [`GptBackend`] gives both a
//! hand-written backward on [`Autodiff`] that recomputes what it needs from the inputs instead.

pub mod attention;
pub(crate) mod cpu_kernels;
pub mod cross_entropy;
pub mod layer_ops;

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::Autodiff;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{DType, Tensor, TensorMetadata, TensorPrimitive};

use attention::causal_options;

/// A burn backend the GPT runs on: burn's [`Backend`] plus causal attention and cross-entropy
/// as single differentiable operations.
///
/// Inference backends use the defaults (burn's attention kernel; log-sum-exp minus the target's
/// logit). [`Autodiff`] overrides both with backward passes of their own (see [`attention`] and
/// [`cross_entropy`]). Implemented for the backends hyperclone builds
/// with (flex always; cuda, wgpu and ndarray behind this crate's features of those names); another backend
/// needs one line here, `impl GptBackend for ThatBackend {}`.
pub trait GptBackend: Backend {
    /// `softmax(q·kᵀ/√hs + causal mask)·v`.
    ///
    /// # Shapes
    /// `q, k, v: [B, nh, T, hs]` → `[B, nh, T, hs]`
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        backend_causal_attention::<Self>(q, k, v)
    }

    /// The gradients of [`GptBackend::causal_attention`] with respect to q, k and v, from its
    /// inputs, its output and the output's gradient; by default
    /// [`attention::causal_attention_backward`].
    ///
    /// # Shapes
    /// `q, k, v, out, grad_out: [B, nh, T, hs]` → three `[B, nh, T, hs]`
    fn causal_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 3] {
        attention::causal_attention_backward::<Self>(q, k, v, out, grad_out)
    }

    /// Mean cross-entropy of `logits` against the target ids.
    ///
    /// # Shapes
    /// `logits: [N, V]`, `targets: [N]` → `[1]`
    fn cross_entropy(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        Self::cross_entropy_forward(logits, targets).0
    }

    /// The mean cross-entropy and each row's log-sum-exp (kept for the backward); by default
    /// [`cross_entropy::cross_entropy_forward`].
    ///
    /// # Shapes
    /// `logits: [N, V]`, `targets: [N]` → (`[1]`, `[N, 1]`)
    fn cross_entropy_forward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        cross_entropy::cross_entropy_forward::<Self>(logits, targets)
    }

    /// The gradient of the mean cross-entropy with respect to the logits, given the incoming
    /// gradient `grad`; by default [`cross_entropy::cross_entropy_backward`].
    ///
    /// # Shapes
    /// `logits: [N, V]`, `lse: [N, 1]`, `targets: [N]`, `grad: [1]` → `[N, V]`
    fn cross_entropy_backward(
        logits: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        targets: IntTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        cross_entropy::cross_entropy_backward::<Self>(logits, lse, targets, grad)
    }

    /// LayerNorm (`centered`) or RMSNorm over the last dimension: `x̂·γ + β`.
    ///
    /// # Shapes
    /// `x: [N, d]`, `gamma, beta: [d]` → `[N, d]`
    fn fused_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: Option<FloatTensor<Self>>,
        eps: f64,
        centered: bool,
    ) -> FloatTensor<Self> {
        // burn's own LayerNorm op where it is exact enough: backends may have a kernel for it
        // (flex has one); in half precision the statistics are kept in f32 here.
        if centered && accumulation_dtype(x.dtype()) == x.dtype() {
            return Self::layer_norm(x, gamma, beta, eps);
        }
        layer_ops::norm_forward::<Self>(x, gamma, beta, eps, centered).0
    }

    /// The tanh GELU, `x·σ(2·√(2/π)·x·(1 + 0.044715·x²))`, elementwise (any shape).
    fn fused_gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        layer_ops::gelu_tanh_forward::<Self>(x)
    }

    /// The tanh GELU's input gradient from its input and the output's gradient; by default
    /// [`layer_ops::gelu_tanh_backward`]. Any shape.
    fn gelu_tanh_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        layer_ops::gelu_tanh_backward::<Self>(x, grad)
    }
}

/// A training backend: autodiff over a [`GptBackend`], itself a [`GptBackend`].
pub trait GptAutodiffBackend: AutodiffBackend<InnerBackend: GptBackend> + GptBackend {}

impl<B> GptAutodiffBackend for B
where
    B: AutodiffBackend + GptBackend,
    B::InnerBackend: GptBackend,
{
}

impl GptBackend for burn::backend::Flex {
    // Attention, the loss and the GELU in f32 as plain-Rust loops ([`cpu_kernels`]); other
    // dtypes run the generic ops. Measured on 2 cores (benches/results/cpu-throughput.md,
    // section 9): attention forward + backward 2–3× faster than burn's composed attention and
    // 1.6–1.9× faster than flex's attention kernel with the generic backward, at every length
    // tried (T = 64 to 1024).

    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        cpu_kernels::flex::causal_attention_forward(&q, &k, &v)
            .unwrap_or_else(|| backend_causal_attention::<Self>(q, k, v))
    }

    fn causal_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 3] {
        cpu_kernels::flex::causal_attention_backward(&q, &k, &v, &out, &grad_out)
            .unwrap_or_else(|| attention::causal_attention_backward::<Self>(q, k, v, out, grad_out))
    }

    fn cross_entropy_forward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        cpu_kernels::flex::cross_entropy_forward(&logits, &targets)
            .unwrap_or_else(|| cross_entropy::cross_entropy_forward::<Self>(logits, targets))
    }

    fn cross_entropy_backward(
        logits: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        targets: IntTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        cpu_kernels::flex::cross_entropy_backward(&logits, &lse, &targets, &grad).unwrap_or_else(
            || cross_entropy::cross_entropy_backward::<Self>(logits, lse, targets, grad),
        )
    }

    fn fused_gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        cpu_kernels::flex::gelu_tanh_forward(&x)
            .unwrap_or_else(|| layer_ops::gelu_tanh_forward::<Self>(x))
    }

    fn gelu_tanh_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        cpu_kernels::flex::gelu_tanh_backward(&x, &grad)
            .unwrap_or_else(|| layer_ops::gelu_tanh_backward::<Self>(x, grad))
    }
}

#[cfg(feature = "ndarray")]
impl GptBackend for burn::backend::NdArray {}

// The GPU backends hyperclone's CLI builds: f32 (and mixed bf16) and, on CUDA, pure bf16.
#[cfg(feature = "cuda")]
impl GptBackend for burn::backend::Cuda<f32> {}
#[cfg(feature = "cuda")]
impl GptBackend for burn::backend::Cuda<burn::tensor::bf16> {}
#[cfg(feature = "wgpu")]
impl GptBackend for burn::backend::Wgpu<f32> {}

/// The backend's own attention kernel with GPT's options (causal, `1/√hs`).
///
/// # Shapes
/// `q, k, v: [B, nh, T, hs]` → `[B, nh, T, hs]`
fn backend_causal_attention<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
) -> FloatTensor<B> {
    B::attention(q, k, v, None, None, causal_options())
}

/// `x` in `dtype`; no operation (and no autodiff node) when it already is.
pub fn cast_to<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if x.dtype() == dtype {
        x
    } else {
        x.cast(dtype)
    }
}

/// The dtype the ops keep softmaxes and their gradients in for inputs of `dtype`: f32 at least.
pub(crate) fn accumulation_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        dtype
    } else {
        DType::F32
    }
}

/// A backend's float primitive as a tensor.
pub fn float_tensor<B: Backend, const D: usize>(x: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

impl<B: GptBackend, C: CheckpointStrategy> GptBackend for Autodiff<B, C> {
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        attention::autodiff_causal_attention::<B, C>(q, k, v)
    }

    fn cross_entropy(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        cross_entropy::autodiff_cross_entropy::<B, C>(logits, targets)
    }

    fn fused_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: Option<FloatTensor<Self>>,
        eps: f64,
        centered: bool,
    ) -> FloatTensor<Self> {
        layer_ops::autodiff_norm::<B, C>(x, gamma, beta, eps, centered)
    }

    fn fused_gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        layer_ops::autodiff_gelu_tanh::<B, C>(x)
    }
}
