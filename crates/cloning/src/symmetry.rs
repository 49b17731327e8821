//! Measuring how far the cloned copies of an expanded model have drifted apart.
//!
//! Every weight matrix of an expanded model is a grid of blocks (see [`crate::plan::rule`]):
//! `input_copies` blocks along axis 0 and, per output section, `copies` blocks along axis 1.
//! For each block other than the first of its section, and for each output unit (a column in
//! burn's `[d_in, d_out]` layout, a row in the spec's `[d_out, d_in]` notation), this module
//! takes the cosine similarity between that unit's weights in the block and in the section's
//! first block. A weight's score is the mean of these cosines over all units and blocks.
//! Right after symmetric cloning every block is equal: the score is exactly 1. Diagonal
//! cloning scores lower from the start (its zero blocks count as cosine 0), noise lowers it a
//! little, and training lowers it as the copies specialise. Two all-zero units count as
//! identical (1); one zero unit against a non-zero one counts as 0.
//!
//! Matrices only: embeddings (`wte`, `wpe`), `c_attn`, `attn.c_proj`, `c_fc`, `c_gate`,
//! `mlp.c_proj`, `lm_head`. Norm scales and biases are vectors and are not scored.

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use hyperclone_model::Gpt;
use serde::{Deserialize, Serialize};

use crate::plan::{rule, source_config_of, CloneError, ParamKind, Rule};

/// Mean cosine similarity between cloned sub-blocks, per layer and per weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SymmetryReport {
    /// Mean of `per_layer` (the transformer blocks; embeddings and head are left out).
    pub mean: f64,
    /// For each transformer block, the mean of its weights' scores.
    pub per_layer: Vec<f64>,
    /// Every scored weight by checkpoint name (`h.0.attn.c_attn.weight`, `wte.weight`, …).
    pub per_weight: Vec<(String, f64)>,
}

/// Why symmetry could not be measured.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SymmetryError {
    /// The model cannot be an expansion by the given factors.
    #[error("symmetry: {0}")]
    Factors(#[from] CloneError),
    /// With both factors 1 nothing was cloned, so there is nothing to compare.
    #[error(
        "symmetry: width_factor = ffn_factor = 1 clones nothing; there are no copies to compare"
    )]
    NothingCloned,
    /// A tensor could not be read back to the host.
    #[error("symmetry: reading {name} back to the host: {reason}")]
    Data {
        /// The parameter's checkpoint name.
        name: String,
        /// The error.
        reason: String,
    },
}

/// Scores `model`, an expansion by width factor `width_factor` and FFN factor `ffn_factor`
/// (both are in the `expand.json` next to an expanded checkpoint; see
/// [`crate::record::read_expand_record`]). Works on any backend, autodiff included (the
/// weights are detached); only per-unit sums come back to the host.
pub fn symmetry<B: Backend>(
    model: &Gpt<B>,
    width_factor: usize,
    ffn_factor: usize,
) -> Result<SymmetryReport, SymmetryError> {
    if width_factor == 1 && ffn_factor == 1 {
        return Err(SymmetryError::NothingCloned);
    }
    let s = source_config_of(model.config(), width_factor, ffn_factor)?;
    let r = |kind| rule(kind, &s, width_factor, ffn_factor);
    use ParamKind::*;
    let mut per_weight = Vec::new();
    let mut score =
        |name: String, kind, p: &Param<Tensor<B, 2>>| -> Result<Option<f64>, SymmetryError> {
            let v = weight_score(&name, p.val().detach(), &r(kind))?;
            if let Some(v) = v {
                per_weight.push((name, v));
            }
            Ok(v)
        };
    score("wte.weight".into(), TokenEmbedding, &model.wte.weight)?;
    if let Some(wpe) = &model.wpe {
        score("wpe.weight".into(), PositionEmbedding, &wpe.weight)?;
    }
    let mut per_layer = Vec::with_capacity(model.h.len());
    for (l, b) in model.h.iter().enumerate() {
        let p = |name: &str| format!("h.{l}.{name}.weight");
        let mut layer = vec![
            score(p("attn.c_attn"), QkvWeight, &b.attn.c_attn.weight)?,
            score(p("attn.c_proj"), AttnOutWeight, &b.attn.c_proj.weight)?,
            score(p("mlp.c_fc"), MlpUpWeight, &b.mlp.c_fc.weight)?,
            score(p("mlp.c_proj"), MlpDownWeight, &b.mlp.c_proj.weight)?,
        ];
        if let Some(g) = &b.mlp.c_gate {
            layer.push(score(p("mlp.c_gate"), MlpUpWeight, &g.weight)?);
        }
        let layer: Vec<f64> = layer.into_iter().flatten().collect();
        per_layer.push(layer.iter().sum::<f64>() / layer.len().max(1) as f64);
    }
    if let Some(head) = &model.lm_head {
        score("lm_head.weight".into(), LmHead, &head.weight)?;
    }
    let mean = per_layer.iter().sum::<f64>() / per_layer.len().max(1) as f64;
    Ok(SymmetryReport {
        mean,
        per_layer,
        per_weight,
    })
}

/// Mean per-unit cosine of every block against the first block of its section; `None` when
/// the rule makes a single block (nothing was cloned).
fn weight_score<B: Backend>(
    name: &str,
    w: Tensor<B, 2>,
    rule: &Rule,
) -> Result<Option<f64>, SymmetryError> {
    let [rows_total, _] = w.dims();
    let rows = rows_total / rule.input_copies;
    let (mut sum, mut count) = (0f64, 0usize);
    let mut offset = 0;
    for sec in &rule.output {
        let block = |i: usize, j: usize| {
            w.clone()
                .narrow(0, i * rows, rows)
                .narrow(1, offset + j * sec.width, sec.width)
        };
        let first = block(0, 0);
        let n0 = host(name, (first.clone() * first.clone()).sum_dim(0))?;
        for i in 0..rule.input_copies {
            for j in 0..sec.copies {
                if i == 0 && j == 0 {
                    continue;
                }
                let other = block(i, j);
                let dot = host(name, (first.clone() * other.clone()).sum_dim(0))?;
                let n1 = host(name, (other.clone() * other).sum_dim(0))?;
                for ((d, a), b) in dot.iter().zip(&n0).zip(&n1) {
                    sum += cosine(*d, *a, *b);
                    count += 1;
                }
            }
        }
        offset += sec.width * sec.copies;
    }
    Ok((count > 0).then(|| sum / count as f64))
}

/// Cosine from a dot product and two squared norms (see the module doc for zero vectors).
fn cosine(dot: f64, a2: f64, b2: f64) -> f64 {
    match (a2 > 0.0, b2 > 0.0) {
        (false, false) => 1.0,
        (true, true) => (dot / (a2.sqrt() * b2.sqrt())).clamp(-1.0, 1.0),
        _ => 0.0,
    }
}

fn host<B: Backend>(name: &str, t: Tensor<B, 2>) -> Result<Vec<f64>, SymmetryError> {
    t.into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .map_err(|e| SymmetryError::Data {
            name: name.to_string(),
            reason: format!("{e:?}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_handles_zero_vectors() {
        assert_eq!(cosine(0.0, 0.0, 0.0), 1.0);
        assert_eq!(cosine(0.0, 1.0, 0.0), 0.0);
        assert!((cosine(2.0, 4.0, 1.0) - 1.0).abs() < 1e-15);
        assert!((cosine(-1.0, 1.0, 1.0) + 1.0).abs() < 1e-15);
    }
}
