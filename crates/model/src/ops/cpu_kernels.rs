//! Causal attention, the loss and the GELU as plain-Rust loops for the CPU backend (flex), in
//! f32: what `GptBackend` runs on flex (module `flex` converts its tensors).
//!
//! burn's flex backend runs the generic versions of these ops ([`super::attention`],
//! [`super::cross_entropy`], [`super::layer_ops`]) as one pass per tensor op, each writing a
//! temporary and the exponentials calling libm's scalar `expf`: on 2 cores the loss of
//! cpu-small (`[1024, 4096]` logits) took 24 ms of a 270 ms step, its four GELUs 29 ms and its
//! four attentions 66–80 ms (`benches/results/cpu-throughput.md`, section 9). Here each is one
//! or two passes over rows, chunks or heads, in parallel (rayon, flex's own thread pool), with
//! an `exp` written so that the compiler vectorises it. Attention runs head by head, row by
//! row, without a `[T, T]` matrix: scores and output as `axpy` loops over transposed keys and
//! values, the backward recomputing each softmax row.
//!
//! Every kernel uses only `+ − × ÷` and comparisons, no fused multiply-add, so its result is
//! the same bit for bit whichever SIMD width the CPU offers (`with_simd!` picks AVX2 at run
//! time where there is one) and whatever the number of threads (the work is split by rows or
//! heads, never by a reduction). NaN in the inputs propagates to the outputs (a NaN logit gives
//! a NaN loss), so a diverging run still stops on a non-finite loss. Two harmless differences
//! from the generic ops: `exp` saturates at `e^−87` instead of reaching 0 (a logit at −∞ gets a
//! probability of ~1e−38, not 0), and the GELU of −∞ is −∞ rather than NaN.

use rayon::prelude::*;

use super::layer_ops;

/// Elements one parallel task handles at least (below this, splitting costs more than it saves).
const MIN_TASK_ELEMENTS: usize = 1 << 14;

/// `e^x` in f32, within 2 ulp of the exact value over the normal range (Cephes `expf`):
/// `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, `e^r` by a degree-6 polynomial, `2^n` built in the
/// exponent bits. Inputs below −87 give `e^−87` (≈ 1.6e−38) instead of a denormal or zero,
/// inputs above 88 give `e^88`: both far beyond what a softmax or a sigmoid can resolve. NaN
/// gives NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n·LN2_HI is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2^23: adding it rounds to an integer, kept in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // Comparisons, not `min`/`max`, so that NaN passes through.
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND; // round(x / ln 2)
    let n_bits = shifted.to_bits() as i32 - ROUND.to_bits() as i32; // the same n, as an integer
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_2e-4_f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // 2^n for n in [−126, 127]: the biased exponent alone.
    let two_n = f32::from_bits(((n_bits + 127) << 23) as u32);
    e_r * two_n
}

/// Defines `fn $name(args) { body }` so that its body runs compiled for AVX2 where the CPU has
/// it (8 f32 lanes instead of SSE2's 4), else as compiled. Only AVX2, not FMA: no contraction.
macro_rules! with_simd {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) {
            #[allow(clippy::too_many_arguments)]
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2 (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// Rows per parallel task for rows of `width` elements.
fn rows_per_task(width: usize) -> usize {
    MIN_TASK_ELEMENTS.div_ceil(width.max(1)).max(1)
}

/// Maximum and `Σ exp(x − max)` of a row, in eight lanes so that both vectorise. NaN in the
/// row makes the sum NaN.
#[inline(always)]
fn row_max_and_sum_exp(row: &[f32]) -> (f32, f32) {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = if v > *lane { v } else { *lane };
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &v in lanes.iter().chain(tail) {
        max = if v > max { v } else { max };
    }
    let mut sums = [0.0_f32; 8];
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (sum, &v) in sums.iter_mut().zip(chunk) {
            *sum += exp(v - max);
        }
    }
    let mut sum = sums.iter().sum::<f32>();
    for &v in tail {
        sum += exp(v - max);
    }
    (max, sum)
}

/// The target's index in a row of `vocab` logits.
///
/// # Panics
/// On a target outside the vocabulary (the data pipeline checks ids against the model's
/// vocabulary before training; the generic op's `gather` panics likewise).
fn target_index(target: i64, vocab: usize) -> usize {
    match usize::try_from(target) {
        Ok(t) if t < vocab => t,
        _ => panic!("cross-entropy: target id {target} outside the vocabulary of {vocab}"),
    }
}

with_simd! {
    /// Each row's log-sum-exp and target logit.
    fn cross_entropy_forward_rows(
        rows: &[f32],
        vocab: usize,
        lse: &mut [f32],
        picked: &mut [f32],
        targets: &[i64],
    ) {
        for (((row, lse), picked), &target) in
            rows.chunks_exact(vocab).zip(lse).zip(picked).zip(targets)
        {
            let (max, sum) = row_max_and_sum_exp(row);
            *lse = max + sum.ln();
            *picked = row[target_index(target, vocab)];
        }
    }
}

/// Mean cross-entropy of `[rows, vocab]` logits (row-major) against one target per row, and
/// each row's log-sum-exp. The mean is summed in f64 in row order.
///
/// # Panics
/// If `vocab` is 0 or the lengths disagree, or on a target outside the vocabulary.
pub fn cross_entropy_forward(logits: &[f32], vocab: usize, targets: &[i64]) -> (f32, Vec<f32>) {
    assert_eq!(
        logits.len(),
        vocab * targets.len(),
        "cross-entropy: logits and targets disagree"
    );
    let mut lse = vec![0.0_f32; targets.len()];
    let mut picked = vec![0.0_f32; targets.len()];
    let per_task = rows_per_task(vocab);
    logits
        .par_chunks(vocab * per_task)
        .zip(lse.par_chunks_mut(per_task))
        .zip(picked.par_chunks_mut(per_task))
        .zip(targets.par_chunks(per_task))
        .for_each(|(((rows, lse), picked), targets)| {
            cross_entropy_forward_rows(rows, vocab, lse, picked, targets)
        });
    let total: f64 = lse
        .iter()
        .zip(&picked)
        .map(|(&l, &p)| f64::from(l - p))
        .sum();
    ((total / targets.len() as f64) as f32, lse)
}

with_simd! {
    /// Rows of `(exp(logits − lse) − onehot(target)) · scale`.
    fn cross_entropy_backward_rows(
        out: &mut [f32],
        rows: &[f32],
        vocab: usize,
        lse: &[f32],
        targets: &[i64],
        scale: f32,
    ) {
        for (((out, row), &lse), &target) in out
            .chunks_exact_mut(vocab)
            .zip(rows.chunks_exact(vocab))
            .zip(lse)
            .zip(targets)
        {
            for (o, &v) in out.iter_mut().zip(row) {
                *o = exp(v - lse) * scale;
            }
            out[target_index(target, vocab)] -= scale;
        }
    }
}

/// The gradient of [`cross_entropy_forward`]'s mean loss with respect to the logits, given
/// each row's log-sum-exp and the incoming gradient `grad` of the loss:
/// `(exp(logits − lse) − onehot(target)) · grad / rows`.
pub fn cross_entropy_backward(
    logits: &[f32],
    vocab: usize,
    lse: &[f32],
    targets: &[i64],
    grad: f32,
) -> Vec<f32> {
    assert_eq!(
        logits.len(),
        vocab * targets.len(),
        "cross-entropy: logits and targets disagree"
    );
    assert_eq!(
        lse.len(),
        targets.len(),
        "cross-entropy: one log-sum-exp per row"
    );
    let scale = grad / targets.len() as f32;
    let mut out = vec![0.0_f32; logits.len()];
    let per_task = rows_per_task(vocab);
    out.par_chunks_mut(vocab * per_task)
        .zip(logits.par_chunks(vocab * per_task))
        .zip(lse.par_chunks(per_task))
        .zip(targets.par_chunks(per_task))
        .for_each(|(((out, rows), lse), targets)| {
            cross_entropy_backward_rows(out, rows, vocab, lse, targets, scale)
        });
    out
}

/// `y += a·x`, elementwise (vectorises).
#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// `Σ a·b` in eight lanes (vectorises; the lanes are summed in a fixed order).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0_f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in ca.zip(cb) {
        for ((lane, &x), &y) in lanes.iter_mut().zip(ca).zip(cb) {
            *lane += x * y;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// A `[B, nh, T, hs]` f32 tensor read where it lies: any strides for the first three
/// dimensions, rows of `hs` contiguous values. The q, k and v of a GPT block are views into
/// its `[B, T, 3·d]` projection (heads split off, then swapped with time); reading them in
/// place saves three strided copies per layer.
#[derive(Clone, Copy, Debug)]
pub struct Heads<'a> {
    /// The storage the view reads from.
    pub data: &'a [f32],
    /// Index of element `[0, 0, 0, 0]` in `data`.
    pub offset: usize,
    /// Strides of the batch, head and time dimensions (the last dimension's is 1).
    pub strides: [usize; 3],
    /// `[B, nh, T, hs]`.
    pub shape: [usize; 4],
}

impl<'a> Heads<'a> {
    /// A contiguous `[B, nh, T, hs]` tensor.
    pub fn contiguous(data: &'a [f32], shape: [usize; 4]) -> Self {
        let [_, nh, t, hs] = shape;
        assert_eq!(
            data.len(),
            shape.iter().product::<usize>(),
            "heads: shape and data disagree"
        );
        Heads {
            data,
            offset: 0,
            strides: [nh * t * hs, t * hs, hs],
            shape,
        }
    }

    /// Head `index` of the `B·nh` heads (batch-major), as `[T, hs]` rows.
    fn head(&self, index: usize) -> Head<'a> {
        let [_, nh, t, hs] = self.shape;
        let start = self.offset + (index / nh) * self.strides[0] + (index % nh) * self.strides[1];
        let end = start + (t - 1) * self.strides[2] + hs;
        Head {
            data: &self.data[start..end],
            row_stride: self.strides[2],
            hs,
        }
    }
}

/// One head of [`Heads`]: `T` rows of `hs` values, `row_stride` apart.
#[derive(Clone, Copy)]
struct Head<'a> {
    data: &'a [f32],
    row_stride: usize,
    hs: usize,
}

impl<'a> Head<'a> {
    #[inline(always)]
    fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.row_stride..i * self.row_stride + self.hs]
    }

    /// The head transposed into `out`: `[hs, t]`, row `d` holding dimension `d` of every time step.
    #[inline(always)]
    fn transpose_into(&self, t: usize, out: &mut [f32]) {
        for i in 0..t {
            for (d, &v) in self.row(i).iter().enumerate() {
                out[d * t + i] = v;
            }
        }
    }
}

/// Row `i` of the causal softmax `P = softmax(q·kᵀ·scale)`, keys `0..=i`, into `p[..=i]`,
/// from the transposed keys `kt: [hs, t]`.
#[inline(always)]
fn causal_softmax_row(q_row: &[f32], kt: &[f32], t: usize, i: usize, scale: f32, p: &mut [f32]) {
    let p = &mut p[..=i];
    p.fill(0.0);
    for (d, &q) in q_row.iter().enumerate() {
        axpy(p, q * scale, &kt[d * t..d * t + i + 1]);
    }
    let (max, sum) = row_max_and_sum_exp(p);
    let inv = 1.0 / sum;
    for v in p.iter_mut() {
        *v = exp(*v - max) * inv;
    }
}

with_simd! {
    /// One head of causal attention, `softmax(q·kᵀ/√hs + causal mask)·v`, into `out`
    /// (`[t, hs]`, contiguous).
    fn causal_attention_forward_head(q: Head<'_>, k: Head<'_>, v: Head<'_>, out: &mut [f32]) {
        let (t, hs) = (out.len() / q.hs, q.hs);
        let scale = 1.0 / (hs as f32).sqrt();
        let mut kt = vec![0.0_f32; hs * t];
        k.transpose_into(t, &mut kt);
        let mut p = vec![0.0_f32; t];
        for (i, out_row) in out.chunks_exact_mut(hs).enumerate() {
            causal_softmax_row(q.row(i), &kt, t, i, scale, &mut p);
            out_row.fill(0.0);
            for (j, &p) in p[..=i].iter().enumerate() {
                axpy(out_row, p, v.row(j));
            }
        }
    }
}

with_simd! {
    /// The gradients of one head of causal attention with respect to q, k and v, written to
    /// `grads = [dq; dk; dv]` (`[3·t, hs]`, contiguous), the softmax recomputed row by row.
    fn causal_attention_backward_head(
        q: Head<'_>,
        k: Head<'_>,
        v: Head<'_>,
        out: Head<'_>,
        grad_out: Head<'_>,
        grads: &mut [f32],
    ) {
        let hs = q.hs;
        let t = grads.len() / (3 * hs);
        let scale = 1.0 / (hs as f32).sqrt();
        let (grad_q, rest) = grads.split_at_mut(t * hs);
        let (grad_k, grad_v) = rest.split_at_mut(t * hs);
        grad_k.fill(0.0);
        grad_v.fill(0.0);
        let mut kt = vec![0.0_f32; hs * t];
        let mut vt = vec![0.0_f32; hs * t];
        k.transpose_into(t, &mut kt);
        v.transpose_into(t, &mut vt);
        let (mut p, mut grad_s) = (vec![0.0_f32; t], vec![0.0_f32; t]);
        for i in 0..t {
            let (q_row, grad_out_row) = (q.row(i), grad_out.row(i));
            causal_softmax_row(q_row, &kt, t, i, scale, &mut p);
            // dP_ij = dO_i·v_j, then dS_ij = P_ij·(dP_ij − dO_i·O_i)
            let grad_s = &mut grad_s[..=i];
            grad_s.fill(0.0);
            for (d, &g) in grad_out_row.iter().enumerate() {
                axpy(grad_s, g, &vt[d * t..d * t + i + 1]);
            }
            let row_dot = dot(grad_out_row, out.row(i));
            for (ds, &p) in grad_s.iter_mut().zip(&p[..=i]) {
                *ds = p * (*ds - row_dot);
            }
            let grad_q_row = &mut grad_q[i * hs..(i + 1) * hs];
            grad_q_row.fill(0.0);
            for (j, (&ds, &p)) in grad_s.iter().zip(&p[..=i]).enumerate() {
                let key = j * hs..(j + 1) * hs;
                axpy(grad_q_row, ds * scale, k.row(j));
                axpy(&mut grad_k[key.clone()], ds * scale, q_row);
                axpy(&mut grad_v[key], p, grad_out_row);
            }
        }
    }
}

/// `[B, nh, T, hs]` values laid out head after head (`per_head`, `head_len = T·hs` each, as
/// the kernels write them) copied into token-major order `[B, T, nh, hs]`, in parallel over
/// the batch: the layout the block reads the attention output in (`[B, T, nh·hs]`).
fn token_major(
    per_head: &[f32],
    stride: usize,
    head_len: usize,
    [b, nh, t, hs]: [usize; 4],
) -> Vec<f32> {
    let mut out = vec![0.0_f32; b * t * nh * hs];
    out.par_chunks_mut(t * nh * hs)
        .enumerate()
        .for_each(|(batch, out)| {
            for h in 0..nh {
                let head = &per_head[(batch * nh + h) * stride..][..head_len];
                for (i, row) in head.chunks_exact(hs).enumerate() {
                    out[(i * nh + h) * hs..][..hs].copy_from_slice(row);
                }
            }
        });
    out
}

/// Causal attention `softmax(q·kᵀ/√hs + causal mask)·v` over the `B·nh` heads of q, k, v
/// (`[B, nh, T, hs]` each), one parallel task per head. The output comes back token-major,
/// `[B, T, nh, hs]`.
///
/// # Panics
/// If the shapes disagree or `T·hs` is 0.
pub fn causal_attention_forward(q: Heads<'_>, k: Heads<'_>, v: Heads<'_>) -> Vec<f32> {
    let shape = q.shape;
    assert!(
        k.shape == shape && v.shape == shape,
        "attention: q, k and v disagree"
    );
    let [b, nh, t, hs] = shape;
    let head = t * hs;
    let mut per_head = vec![0.0_f32; b * nh * head];
    per_head
        .par_chunks_mut(head)
        .enumerate()
        .for_each(|(h, out)| causal_attention_forward_head(q.head(h), k.head(h), v.head(h), out));
    token_major(&per_head, head, head, shape)
}

/// The gradients of [`causal_attention_forward`] with respect to q, k and v, from its inputs,
/// its output and the output's gradient (`[B, nh, T, hs]` views each): one pass per head, `P`
/// recomputed from q and k (as in [`super::attention::causal_attention_backward`], without
/// the `[T, T]` matrices). Each gradient comes back token-major, `[B, T, nh, hs]`.
pub fn causal_attention_backward(
    q: Heads<'_>,
    k: Heads<'_>,
    v: Heads<'_>,
    out: Heads<'_>,
    grad_out: Heads<'_>,
) -> [Vec<f32>; 3] {
    let shape = q.shape;
    assert!(
        [k.shape, v.shape, out.shape, grad_out.shape]
            .iter()
            .all(|&s| s == shape),
        "attention backward: inputs disagree"
    );
    let [b, nh, t, hs] = shape;
    let head = t * hs;
    // Per head [dq; dk; dv] side by side, reordered after.
    let mut grads = vec![0.0_f32; 3 * b * nh * head];
    grads
        .par_chunks_mut(3 * head)
        .enumerate()
        .for_each(|(h, grads)| {
            causal_attention_backward_head(
                q.head(h),
                k.head(h),
                v.head(h),
                out.head(h),
                grad_out.head(h),
                grads,
            )
        });
    [0, 1, 2].map(|part| token_major(&grads[part * head..], 3 * head, head, shape))
}

/// The GELU's constants of [`super::layer_ops`] in f32: `a`, `a·b` and `3·a·b`.
const GELU_A: f32 = layer_ops::GELU_A as f32;
const GELU_AB: f32 = (layer_ops::GELU_A * layer_ops::GELU_B) as f32;
const GELU_3AB: f32 = (3.0 * layer_ops::GELU_A * layer_ops::GELU_B) as f32;

/// `σ(u)` with `u = a·x·(1 + b·x²)`.
#[inline(always)]
fn gelu_gate(x: f32) -> f32 {
    let u = (x * x * GELU_AB + GELU_A) * x;
    1.0 / (1.0 + exp(-u))
}

with_simd! {
    fn gelu_tanh_forward_chunk(out: &mut [f32], x: &[f32]) {
        for (o, &x) in out.iter_mut().zip(x) {
            *o = x * gelu_gate(x);
        }
    }
}

with_simd! {
    fn gelu_tanh_backward_chunk(out: &mut [f32], x: &[f32], grad: &[f32]) {
        for ((o, &x), &g) in out.iter_mut().zip(x).zip(grad) {
            let s = gelu_gate(x);
            let du = x * x * GELU_3AB + GELU_A;
            *o = g * (s + x * s * (1.0 - s) * du);
        }
    }
}

/// The tanh GELU `x·σ(a·x·(1 + b·x²))`, elementwise.
pub fn gelu_tanh_forward(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0_f32; x.len()];
    out.par_chunks_mut(MIN_TASK_ELEMENTS)
        .zip(x.par_chunks(MIN_TASK_ELEMENTS))
        .for_each(|(out, x)| gelu_tanh_forward_chunk(out, x));
    out
}

/// The tanh GELU's input gradient from its input and the output's gradient:
/// `grad·(s + x·s·(1 − s)·a·(1 + 3·b·x²))`, `s = σ(u)`.
pub fn gelu_tanh_backward(x: &[f32], grad: &[f32]) -> Vec<f32> {
    assert_eq!(
        x.len(),
        grad.len(),
        "GELU backward: input and gradient disagree"
    );
    let mut out = vec![0.0_f32; x.len()];
    out.par_chunks_mut(MIN_TASK_ELEMENTS)
        .zip(x.par_chunks(MIN_TASK_ELEMENTS))
        .zip(grad.par_chunks(MIN_TASK_ELEMENTS))
        .for_each(|((out, x), grad)| gelu_tanh_backward_chunk(out, x, grad));
    out
}

/// The flex backend's tensors in and out of the kernels above. Each returns `None` where a
/// kernel does not apply (inputs not in f32), and the caller then runs the generic op.
pub(crate) mod flex {
    use burn::backend::flex::{FlexTensor, Layout};
    use burn::tensor::{Bytes, DType, Shape, TensorData, TensorMetadata};

    /// A contiguous f32 copy of `x` (no copy when it already is one), or `None` for another
    /// dtype or an empty tensor (the kernels split work by rows or heads of non-zero size).
    fn contiguous_f32(x: &FlexTensor) -> Option<FlexTensor> {
        (x.dtype() == DType::F32 && x.shape().num_elements() > 0).then(|| x.to_contiguous())
    }

    fn values(x: &FlexTensor) -> &[f32] {
        x.as_slice::<f32>()
            .expect("a contiguous f32 tensor has an f32 slice")
    }

    /// Integer ids as i64, whatever integer dtype holds them.
    fn ids(x: &FlexTensor) -> Option<Vec<i64>> {
        let x = x.to_contiguous();
        Some(match x.dtype() {
            DType::I64 => x.as_slice::<i64>()?.to_vec(),
            DType::I32 => x.as_slice::<i32>()?.iter().map(|&v| i64::from(v)).collect(),
            _ => return None,
        })
    }

    fn tensor(values: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, shape.into()))
    }

    /// [`super::cross_entropy_forward`]: `[N, V]` logits, `[N]` targets → (`[1]`, `[N, 1]`).
    pub fn cross_entropy_forward(
        logits: &FlexTensor,
        targets: &FlexTensor,
    ) -> Option<(FlexTensor, FlexTensor)> {
        let targets = ids(targets)?;
        let logits = contiguous_f32(logits)?;
        let vocab = logits.shape().dims::<2>()[1];
        let (loss, lse) = super::cross_entropy_forward(values(&logits), vocab, &targets);
        let rows = lse.len();
        Some((tensor(vec![loss], [1]), tensor(lse, [rows, 1])))
    }

    /// [`super::cross_entropy_backward`]: the logits' gradient, `[N, V]`.
    pub fn cross_entropy_backward(
        logits: &FlexTensor,
        lse: &FlexTensor,
        targets: &FlexTensor,
        grad: &FlexTensor,
    ) -> Option<FlexTensor> {
        let targets = ids(targets)?;
        let lse = contiguous_f32(lse)?;
        let grad = contiguous_f32(grad)?;
        let logits = contiguous_f32(logits)?;
        let shape = logits.shape();
        let vocab = shape.dims::<2>()[1];
        let out = super::cross_entropy_backward(
            values(&logits),
            vocab,
            values(&lse),
            &targets,
            values(&grad)[0],
        );
        Some(tensor(out, shape))
    }

    /// An f32 `[B, nh, T, hs]` tensor as [`super::Heads`] where its rows are contiguous (copied
    /// into a contiguous tensor otherwise; `holder` keeps that copy alive), or `None` for
    /// another dtype, rank or an empty tensor.
    fn heads<'a>(
        x: &'a FlexTensor,
        holder: &'a mut Option<FlexTensor>,
    ) -> Option<super::Heads<'a>> {
        if x.dtype() != DType::F32 || x.shape().num_dims() != 4 || x.shape().num_elements() == 0 {
            return None;
        }
        let shape = x.shape().dims::<4>();
        let layout = x.layout();
        let strides = layout.strides();
        let in_place = strides[3] == 1 && strides[..3].iter().all(|&s| s >= 0);
        if in_place {
            return Some(super::Heads {
                data: x.storage::<f32>(),
                offset: layout.start_offset(),
                strides: [0, 1, 2].map(|d| strides[d] as usize),
                shape,
            });
        }
        let copy = holder.insert(x.to_contiguous());
        Some(super::Heads::contiguous(values(copy), shape))
    }

    /// Token-major `[B, T, nh, hs]` values as the `[B, nh, T, hs]` tensor they are (heads and
    /// time swapped in the layout, no copy): the block's `swap_dims(1, 2)` and reshape back to
    /// `[B, T, nh·hs]` then cost nothing.
    fn from_token_major(values: Vec<f32>, [b, nh, t, hs]: [usize; 4]) -> FlexTensor {
        let layout = Layout::new(
            Shape::new([b, nh, t, hs]),
            vec![(t * nh * hs) as isize, hs as isize, (nh * hs) as isize, 1],
            0,
        );
        FlexTensor::new(Bytes::from_elems(values), layout, DType::F32)
    }

    /// [`super::causal_attention_forward`]: `q, k, v: [B, nh, T, hs]` → `[B, nh, T, hs]`.
    pub fn causal_attention_forward(
        q: &FlexTensor,
        k: &FlexTensor,
        v: &FlexTensor,
    ) -> Option<FlexTensor> {
        let mut holders: [Option<FlexTensor>; 3] = Default::default();
        let [hq, hk, hv] = &mut holders;
        let (q, k, v) = (heads(q, hq)?, heads(k, hk)?, heads(v, hv)?);
        if k.shape != q.shape || v.shape != q.shape {
            return None;
        }
        Some(from_token_major(
            super::causal_attention_forward(q, k, v),
            q.shape,
        ))
    }

    /// [`super::causal_attention_backward`]: three `[B, nh, T, hs]` gradients.
    pub fn causal_attention_backward(
        q: &FlexTensor,
        k: &FlexTensor,
        v: &FlexTensor,
        out: &FlexTensor,
        grad_out: &FlexTensor,
    ) -> Option<[FlexTensor; 3]> {
        let mut holders: [Option<FlexTensor>; 5] = Default::default();
        let [hq, hk, hv, ho, hg] = &mut holders;
        let views = [
            heads(q, hq)?,
            heads(k, hk)?,
            heads(v, hv)?,
            heads(out, ho)?,
            heads(grad_out, hg)?,
        ];
        let shape = views[0].shape;
        if views.iter().any(|x| x.shape != shape) {
            return None;
        }
        let [q, k, v, out, grad_out] = views;
        let grads = super::causal_attention_backward(q, k, v, out, grad_out);
        Some(grads.map(|g| from_token_major(g, shape)))
    }

    /// [`super::gelu_tanh_forward`], any shape.
    pub fn gelu_tanh_forward(x: &FlexTensor) -> Option<FlexTensor> {
        let x = contiguous_f32(x)?;
        Some(tensor(super::gelu_tanh_forward(values(&x)), x.shape()))
    }

    /// [`super::gelu_tanh_backward`], any shape.
    pub fn gelu_tanh_backward(x: &FlexTensor, grad: &FlexTensor) -> Option<FlexTensor> {
        let x = contiguous_f32(x)?;
        let grad = contiguous_f32(grad)?;
        Some(tensor(
            super::gelu_tanh_backward(values(&x), values(&grad)),
            x.shape(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// Distance between two f32 in units in the last place.
    fn ulps(a: f32, b: f32) -> u32 {
        let key = |v: f32| {
            let bits = v.to_bits() as i32;
            if bits < 0 {
                i32::MIN.wrapping_sub(bits)
            } else {
                bits
            }
        };
        key(a).abs_diff(key(b))
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_exact_value_over_the_normal_range() {
        let mut worst = 0;
        let mut x = -87.0_f32;
        while x <= 88.0 {
            let exact = f64::from(x).exp() as f32;
            worst = worst.max(ulps(exp(x), exact));
            x += 0.001_3;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        for x in [0.0_f32, 1.0, -1.0, 0.5, 1e-8, -1e-8] {
            assert!(ulps(exp(x), f64::from(x).exp() as f32) <= 1, "exp({x})");
        }
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn exp_saturates_at_the_ends_and_passes_nan_through() {
        assert_eq!(exp(-1000.0), exp(-87.0));
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 2e-38);
        assert_eq!(exp(f32::NEG_INFINITY), exp(-87.0));
        assert_eq!(exp(1000.0), exp(88.0));
        assert!(exp(f32::INFINITY).is_finite());
        assert!(exp(f32::NAN).is_nan());
    }

    /// `rows × vocab` logits N(0, 3²) (wide enough that rows have clear winners and losers),
    /// vocab not a multiple of 8 so that the tail loops run.
    fn logits(rows: usize, vocab: usize) -> (Vec<f32>, Vec<i64>) {
        let mut rng = SplitMix64::new(11);
        let logits = rng.normal_vec(rows * vocab, 3.0);
        let targets = (0..rows).map(|i| ((i * 7919) % vocab) as i64).collect();
        (logits, targets)
    }

    /// The loss and gradient in f64, straight from the definitions.
    fn reference(logits: &[f32], vocab: usize, targets: &[i64]) -> (f64, Vec<f64>) {
        let rows = targets.len();
        let mut loss = 0.0;
        let mut grad = vec![0.0; logits.len()];
        for (i, row) in logits.chunks(vocab).enumerate() {
            let max = row
                .iter()
                .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
            let sum: f64 = row.iter().map(|&v| (f64::from(v) - max).exp()).sum();
            let lse = max + sum.ln();
            let t = targets[i] as usize;
            loss += lse - f64::from(row[t]);
            for (j, &v) in row.iter().enumerate() {
                let onehot = if j == t { 1.0 } else { 0.0 };
                grad[i * vocab + j] = ((f64::from(v) - lse).exp() - onehot) / rows as f64;
            }
        }
        (loss / rows as f64, grad)
    }

    #[test]
    fn cross_entropy_matches_the_f64_definition() {
        let (rows, vocab) = (37, 1003);
        let (logits, targets) = logits(rows, vocab);
        let (loss, lse) = cross_entropy_forward(&logits, vocab, &targets);
        let (want_loss, want_grad) = reference(&logits, vocab, &targets);
        assert!(
            ((f64::from(loss) - want_loss) / want_loss).abs() < 1e-6,
            "{loss} vs {want_loss}"
        );
        let grad = cross_entropy_backward(&logits, vocab, &lse, &targets, 1.0);
        let worst = grad
            .iter()
            .zip(&want_grad)
            .map(|(&g, &w)| (f64::from(g) - w).abs())
            .fold(0.0, f64::max);
        // Gradients are at most 1/rows ≈ 0.027 in size.
        assert!(worst < 1e-8, "worst gradient error {worst}");
        // The incoming gradient scales linearly.
        let doubled = cross_entropy_backward(&logits, vocab, &lse, &targets, 2.0);
        assert!(doubled.iter().zip(&grad).all(|(&d, &g)| d == 2.0 * g));
    }

    #[test]
    fn cross_entropy_propagates_nan_and_refuses_an_unknown_target() {
        let (mut logits, targets) = logits(4, 16);
        logits[20] = f32::NAN; // row 1
        let (loss, lse) = cross_entropy_forward(&logits, 16, &targets);
        assert!(loss.is_nan());
        assert!(lse[1].is_nan() && lse[0].is_finite() && lse[2].is_finite());
        let bad = std::panic::catch_unwind(|| cross_entropy_forward(&logits, 16, &[0, 1, 2, 16]));
        assert!(bad.is_err());
    }

    #[test]
    fn gelu_matches_the_tanh_formula_and_its_derivative_in_f64() {
        let xs: Vec<f32> = (0..4001).map(|i| -10.0 + i as f32 * 0.005).collect();
        let grad: Vec<f32> = (0..xs.len()).map(|i| 1.0 + (i % 3) as f32).collect();
        let y = gelu_tanh_forward(&xs);
        let dx = gelu_tanh_backward(&xs, &grad);
        let c = (2.0 / std::f64::consts::PI).sqrt();
        for ((&x, (&y, &dx)), &g) in xs.iter().zip(y.iter().zip(&dx)).zip(&grad) {
            let x = f64::from(x);
            let inner = c * (x + 0.044_715 * x.powi(3));
            let want = 0.5 * x * (1.0 + inner.tanh());
            let sech2 = 1.0 - inner.tanh().powi(2);
            let slope =
                0.5 * (1.0 + inner.tanh()) + 0.5 * x * sech2 * c * (1.0 + 3.0 * 0.044_715 * x * x);
            assert!(
                (f64::from(y) - want).abs() < 2e-6 * (1.0 + want.abs()),
                "gelu({x}) = {y}, want {want}"
            );
            let want_dx = f64::from(g) * slope;
            assert!(
                (f64::from(dx) - want_dx).abs() < 4e-6 * (1.0 + want_dx.abs()),
                "gelu'({x}) = {dx}, want {want_dx}"
            );
        }
        assert!(gelu_tanh_forward(&[f32::NAN])[0].is_nan());
        assert!(gelu_tanh_backward(&[f32::NAN], &[1.0])[0].is_nan());
    }

    /// The flex hooks (these kernels) and the generic ops that GPU backends run agree, and
    /// bf16 inputs fall back to the generic ops.
    #[test]
    fn flex_hooks_agree_with_the_generic_ops() {
        use crate::ops::{cross_entropy, float_tensor, layer_ops, GptBackend};
        use burn::backend::Flex;
        use burn::tensor::{DType, Int, Tensor, TensorData, TensorMetadata, TensorPrimitive};

        fn values(x: burn::tensor::ops::FloatTensor<Flex>) -> Vec<f32> {
            let n = x.shape().num_elements();
            Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(x))
                .reshape([n])
                .into_data()
                .convert::<f32>()
                .to_vec()
                .unwrap()
        }
        fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| (x - y).abs() <= tol * (1.0 + y.abs()))
        }

        let device = Default::default();
        let (rows, vocab) = (9, 300);
        let (logits, targets) = logits(rows, vocab);
        let logits = Tensor::<Flex, 2>::from_data(TensorData::new(logits, [rows, vocab]), &device);
        let targets = Tensor::<Flex, 1, Int>::from_data(
            TensorData::new(
                targets.iter().map(|&t| t as i32).collect::<Vec<_>>(),
                [rows],
            ),
            &device,
        );
        let grad = Tensor::<Flex, 1>::from_data(TensorData::new(vec![0.7_f32], [1]), &device);
        let prim = |t: &Tensor<Flex, 2>| t.clone().into_primitive().tensor();

        let (loss, lse) =
            Flex::cross_entropy_forward(prim(&logits), targets.clone().into_primitive());
        let (want_loss, want_lse) = cross_entropy::cross_entropy_forward::<Flex>(
            prim(&logits),
            targets.clone().into_primitive(),
        );
        assert!(close(&values(loss), &values(want_loss), 1e-6));
        assert!(close(&values(lse.clone()), &values(want_lse.clone()), 1e-6));
        let dlogits = Flex::cross_entropy_backward(
            prim(&logits),
            lse,
            targets.clone().into_primitive(),
            grad.clone().into_primitive().tensor(),
        );
        let want = cross_entropy::cross_entropy_backward::<Flex>(
            prim(&logits),
            want_lse,
            targets.into_primitive(),
            grad.into_primitive().tensor(),
        );
        assert!(close(&values(dlogits), &values(want), 1e-6));

        let x = Tensor::<Flex, 2>::from_data(
            TensorData::new(SplitMix64::new(5).normal_vec(6 * 70, 2.0), [6, 70]),
            &device,
        );
        let dy = x.clone().sin();
        let y = Flex::fused_gelu_tanh(prim(&x));
        assert!(close(
            &values(y),
            &values(layer_ops::gelu_tanh_forward::<Flex>(prim(&x))),
            1e-6
        ));
        let dx = Flex::gelu_tanh_backward(prim(&x), prim(&dy));
        let want = layer_ops::gelu_tanh_backward::<Flex>(prim(&x), prim(&dy));
        assert!(close(&values(dx), &values(want), 1e-6));

        // Causal attention: 2 × 3 heads of T = 13, hs = 20 (not a multiple of 8: the tails
        // run), against burn's attention forward and the generic backward.
        let normal = |seed: u64| {
            let shape = [2, 3, 13, 20];
            let values = SplitMix64::new(seed).normal_vec(shape.iter().product(), 1.0);
            Tensor::<Flex, 4>::from_data(TensorData::new(values, shape), &device)
                .into_primitive()
                .tensor()
        };
        let [q, k, v, grad_out] = [21, 22, 23, 24].map(normal);
        let out = Flex::causal_attention(q.clone(), k.clone(), v.clone());
        let want = <Flex as burn::tensor::ops::ModuleOps<Flex>>::attention(
            q.clone(),
            k.clone(),
            v.clone(),
            None,
            None,
            crate::ops::attention::causal_options(),
        );
        assert!(close(&values(out.clone()), &values(want), 1e-5));
        let grads = Flex::causal_attention_backward(
            q.clone(),
            k.clone(),
            v.clone(),
            out.clone(),
            grad_out.clone(),
        );
        let want = crate::ops::attention::causal_attention_backward::<Flex>(
            q.clone(),
            k.clone(),
            v.clone(),
            out.clone(),
            grad_out,
        );
        for (got, want) in grads.into_iter().zip(want) {
            assert!(close(&values(got), &values(want), 1e-5));
        }

        // The same heads as views: q with its last dimension strided (copied first), k and v
        // read in place from a packed [B, T, 2·nh·hs] tensor as a GPT block splits its
        // projection (narrow, reshape, swap time and heads), and the output's gradient taken
        // from the token-major output layout.
        let view = |x: &burn::tensor::ops::FloatTensor<Flex>| float_tensor::<Flex, 4>(x.clone());
        let q_view = view(&q).swap_dims(2, 3).into_data(); // [2, 3, 20, 13] values
        let q_t = Tensor::<Flex, 4>::from_data(q_view, &device).swap_dims(2, 3); // [2, 3, 13, 20], last stride 13
        let packed = Tensor::cat(
            vec![view(&k).swap_dims(1, 2), view(&v).swap_dims(1, 2)], // [2, 13, 3, 20] each
            2,
        )
        .reshape([2, 13, 120])
        .into_data();
        let packed = Tensor::<Flex, 3>::from_data(packed, &device);
        let split = |start: usize| {
            packed
                .clone()
                .narrow(2, start, 60)
                .reshape([2, 13, 3, 20])
                .swap_dims(1, 2) // [2, 3, 13, 20], strided
                .into_primitive()
                .tensor()
        };
        let (q2, k2, v2) = (q_t.into_primitive().tensor(), split(0), split(60));
        let out2 = Flex::causal_attention(q2.clone(), k2.clone(), v2.clone());
        assert!(close(&values(out2.clone()), &values(out.clone()), 1e-6));
        let grad_out2 = float_tensor::<Flex, 4>(out2.clone())
            .sin()
            .into_primitive()
            .tensor();
        let want = crate::ops::attention::causal_attention_backward::<Flex>(
            q.clone(),
            k.clone(),
            v.clone(),
            out.clone(),
            grad_out2.clone(),
        );
        let got = Flex::causal_attention_backward(q2, k2, v2, out2, grad_out2);
        for (got, want) in got.into_iter().zip(want) {
            assert!(close(&values(got), &values(want), 1e-5));
        }

        // bf16 takes the generic path and keeps its dtype.
        let y = Flex::fused_gelu_tanh(prim(&x.clone().cast(DType::BF16)));
        assert_eq!(y.dtype(), DType::BF16);
    }
}
