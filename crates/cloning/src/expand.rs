//! Building the expanded model: every parameter of the source is grown by its [`rule`] (the
//! table in [`crate::plan`]) with tensor ops on the model's device, one tensor at a time.
//!
//! # Noise
//! The noisy variants add, for every output copy `j` of a grid with `n_in ≥ 2` input copies,
//! a chain of +/− pairs along the input copies: pair `k` (`0 ≤ k < n_in − 1`) adds `η_k` to
//! block `(k, j)` and subtracts it from block `(k + 1, j)`. The input copies are equal, so the
//! noise cancels exactly in exact arithmetic (in f32, up to rounding). For `n_in = 2` this is
//! the spec's `[W/2 + η, W/2 − η]`. Interior blocks carry two terms, so each pair's variance is
//! `σ² = P·n_in / (2·(n_in − 1))`, which makes the mean noise power over the `n_in` blocks
//! `P = mean(block²) / 10^(snr_db/10)`, with `block` the noiseless signal block (`W/n_in`
//! symmetric, `W` diagonal), measured per section of the output axis. Only weight matrices fed
//! by a hidden vector get noise (embeddings, norms and biases have nothing to cancel against).
//! Each block pair draws from its own `SplitMix64` stream named after the parameter, section,
//! output copy and pair, so the result depends only on the seed: not on the backend, nor on the
//! order in which parameters are processed.

use burn::module::Module;
use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use hyperclone_model::{Gpt, Norm, SplitMix64};

use crate::depth::{grow_depth, FreshParams};
use crate::plan::{
    expand_config, rule, source_shape, target_shape, CloneError, ExpandOptions, GrowthOrder,
    ParamKind, Rule, Variant,
};

/// Expands `source` into a model `width_factor` times wider (and `ffn_factor` times wider in
/// the MLP) and `depth_factor` times deeper. Width growth and `zero` depth growth compute the
/// same logits (see [`crate::plan::rule`] for what happens to each parameter, and
/// [`crate::depth`] for the new blocks); `stack` depth growth does not
/// ([`ExpandOptions::is_function_preserving`]). With both, `opts.order` says which comes first.
/// Runs on the source's device; memory peaks at source + target + one tensor.
pub fn expand<B: Backend>(source: &Gpt<B>, opts: &ExpandOptions) -> Result<Gpt<B>, CloneError> {
    let target_config = expand_config(source.config(), opts)?;
    let widens = opts.width_factor > 1 || opts.ffn_factor > 1;
    let width = opts.width_only();
    let target = match (opts.grows_depth(), opts.order) {
        (false, _) => expand_width(source, opts)?,
        // Depth alone: the source's tensors are shared (no copy); the blocks get fresh ids.
        (true, _) if !widens => grow_depth(source.clone().map(&mut FreshParams), opts)?,
        (true, GrowthOrder::WidthFirst) => grow_depth(expand_width(source, &width)?, opts)?,
        (true, GrowthOrder::DepthFirst) => expand_width(
            &grow_depth(source.clone().map(&mut FreshParams), opts)?,
            &width,
        )?,
    };
    debug_assert_eq!(target.config(), &target_config);
    Ok(target)
}

/// The width part of [`expand`]: every parameter grown by its rule, layer by layer.
fn expand_width<B: Backend>(source: &Gpt<B>, opts: &ExpandOptions) -> Result<Gpt<B>, CloneError> {
    let s = source.config();
    let target_config = expand_config(s, opts)?;
    let device = source.wte.weight.val().device();
    tracing::info!(
        width_factor = opts.width_factor,
        ffn_factor = opts.ffn_factor,
        variant = %opts.variant,
        "expanding d_model {} -> {}, d_ff {} -> {}",
        s.d_model,
        target_config.d_model,
        s.d_ff,
        target_config.d_ff
    );
    // A zero-filled shell (no random draws); every parameter is replaced below.
    let mut t = Gpt::<B>::zeros(&target_config, &device).map_err(CloneError::Target)?;
    let g = Grower { source, opts };
    use ParamKind::*;

    g.matrix(
        "wte.weight",
        TokenEmbedding,
        &source.wte.weight,
        &mut t.wte.weight,
    )?;
    if let (Some(sw), Some(tw)) = (&source.wpe, &mut t.wpe) {
        g.matrix("wpe.weight", PositionEmbedding, &sw.weight, &mut tw.weight)?;
    }
    for (l, (sb, tb)) in source.h.iter().zip(t.h.iter_mut()).enumerate() {
        let p = |name: &str| format!("h.{l}.{name}");
        g.norm(&p("ln_1"), NormWeight, NormBias, &sb.ln_1, &mut tb.ln_1)?;
        g.linear(
            &p("attn.c_attn"),
            QkvWeight,
            QkvBias,
            &sb.attn.c_attn,
            &mut tb.attn.c_attn,
        )?;
        g.linear(
            &p("attn.c_proj"),
            AttnOutWeight,
            AttnOutBias,
            &sb.attn.c_proj,
            &mut tb.attn.c_proj,
        )?;
        g.norm(&p("ln_2"), NormWeight, NormBias, &sb.ln_2, &mut tb.ln_2)?;
        g.linear(
            &p("mlp.c_fc"),
            MlpUpWeight,
            MlpUpBias,
            &sb.mlp.c_fc,
            &mut tb.mlp.c_fc,
        )?;
        if let (Some(sg), Some(tg)) = (&sb.mlp.c_gate, &mut tb.mlp.c_gate) {
            g.linear(&p("mlp.c_gate"), MlpUpWeight, MlpUpBias, sg, tg)?;
        }
        g.linear(
            &p("mlp.c_proj"),
            MlpDownWeight,
            MlpDownBias,
            &sb.mlp.c_proj,
            &mut tb.mlp.c_proj,
        )?;
        tracing::debug!(layer = l, "layer expanded");
    }
    g.norm(
        "ln_f",
        FinalNormWeight,
        FinalNormBias,
        &source.ln_f,
        &mut t.ln_f,
    )?;
    if let (Some(sh), Some(th)) = (&source.lm_head, &mut t.lm_head) {
        g.matrix("lm_head.weight", LmHead, &sh.weight, &mut th.weight)?;
    }
    Ok(t)
}

/// Applies the rule table to the tensors of one source model.
struct Grower<'a, B: Backend> {
    source: &'a Gpt<B>,
    opts: &'a ExpandOptions,
}

impl<B: Backend> Grower<'_, B> {
    fn rule(&self, kind: ParamKind) -> Rule {
        rule(
            kind,
            self.source.config(),
            self.opts.width_factor,
            self.opts.ffn_factor,
        )
    }

    fn check_shape(
        &self,
        name: &str,
        kind: ParamKind,
        found: Vec<usize>,
    ) -> Result<Rule, CloneError> {
        let r = self.rule(kind);
        let expected = source_shape(kind, self.source.config(), &r);
        if found != expected {
            return Err(CloneError::Shape {
                name: name.to_string(),
                expected,
                found,
            });
        }
        Ok(r)
    }

    fn matrix(
        &self,
        name: &str,
        kind: ParamKind,
        src: &Param<Tensor<B, 2>>,
        dst: &mut Param<Tensor<B, 2>>,
    ) -> Result<(), CloneError> {
        let w = src.val().detach();
        let r = self.check_shape(name, kind, w.dims().to_vec())?;
        let shell = take(dst, [1, 1]);
        let expected = target_shape(kind, self.source.config(), &r);
        if shell.dims().to_vec() != expected {
            return Err(CloneError::Shape {
                name: format!("target {name}"),
                expected,
                found: shell.dims().to_vec(),
            });
        }
        drop(shell); // freed before the grown tensor exists: one target tensor at a time
                     // `detach` makes the result a leaf, so that it can be a trainable parameter under autodiff.
        *dst = Param::from_tensor(grow(name, w, &r, self.opts)?.detach());
        Ok(())
    }

    fn vector(
        &self,
        name: &str,
        kind: ParamKind,
        src: &Param<Tensor<B, 1>>,
        dst: &mut Param<Tensor<B, 1>>,
    ) -> Result<(), CloneError> {
        let v = src.val().detach();
        let r = self.check_shape(name, kind, v.dims().to_vec())?;
        let [width] = v.dims();
        let shell = take(dst, [1]);
        let [out] = shell.dims();
        if out != r.target_width() {
            return Err(CloneError::Shape {
                name: format!("target {name}"),
                expected: vec![r.target_width()],
                found: vec![out],
            });
        }
        drop(shell);
        let grown = grow(name, v.reshape([1, width]), &r, self.opts)?;
        *dst = Param::from_tensor(grown.reshape([out]).detach());
        Ok(())
    }

    fn linear(
        &self,
        name: &str,
        weight: ParamKind,
        bias: ParamKind,
        src: &Linear<B>,
        dst: &mut Linear<B>,
    ) -> Result<(), CloneError> {
        self.matrix(
            &format!("{name}.weight"),
            weight,
            &src.weight,
            &mut dst.weight,
        )?;
        if let (Some(sb), Some(tb)) = (&src.bias, &mut dst.bias) {
            self.vector(&format!("{name}.bias"), bias, sb, tb)?;
        }
        Ok(())
    }

    fn norm(
        &self,
        name: &str,
        weight: ParamKind,
        bias: ParamKind,
        src: &Norm<B>,
        dst: &mut Norm<B>,
    ) -> Result<(), CloneError> {
        self.vector(
            &format!("{name}.weight"),
            weight,
            &src.weight,
            &mut dst.weight,
        )?;
        if let (Some(sb), Some(tb)) = (&src.bias, &mut dst.bias) {
            self.vector(&format!("{name}.bias"), bias, sb, tb)?;
        }
        Ok(())
    }
}

/// Takes the tensor out of a parameter, leaving a tiny placeholder, so that the caller can
/// free it before the grown tensor is allocated.
fn take<B: Backend, const D: usize>(p: &mut Param<Tensor<B, D>>, tiny: [usize; D]) -> Tensor<B, D> {
    let device = p.val().device();
    std::mem::replace(p, Param::from_tensor(Tensor::zeros(tiny, &device)))
        .into_value()
        .detach()
}

/// Grows `w` (`[rows, source width]`) into `[rows·input_copies, target width]` by `rule`.
///
/// `name` names the noise streams (`{name}/s{section}/out{j}/pair{k}`). The symmetric grid
/// is one broadcast and one copy (no other temporary of the target's size); the diagonal and
/// noisy grids are assembled block by block with `cat`.
pub fn grow<B: Backend>(
    name: &str,
    w: Tensor<B, 2>,
    rule: &Rule,
    opts: &ExpandOptions,
) -> Result<Tensor<B, 2>, CloneError> {
    let [rows, _] = w.dims();
    let n_in = rule.input_copies;
    // With one input copy every variant is the same tiling (nothing to divide or cancel).
    let variant = if n_in == 1 {
        Variant::Symmetric
    } else {
        opts.variant
    };
    let divisor = match (n_in, variant.is_diagonal()) {
        (1, _) => rule.divide_by, // vectors and embeddings: only the tied-head fold divides
        (_, true) => 1,           // diagonal: the full W on one input copy
        (n, false) => n,          // symmetric: W / n_in in every block
    };
    let mut sections = Vec::with_capacity(rule.output.len());
    let mut src_col = 0;
    for (si, sec) in rule.output.iter().enumerate() {
        let part = if rule.output.len() == 1 {
            w.clone()
        } else {
            w.clone().narrow(1, src_col, sec.width)
        };
        src_col += sec.width;
        // Divided once, so that every symmetric block is bit-identical.
        let signal = if divisor > 1 {
            part.div_scalar(divisor as f64)
        } else {
            part
        };
        let grown = if variant == Variant::Symmetric {
            // [rows, w] → [n_in, rows, copies, w] (broadcast) → [n_in·rows, copies·w].
            signal
                .reshape([1, rows, 1, sec.width])
                .expand([n_in, rows, sec.copies, sec.width])
                .reshape([n_in * rows, sec.copies * sec.width])
        } else {
            let stream = format!("{name}/s{si}");
            grid_blocks(&stream, signal, n_in, sec.copies, variant, opts)?
        };
        sections.push(grown);
    }
    Ok(if sections.len() == 1 {
        sections.pop().expect("one section")
    } else {
        Tensor::cat(sections, 1)
    })
}

/// The block grid of one section for the diagonal and noisy variants (`n_in ≥ 2`), from the
/// signal block (`W/n_in` symmetric, `W` diagonal).
fn grid_blocks<B: Backend>(
    stream: &str,
    signal: Tensor<B, 2>,
    n_in: usize,
    copies: usize,
    variant: Variant,
    opts: &ExpandOptions,
) -> Result<Tensor<B, 2>, CloneError> {
    let [rows, width] = signal.dims();
    let device = signal.device();
    let sigma = if variant.is_noisy() {
        let power = mean_square(stream, &signal)? / 10f64.powf(opts.snr_db / 10.0);
        (power * n_in as f64 / (2.0 * (n_in - 1) as f64)).sqrt()
    } else {
        0.0
    };
    let zeros = variant
        .is_diagonal()
        .then(|| Tensor::<B, 2>::zeros([rows, width], &device));
    let mut columns = Vec::with_capacity(copies);
    for j in 0..copies {
        let mut blocks = Vec::with_capacity(n_in);
        // Noise pair k adds η_k to input block k and subtracts it from block k + 1.
        let mut previous: Option<Tensor<B, 2>> = None;
        for i in 0..n_in {
            let mut block = match &zeros {
                Some(z) if i != j % n_in => z.clone(),
                _ => signal.clone(),
            };
            if sigma > 0.0 {
                if let Some(eta) = previous.take() {
                    block = block - eta;
                }
                if i + 1 < n_in {
                    let mut rng =
                        SplitMix64::derive(opts.seed, &format!("{stream}/out{j}/pair{i}"));
                    let eta = Tensor::<B, 2>::from_data(
                        TensorData::new(rng.normal_vec(rows * width, sigma), [rows, width]),
                        &device,
                    );
                    block = block + eta.clone();
                    previous = Some(eta);
                }
            }
            blocks.push(block);
        }
        columns.push(Tensor::cat(blocks, 0));
    }
    Ok(Tensor::cat(columns, 1))
}

/// `mean(x²)` read back to the host, in f64.
fn mean_square<B: Backend>(name: &str, x: &Tensor<B, 2>) -> Result<f64, CloneError> {
    let v = x
        .clone()
        .powi_scalar(2)
        .mean()
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .map_err(|e| CloneError::Data {
            name: name.to_string(),
            reason: format!("{e:?}"),
        })?;
    Ok(v.first().copied().unwrap_or(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Section;
    use burn::backend::Flex;

    type B = Flex;

    fn host(t: Tensor<B, 2>) -> (Vec<usize>, Vec<f32>) {
        (t.dims().to_vec(), t.into_data().to_vec::<f32>().unwrap())
    }

    fn w23() -> Tensor<B, 2> {
        Tensor::from_data(
            TensorData::new(vec![1f32, 2., 3., 4., 5., 6.], [2, 3]),
            &Default::default(),
        )
    }

    #[test]
    fn symmetric_grid_divides_by_the_input_factor_and_tiles_sections_in_place() {
        // Sections [2 | 1] of a [2, 3] matrix, 2 input copies, copies (2, 1).
        let rule = Rule {
            input_copies: 2,
            output: vec![
                Section {
                    width: 2,
                    copies: 2,
                },
                Section {
                    width: 1,
                    copies: 1,
                },
            ],
            divide_by: 1,
        };
        let (shape, v) = host(grow("w", w23(), &rule, &ExpandOptions::default()).unwrap());
        assert_eq!(shape, vec![4, 5]);
        #[rustfmt::skip]
        let expected = [
            0.5, 1.0, 0.5, 1.0, 1.5,
            2.0, 2.5, 2.0, 2.5, 3.0,
            0.5, 1.0, 0.5, 1.0, 1.5,
            2.0, 2.5, 2.0, 2.5, 3.0,
        ];
        assert_eq!(v, expected);
    }

    #[test]
    fn diagonal_grid_puts_the_full_matrix_on_one_input_copy_per_output_copy() {
        let rule = Rule {
            input_copies: 2,
            output: vec![Section {
                width: 3,
                copies: 2,
            }],
            divide_by: 1,
        };
        let opts = ExpandOptions {
            variant: Variant::Diagonal,
            ..Default::default()
        };
        let (shape, v) = host(grow("w", w23(), &rule, &opts).unwrap());
        assert_eq!(shape, vec![4, 6]);
        #[rustfmt::skip]
        let expected = [
            1., 2., 3., 0., 0., 0.,
            4., 5., 6., 0., 0., 0.,
            0., 0., 0., 1., 2., 3.,
            0., 0., 0., 4., 5., 6.,
        ];
        assert_eq!(v, expected);
    }

    #[test]
    fn noise_cancels_over_input_copies_has_the_requested_power_and_is_seeded() {
        let device = Default::default();
        let w: Tensor<B, 2> = Tensor::from_data(
            TensorData::new(SplitMix64::new(5).normal_vec(64 * 32, 1.0), [64, 32]),
            &device,
        );
        for n_in in [2, 3, 4] {
            let rule = Rule {
                input_copies: n_in,
                output: vec![Section {
                    width: 32,
                    copies: 2,
                }],
                divide_by: 1,
            };
            let opts = ExpandOptions {
                variant: Variant::NoisySymmetric,
                snr_db: 10.0,
                seed: 3,
                ..Default::default()
            };
            let noisy = grow("w", w.clone(), &rule, &opts).unwrap();
            let again = grow("w", w.clone(), &rule, &opts).unwrap();
            let other = grow(
                "w",
                w.clone(),
                &rule,
                &ExpandOptions {
                    seed: 4,
                    ..opts.clone()
                },
            )
            .unwrap();
            let (_, a) = host(noisy.clone());
            assert_eq!(a, host(again).1, "same seed, same noise");
            assert_ne!(a, host(other).1, "another seed, other noise");
            let clean = grow("w", w.clone(), &rule, &ExpandOptions::default()).unwrap();
            let noise = noisy.clone() - clean; // [n_in·64, 64]
                                               // Sum over the input copies cancels.
            let summed = noise.clone().reshape([n_in, 64, 64]).sum_dim(0);
            let max_sum = summed.abs().max().into_scalar();
            assert!(max_sum < 1e-5, "n_in {n_in}: noise sums to {max_sum}");
            // Mean noise power = mean(block²) / 10.
            let p_noise: f32 = noise.powi_scalar(2).mean().into_scalar();
            let p_block: f32 = (w.clone() / n_in as f32)
                .powi_scalar(2)
                .mean()
                .into_scalar();
            let ratio = p_block / p_noise;
            assert!((ratio - 10.0).abs() < 1.0, "n_in {n_in}: SNR ratio {ratio}");
        }
    }

    #[test]
    fn tied_fold_divides_the_final_norm() {
        let rule = Rule {
            input_copies: 1,
            output: vec![Section {
                width: 3,
                copies: 3,
            }],
            divide_by: 3,
        };
        let v: Tensor<B, 2> = Tensor::from_data(
            TensorData::new(vec![3f32, 6., 9.], [1, 3]),
            &Default::default(),
        );
        let (shape, out) = host(grow("g", v, &rule, &ExpandOptions::default()).unwrap());
        assert_eq!(shape, vec![1, 9]);
        assert_eq!(out, [1., 2., 3., 1., 2., 3., 1., 2., 3.]);
    }
}
