//! The run-time choices of how a [`Gpt`](crate::Gpt) computes, as one value: the mixed-precision
//! compute dtype and the kernels that attention, the loss, the norms and the GELU run. None of
//! them is part of the weights or the checkpoint, and every choice computes the same function
//! (to float rounding); they trade speed and memory.

use burn::tensor::FloatDType;

use crate::ops::attention::AttentionKernel;
use crate::ops::cross_entropy::CrossEntropyKernel;
use crate::ops::layer_ops::LayerOpsKernel;

/// How a model computes: set on a model with [`Gpt::with_kernels`](crate::Gpt::with_kernels),
/// read back with [`Gpt::kernels`](crate::Gpt::kernels). The default is f32 everywhere with
/// every fused kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Kernels {
    /// Mixed precision: the dtype of the matmuls, attention and MLP activations (`None`: the
    /// parameters' dtype everywhere).
    pub compute_dtype: Option<FloatDType>,
    /// How training differentiates attention; inference runs the same kernel either way.
    /// [`AttentionKernel::Auto`] may be given and means what [`AttentionKernel::resolve`] says.
    pub attention: AttentionKernel,
    /// How training differentiates the loss; the value is the same either way.
    pub cross_entropy: CrossEntropyKernel,
    /// How the norms and the GELU run.
    pub layer_ops: LayerOpsKernel,
}

impl Kernels {
    /// These kernels with `attention` resolved ([`AttentionKernel::resolve`]): what actually
    /// runs, for records and comparisons.
    pub fn resolved(self) -> Self {
        Self {
            attention: self.attention.resolve(),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_f32_with_fused_kernels_and_auto_resolves_to_fused() {
        let k = Kernels::default();
        assert_eq!(k.compute_dtype, None);
        assert_eq!(k.cross_entropy, CrossEntropyKernel::Fused);
        assert_eq!(k.layer_ops, LayerOpsKernel::Fused);
        assert_eq!(k.resolved().attention, AttentionKernel::Fused);
        let composed = Kernels {
            attention: AttentionKernel::Composed,
            ..k
        };
        assert_eq!(composed.resolved(), composed);
    }
}
