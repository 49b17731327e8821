//! AdamW's state through the clone: the moments of a trained small model, mapped by the same
//! rule table as its weights ([`crate::plan::rule`], with the factors of
//! [`crate::plan::adam_rule`]), so that the wide model continues the small model's optimizer
//! instead of starting from zero moments.
//!
//! # Why these factors
//! Under the noise-free symmetric variant every target block is `θ/D` and every block's
//! gradient is `g/G` of the source's (`D`, `G` from [`adam_rule`]). Our AdamW's update is
//! `θ ← θ·(1 − lr·wd) − lr·s·m̂/(√v̂ + ε·e)` (`hyperclone_training::optim`, which stores `s`
//! and `e` with the moments), with ε outside the
//! square root. Starting the target from `m/G`, `v/G²` (tiled like the weights), `e = 1/G` and
//! `s = 1/D`, its `m̂/(√v̂ + ε·e)` equals the source's, every block moves by the source's step
//! divided by `D`, and its decay `θ/D·lr·wd` is the source's divided by `D`: the wide model is
//! the clone of the small model after every step, as long as both see the same batches, the
//! same learning rates and the same update count (bias correction), without dropout (masks
//! differ between copies). Gradient clipping is kept exact by a third factor: the wide model's
//! global norm sums the squares of every block, so each column's squares are weighted by
//! `w = G²/(input_copies · copies)` and the norm it clips by is the small model's.
//! `crates/experiment/tests/optimizer_transfer.rs` checks it after 10 steps (measured:
//! ≤ 4e-7 relative on the logits). The other variants get the same mapping;
//! their copies then drift apart, which is what their noise is for.
//!
//! Factors compose: a state that already has factors (a wide run that was itself grown from
//! a transferred state) is divided again.
//!
//! This module is a pure function of tensors, like the weight expansion. Reading a training
//! checkpoint's state file and writing the mapped state into an expanded folder is the
//! experiment crate's (`hyperclone_experiment::transfer`), which knows both the training
//! crate's file format and this crate.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use hyperclone_model::GptConfig;

use crate::plan::{
    adam_rule, expand_config, parameters, rule, source_shape, CloneError, ExpandOptions, ParamKind,
    Rule,
};

/// AdamW's state of one parameter as tensors: what [`expand_moments`] maps.
#[derive(Debug, Clone)]
pub struct AdamMoments<B: Backend> {
    /// First moment, flattened row-major like the parameter (`[numel]`).
    pub exp_avg: Tensor<B, 1>,
    /// Second moment, flattened likewise (`[numel]`).
    pub exp_avg_sq: Tensor<B, 1>,
    /// Factor on the parameter's Adam step (1 for a run's own state).
    pub step_factor: f64,
    /// Factor on ε per column (the parameter's last axis); empty: 1 for every column.
    pub eps_factor: Vec<f64>,
    /// Weight of the squared gradient in the clip's global norm, per column; empty: 1.
    pub norm_factor: Vec<f64>,
}

/// Maps the AdamW state of the source parameter `name` (of kind `kind`, in a model of config
/// `source`) to the target's with width factor `n` and FFN factor `m`: the moments are tiled
/// like the weight (same grid, same section order), the first divided by `G` and the second
/// by `G²` section by section, ε's factor divided by `G` per column, the norm weight
/// multiplied by `G²/(input_copies · copies)` per column and the step factor divided by `D`
/// ([`adam_rule`]). A pure function of its tensors, on their device.
pub fn expand_moments<B: Backend>(
    name: &str,
    kind: ParamKind,
    source: &GptConfig,
    n: usize,
    m: usize,
    moments: AdamMoments<B>,
) -> Result<AdamMoments<B>, CloneError> {
    let r = rule(kind, source, n, m);
    let a = adam_rule(kind, source, n, m);
    let (rows, width) = match source_shape(kind, source, &r).as_slice() {
        [rows, width] => (*rows, *width),
        [width] => (1, *width),
        other => unreachable!("source_shape gives 1 or 2 axes, not {other:?}"),
    };
    for (label, t) in [
        ("exp_avg", &moments.exp_avg),
        ("exp_avg_sq", &moments.exp_avg_sq),
    ] {
        if t.dims()[0] != rows * width {
            return Err(CloneError::Shape {
                name: format!("{name}.{label}"),
                expected: vec![rows * width],
                found: t.dims().to_vec(),
            });
        }
    }
    let bad = |reason: String| CloneError::BadFactors {
        name: name.to_string(),
        reason,
    };
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !positive(moments.step_factor) {
        return Err(bad(format!(
            "step factor {} is not a finite number > 0",
            moments.step_factor
        )));
    }
    for (what, factors) in [("eps", &moments.eps_factor), ("norm", &moments.norm_factor)] {
        if !factors.is_empty() && factors.len() != width {
            return Err(bad(format!(
                "{} {what} factors for {width} columns",
                factors.len()
            )));
        }
        if let Some(e) = factors.iter().find(|&&e| !positive(e)) {
            return Err(bad(format!("{what} factor {e} is not a finite number > 0")));
        }
    }
    let g: Vec<f64> = a.grad_divisor.iter().map(|&g| g as f64).collect();
    let exp_avg = tile(moments.exp_avg.reshape([rows, width]), &r, |i| g[i]);
    let exp_avg_sq = tile(moments.exp_avg_sq.reshape([rows, width]), &r, |i| {
        g[i] * g[i]
    });
    // ε: the gradient is g/G, so ε/G keeps m̂/(√v̂ + ε) the source's.
    let eps_factor = per_column(&r, &moments.eps_factor, |i| 1.0 / g[i]);
    // The clip's norm: section i has input_copies · copies blocks, each with gradient g/G,
    // so Σ over them of (g/G)² is (blocks/G²)·g²; the weight G²/blocks gives back g².
    let norm_factor = per_column(&r, &moments.norm_factor, |i| {
        g[i] * g[i] / (r.input_copies * r.output[i].copies) as f64
    });
    let numel = exp_avg.dims().iter().product::<usize>();
    Ok(AdamMoments {
        exp_avg: exp_avg.reshape([numel]),
        exp_avg_sq: exp_avg_sq.reshape([numel]),
        step_factor: moments.step_factor / a.step_divisor as f64,
        eps_factor,
        norm_factor,
    })
}

/// Per-column factors of the target, in its column order (section by section, each
/// section's columns repeated `copies` times in place): the source's factor of the column
/// (`source`; empty: 1) times `times(section)`. Empty when every factor is 1.
fn per_column(rule: &Rule, source: &[f64], times: impl Fn(usize) -> f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(rule.target_width());
    let mut first = 0;
    for (i, sec) in rule.output.iter().enumerate() {
        let t = times(i);
        for _ in 0..sec.copies {
            out.extend(
                (first..first + sec.width).map(|c| source.get(c).copied().unwrap_or(1.0) * t),
            );
        }
        first += sec.width;
    }
    if out.iter().all(|&f| f == 1.0) {
        Vec::new()
    } else {
        out
    }
}

/// Tiles `x` (`[rows, source width]`) into `[rows·input_copies, target width]` by `rule`,
/// dividing section `i` by `divisor(i)` once (before the broadcast, so that all copies are
/// bit-identical). Unlike the symmetric weight grid, nothing is divided by the input copies:
/// every block of a grid sees the same gradient.
fn tile<B: Backend>(x: Tensor<B, 2>, rule: &Rule, divisor: impl Fn(usize) -> f64) -> Tensor<B, 2> {
    let [rows, _] = x.dims();
    let n_in = rule.input_copies;
    let mut sections = Vec::with_capacity(rule.output.len());
    let mut first = 0;
    for (i, sec) in rule.output.iter().enumerate() {
        let part = if rule.output.len() == 1 {
            x.clone()
        } else {
            x.clone().narrow(1, first, sec.width)
        };
        first += sec.width;
        let d = divisor(i);
        let part = if d == 1.0 { part } else { part.div_scalar(d) };
        sections.push(
            part.reshape([1, rows, 1, sec.width])
                .expand([n_in, rows, sec.copies, sec.width])
                .reshape([n_in * rows, sec.copies * sec.width]),
        );
    }
    if sections.len() == 1 {
        sections.pop().expect("one section")
    } else {
        Tensor::cat(sections, 1)
    }
}

/// Maps a whole AdamW state (moments by parameter name) of a model of config `source` by
/// [`expand_moments`]. Every parameter of the source must have moments, and every name of
/// the state must be a parameter.
pub fn expand_adam_state<B: Backend>(
    source: &GptConfig,
    opts: &ExpandOptions,
    mut state: BTreeMap<String, AdamMoments<B>>,
) -> Result<BTreeMap<String, AdamMoments<B>>, CloneError> {
    let mut out = BTreeMap::new();
    expand_adam_state_each(
        source,
        opts,
        |name| Ok(state.remove(name)),
        |name, mapped| {
            out.insert(name, mapped);
            Ok(())
        },
    )?;
    match state.into_keys().next() {
        Some(name) => Err(CloneError::UnknownMoments { name }),
        None => Ok(out),
    }
}

/// [`expand_adam_state`] one parameter at a time, for callers that keep the state in another
/// form (on the host, in a file's layout) and want one parameter's moments on the device at
/// once: `take(name)` gives the source moments of each parameter of `source` in turn (`None`:
/// it has none, an error), `put(name, mapped)` receives the mapped ones. Names the state holds
/// beyond the parameters are the caller's to refuse ([`CloneError::UnknownMoments`]).
pub fn expand_adam_state_each<B: Backend>(
    source: &GptConfig,
    opts: &ExpandOptions,
    mut take: impl FnMut(&str) -> Result<Option<AdamMoments<B>>, CloneError>,
    mut put: impl FnMut(String, AdamMoments<B>) -> Result<(), CloneError>,
) -> Result<(), CloneError> {
    expand_config(source, opts)?;
    if opts.grows_depth() {
        return Err(CloneError::DepthTransfer {
            depth_factor: opts.depth_factor,
        });
    }
    for (name, kind) in parameters(source) {
        let moments =
            take(&name)?.ok_or_else(|| CloneError::MissingMoments { name: name.clone() })?;
        let mapped = expand_moments(
            &name,
            kind,
            source,
            opts.width_factor,
            opts.ffn_factor,
            moments,
        )?;
        put(name, mapped)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    type B = Flex;

    fn host(t: Tensor<B, 1>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    fn t(v: Vec<f32>) -> Tensor<B, 1> {
        let len = v.len();
        Tensor::from_data(TensorData::new(v, [len]), &Default::default())
    }

    fn mqa() -> GptConfig {
        GptConfig {
            vocab_size: 8,
            context_length: 4,
            n_layer: 1,
            d_model: 4,
            n_head: 2,
            n_kv_head: Some(1),
            d_ff: 6,
            bias: true,
            ..GptConfig::llama_small()
        }
    }

    /// The MQA fused projection: q tiled and divided by n (m) and n² (v), the single KV head
    /// tiled along the input only and not divided; ε per column follows; the step is 1/n.
    #[test]
    fn qkv_moments_of_mqa_follow_the_sections() {
        let s = mqa(); // d 4, hd 2: q 4 columns, k 2, v 2
        let (rows, width) = (4, 8);
        let m: Vec<f32> = (0..rows * width).map(|i| i as f32).collect();
        let v: Vec<f32> = m.iter().map(|x| x * x).collect();
        let moments = AdamMoments {
            exp_avg: t(m.clone()),
            exp_avg_sq: t(v.clone()),
            step_factor: 1.0,
            eps_factor: Vec::new(),
            norm_factor: Vec::new(),
        };
        let out = expand_moments("q", ParamKind::QkvWeight, &s, 2, 1, moments).unwrap();
        assert_eq!(out.step_factor, 0.5);
        let mut eps = vec![0.5; 8];
        eps.extend([1.0; 4]);
        assert_eq!(out.eps_factor, eps);
        // q: 2 input × 2 output blocks with gradient g/2: weight 2²/4 = 1; k, v: 2 input
        // blocks with the full gradient: weight 1/2.
        let mut norm = vec![1.0; 8];
        norm.extend([0.5; 4]);
        assert_eq!(out.norm_factor, norm);
        let (m2, v2) = (host(out.exp_avg), host(out.exp_avg_sq));
        assert_eq!(m2.len(), 8 * 12);
        for r in 0..8 {
            let src = &m[(r % 4) * 8..(r % 4) * 8 + 8];
            let row = &m2[r * 12..r * 12 + 12];
            for c in 0..12 {
                // target column c: q copy (c / 4) column c % 4, else k | v column c - 4
                let (col, g) = if c < 8 { (c % 4, 2.0) } else { (c - 4, 1.0) };
                assert_eq!(row[c], src[col] / g, "row {r} col {c}");
                assert_eq!(v2[r * 12 + c], src[col] * src[col] / (g * g));
            }
        }
    }

    /// Factors compose with the source's own, and bad input is refused, not panicked on.
    #[test]
    fn factors_compose_and_bad_states_are_refused() {
        let s = mqa();
        let moments = |len: usize, step: f64, eps: Vec<f64>| AdamMoments {
            exp_avg: t(vec![1.0; len]),
            exp_avg_sq: t(vec![1.0; len]),
            step_factor: step,
            eps_factor: eps,
            norm_factor: Vec::new(),
        };
        // lm_head [4, 8] untied: step 1/n, gradient undivided.
        let out = expand_moments(
            "lm_head.weight",
            ParamKind::LmHead,
            &s,
            3,
            1,
            moments(32, 0.5, vec![0.25; 8]),
        )
        .unwrap();
        assert_eq!(out.step_factor, 0.5 / 3.0);
        assert_eq!(out.eps_factor, vec![0.25; 8]);
        // 3 input blocks with the full gradient each: the norm counts them 1/3 each.
        assert_eq!(out.norm_factor, vec![1.0 / 3.0; 8]);
        let e = expand_moments(
            "lm_head.weight",
            ParamKind::LmHead,
            &s,
            2,
            2,
            moments(31, 1.0, vec![]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("lm_head.weight.exp_avg"), "{e}");
        let e = expand_moments(
            "lm_head.weight",
            ParamKind::LmHead,
            &s,
            2,
            2,
            moments(32, f64::NAN, vec![]),
        )
        .unwrap_err();
        assert!(matches!(e, CloneError::BadFactors { .. }), "{e}");
        let e = expand_moments(
            "lm_head.weight",
            ParamKind::LmHead,
            &s,
            2,
            2,
            moments(32, 1.0, vec![1.0; 3]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("3 eps factors for 8 columns"), "{e}");

        let mut state = BTreeMap::new();
        let e = expand_adam_state::<B>(&s, &ExpandOptions::default(), state.clone()).unwrap_err();
        assert_eq!(
            e,
            CloneError::MissingMoments {
                name: "wte.weight".into()
            }
        );
        for (name, kind) in parameters(&s) {
            let r = rule(kind, &s, 2, 2);
            let len = source_shape(kind, &s, &r).iter().product();
            state.insert(name, moments(len, 1.0, vec![]));
        }
        let full = expand_adam_state::<B>(&s, &ExpandOptions::default(), state.clone()).unwrap();
        assert_eq!(full.len(), parameters(&s).len());
        state.insert("h.9.extra".into(), moments(1, 1.0, vec![]));
        let e = expand_adam_state::<B>(&s, &ExpandOptions::default(), state).unwrap_err();
        assert!(matches!(e, CloneError::UnknownMoments { .. }), "{e}");
    }
}
