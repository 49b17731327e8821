//! Mean cross-entropy as one differentiable operation ([`GptBackend::cross_entropy`]).
//!
//! Composed, burn records `log_softmax` (max, subtract, exp, sum, log, subtract) and `gather`,
//! keeps their `[N, V]` inputs, and in the backward scatters the gathered gradient into a zero
//! `[N, V]` tensor before running `log_softmax`'s backward. Here the forward keeps only each
//! row's log-sum-exp, and the backward is one elementwise pass and a sparse scatter: for the
//! mean over `N` rows and an incoming gradient `g`,
//!
//! ```text
//! loss    = mean_i (lse_i − logits[i, t_i]),   lse_i = log Σ_j exp(logits[i, j])
//! dlogits = (exp(logits − lse) − onehot(t)) · g / N
//! ```

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorPrimitive};

use super::GptBackend;

fn float<B: Backend, const D: usize>(x: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

/// The mean loss and each row's log-sum-exp.
///
/// # Shapes
/// `logits: [N, V]`, `targets: [N]` → (`[1]`, `[N, 1]`)
pub fn cross_entropy_forward<B: Backend>(
    logits: FloatTensor<B>,
    targets: IntTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let logits: Tensor<B, 2> = float(logits);
    let targets = Tensor::<B, 1, Int>::from_primitive(targets);
    let [n, _] = logits.dims();
    let max = logits.clone().max_dim(1); // [N, 1]
    let sum_exp = (logits.clone() - max.clone()).exp().sum_dim(1); // [N, 1]
    let lse = sum_exp.log() + max; // [N, 1]
    let picked = logits.gather(1, targets.reshape([n, 1])); // [N, 1]
    let loss = (lse.clone() - picked).mean(); // [1]
    (
        loss.into_primitive().tensor(),
        lse.into_primitive().tensor(),
    )
}

/// The gradient of the mean loss with respect to the logits, given the incoming gradient
/// `grad` of the loss.
///
/// # Shapes
/// `logits: [N, V]`, `lse: [N, 1]`, `targets: [N]`, `grad: [1]` → `[N, V]`
pub fn cross_entropy_backward<B: Backend>(
    logits: FloatTensor<B>,
    lse: FloatTensor<B>,
    targets: IntTensor<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let logits: Tensor<B, 2> = float(logits);
    let lse: Tensor<B, 2> = float(lse);
    let targets = Tensor::<B, 1, Int>::from_primitive(targets);
    let [n, _] = logits.dims();
    let scale = float::<B, 1>(grad).reshape([1, 1]) / n as f64; // [1, 1] = g / N
    let probs_scaled = (logits - lse).exp() * scale.clone(); // [N, V] = softmax · g / N
    let minus_scale = scale.neg().expand([n, 1]); // [N, 1]
    probs_scaled
        .scatter(
            1,
            targets.reshape([n, 1]),
            minus_scale,
            IndexingUpdateOp::Add,
        )
        .into_primitive()
        .tensor()
}

/// [`GptBackend::cross_entropy`] on the autodiff backend: [`cross_entropy_forward`] keeping the
/// log-sum-exp, [`cross_entropy_backward`] as its backward.
pub(crate) fn autodiff_cross_entropy<B: GptBackend, C: CheckpointStrategy>(
    logits: FloatTensor<Autodiff<B, C>>,
    targets: IntTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    /// State kept for the backward: the logits (as a checkpointed node), the log-sum-exp and
    /// the targets.
    #[derive(Debug)]
    struct CrossEntropyBackward;

    impl<B: Backend> Backward<B, 1> for CrossEntropyBackward {
        type State = (NodeId, FloatTensor<B>, IntTensor<B>);

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let (logits, lse, targets) = ops.state;
            let logits = checkpointer.retrieve_node_output(logits);
            let grad = grads.consume::<B>(&ops.node);
            let [parent] = ops.parents;
            if let Some(node) = parent {
                let grad_logits = cross_entropy_backward::<B>(logits, lse, targets, grad);
                grads.register::<B>(node.id, grad_logits);
            }
        }
    }

    match CrossEntropyBackward
        .prepare::<C>([logits.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let state_logits = prep.checkpoint(&logits);
            let (loss, lse) = cross_entropy_forward::<B>(logits.primitive, targets.clone());
            prep.finish((state_logits, lse, targets), loss)
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(cross_entropy_forward::<B>(logits.primitive, targets).0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::activation::log_softmax;
    use burn::tensor::{Distribution, TensorData};

    type AB = Autodiff<Flex>;

    /// burn's composed loss: `log_softmax`, `gather`, mean, negate.
    fn composed(logits: Tensor<AB, 2>, targets: Tensor<AB, 1, Int>) -> Tensor<AB, 1> {
        let [n, _] = logits.dims();
        let picked = log_softmax(logits, 1).gather(1, targets.reshape([n, 1])); // [N, 1]
        picked.mean().neg()
    }

    fn ours(logits: Tensor<AB, 2>, targets: Tensor<AB, 1, Int>) -> Tensor<AB, 1> {
        let loss = AB::cross_entropy(logits.into_primitive().tensor(), targets.into_primitive());
        Tensor::from_primitive(TensorPrimitive::Float(loss))
    }

    fn case(n: usize, v: usize, spread: f64, seed: u64) -> (Tensor<AB, 2>, Tensor<AB, 1, Int>) {
        <Flex as Backend>::seed(&Default::default(), seed);
        let device = Default::default();
        let logits = Tensor::<AB, 2>::random([n, v], Distribution::Normal(0.0, spread), &device);
        let ids: Vec<i64> = (0..n).map(|i| ((i * 7919 + 13) % v) as i64).collect();
        let targets = Tensor::<AB, 1, Int>::from_data(TensorData::new(ids, [n]), &device);
        (logits, targets)
    }

    /// Loss and gradient against burn's composed loss, scaled by an upstream factor so the
    /// incoming gradient is not 1; large logits (spread 30) check the log-sum-exp's shift.
    #[test]
    fn matches_composed_loss_and_gradient() {
        for (n, v, spread) in [(5, 7, 1.0), (64, 4096, 3.0), (33, 50, 30.0)] {
            let (logits, targets) = case(n, v, spread, 3);
            let run = |use_ours: bool| {
                let x = logits.clone().require_grad();
                let loss = if use_ours {
                    ours(x.clone(), targets.clone())
                } else {
                    composed(x.clone(), targets.clone())
                };
                let grads = (loss.clone() * 2.5).backward();
                let grad = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
                (loss.into_scalar(), grad)
            };
            let (loss_c, grad_c) = run(false);
            let (loss_o, grad_o) = run(true);
            assert!(
                (loss_c - loss_o).abs() <= 1e-5 * loss_c.abs(),
                "[{n}, {v}]: loss {loss_o} vs composed {loss_c}"
            );
            let scale = grad_c.iter().fold(0f32, |m, g| m.max(g.abs()));
            let worst = grad_c
                .iter()
                .zip(&grad_o)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                worst <= 1e-5 * scale,
                "[{n}, {v}]: gradient off by {worst} (scale {scale})"
            );
        }
    }

    /// The textbook values: uniform logits give ln V and a gradient of (1/V − onehot)/N.
    #[test]
    fn uniform_logits_give_ln_v_and_the_textbook_gradient() {
        let (n, v) = (4, 10);
        let device = Default::default();
        let x = Tensor::<AB, 2>::zeros([n, v], &device).require_grad();
        let targets =
            Tensor::<AB, 1, Int>::from_data(TensorData::new(vec![0i64, 3, 3, 9], [n]), &device);
        let loss = ours(x.clone(), targets);
        let grads = loss.clone().backward();
        assert!((loss.into_scalar() - (v as f32).ln()).abs() < 1e-6);
        let grad = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        for (i, t) in [0usize, 3, 3, 9].into_iter().enumerate() {
            for j in 0..v {
                let want = (1.0 / v as f32 - f32::from(u8::from(j == t))) / n as f32;
                assert!((grad[i * v + j] - want).abs() < 1e-7, "[{i}, {j}]");
            }
        }
    }

    /// Without a tracked input the op records nothing and still returns the loss.
    #[test]
    fn untracked_logits_give_the_loss() {
        let (logits, targets) = case(6, 9, 1.0, 1);
        let want = composed(logits.clone(), targets.clone()).into_scalar();
        let got = ours(logits, targets).into_scalar();
        assert!((want - got).abs() <= 1e-6 * want.abs());
    }
}
