//! Checking function preservation: source and target run on the same probe batch and their
//! logits are compared on the host in f64.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use hyperclone_model::GptBackend;
use hyperclone_model::{Gpt, SplitMix64};
use serde::{Deserialize, Serialize};

/// Default relative tolerance of [`Verification::rel_err`] for f32 models, every variant.
pub const DEFAULT_TOLERANCE_F32: f64 = 1e-5;

/// How far the expanded model's logits are from the source's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// `max |target − source|` over every logit of the probe batch.
    pub max_abs_logit_diff: f64,
    /// `max_abs_logit_diff / max |source logit|`: the worst error relative to the scale of
    /// the logits (0 when the source logits are all zero and so are the differences).
    pub rel_err: f64,
    /// `KL(source ‖ target)` of the next-token distributions, in nats, mean over positions.
    pub kl: f64,
    /// `max |source logit|`, the denominator of `rel_err`.
    pub max_abs_source_logit: f64,
    /// Number of positions (batch × sequence) compared.
    pub positions: usize,
}

impl Verification {
    /// Whether `rel_err` is within `tolerance` (false for NaN).
    pub fn within(&self, tolerance: f64) -> bool {
        self.rel_err <= tolerance
    }

    /// `Ok` when `rel_err ≤ tolerance`, else [`VerifyError::Tolerance`].
    pub fn check(&self, tolerance: f64) -> Result<(), VerifyError> {
        if self.within(tolerance) {
            Ok(())
        } else {
            Err(VerifyError::Tolerance {
                rel_err: self.rel_err,
                tolerance,
                max_abs_logit_diff: self.max_abs_logit_diff,
                kl: self.kl,
            })
        }
    }
}

/// Why a verification could not run or did not pass.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VerifyError {
    /// The two models do not share a vocabulary.
    #[error("source vocab_size {source_vocab} differs from target vocab_size {target_vocab}")]
    Vocab {
        /// Source vocabulary size.
        source_vocab: usize,
        /// Target vocabulary size.
        target_vocab: usize,
    },
    /// The probe batch is empty.
    #[error("the probe batch is empty ([{batch}, {seq}])")]
    Empty {
        /// Batch size.
        batch: usize,
        /// Sequence length.
        seq: usize,
    },
    /// The probe sequences are longer than a model's context.
    #[error("probe sequences of {seq} tokens exceed context_length {context}")]
    TooLong {
        /// Probe sequence length.
        seq: usize,
        /// The smaller context length of the two models.
        context: usize,
    },
    /// A probe token id is outside the vocabulary.
    #[error("probe token id {token} is outside the vocabulary of {vocab} ids")]
    Token {
        /// The token id.
        token: i64,
        /// Vocabulary size.
        vocab: usize,
    },
    /// Tensors could not be read back to the host.
    #[error("reading {what} back to the host: {reason}")]
    Data {
        /// Which tensor.
        what: &'static str,
        /// The error.
        reason: String,
    },
    /// The expanded model does not reproduce the source's logits.
    #[error("the expanded model is not function-preserving: relative logit error {rel_err:.3e} exceeds the tolerance {tolerance:.1e} (max |Δlogit| = {max_abs_logit_diff:.3e}, KL = {kl:.3e})")]
    Tolerance {
        /// Measured relative error.
        rel_err: f64,
        /// The tolerance.
        tolerance: f64,
        /// Measured max |Δlogit|.
        max_abs_logit_diff: f64,
        /// Measured KL.
        kl: f64,
    },
}

/// `batch × seq` token ids drawn uniformly from `0..vocab` with `seed` (row-major).
pub fn probe_tokens(vocab: usize, batch: usize, seq: usize, seed: u64) -> Vec<u32> {
    let mut rng = SplitMix64::derive(seed, "probe");
    let vocab = vocab.max(1) as u64;
    (0..batch * seq)
        .map(|_| (rng.next_u64() % vocab) as u32)
        .collect()
}

/// Logits as f32 on the host (every float dtype a model computes in converts exactly).
fn host<B: Backend, const D: usize>(
    t: Tensor<B, D>,
    what: &'static str,
) -> Result<Vec<f32>, VerifyError> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| VerifyError::Data {
            what,
            reason: format!("{e:?}"),
        })
}

/// Runs both models on `tokens` (`[B, T]`) and compares their logits in f64 on the host.
pub fn verify<B: GptBackend>(
    source: &Gpt<B>,
    target: &Gpt<B>,
    tokens: Tensor<B, 2, Int>,
) -> Result<Verification, VerifyError> {
    let (sc, tc) = (source.config(), target.config());
    if sc.vocab_size != tc.vocab_size {
        return Err(VerifyError::Vocab {
            source_vocab: sc.vocab_size,
            target_vocab: tc.vocab_size,
        });
    }
    let [batch, seq] = tokens.dims();
    if batch == 0 || seq == 0 {
        return Err(VerifyError::Empty { batch, seq });
    }
    let context = sc.context_length.min(tc.context_length);
    if seq > context {
        return Err(VerifyError::TooLong { seq, context });
    }
    let ids = tokens
        .clone()
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .map_err(|e| VerifyError::Data {
            what: "probe tokens",
            reason: format!("{e:?}"),
        })?;
    if let Some(&token) = ids
        .iter()
        .find(|&&t| t < 0 || t as u64 >= sc.vocab_size as u64)
    {
        return Err(VerifyError::Token {
            token,
            vocab: sc.vocab_size,
        });
    }
    let s = host(source.forward(tokens.clone()), "source logits")?;
    let t = host(target.forward(tokens), "target logits")?;
    Ok(compare_logits(&s, &t, sc.vocab_size))
}

/// Compares two row-major logit buffers of rows of `vocab` entries (see [`Verification`]),
/// in f64.
pub fn compare_logits(source: &[f32], target: &[f32], vocab: usize) -> Verification {
    let mut max_diff = 0f64;
    let mut max_src = 0f64;
    let mut kl_sum = 0f64;
    let mut finite = true;
    let positions = source.len() / vocab.max(1);
    for (s, t) in source.chunks_exact(vocab).zip(target.chunks_exact(vocab)) {
        for (&a, &b) in s.iter().zip(t) {
            let (a, b) = (f64::from(a), f64::from(b));
            let d = (a - b).abs();
            finite &= d.is_finite();
            max_diff = max_diff.max(d);
            max_src = max_src.max(a.abs());
        }
        let (ls, lt) = (log_softmax(s), log_softmax(t));
        kl_sum += ls
            .iter()
            .zip(&lt)
            .map(|(p, q)| p.exp() * (p - q))
            .sum::<f64>();
    }
    if !finite {
        // A NaN or infinite logit on either side: never within any tolerance.
        max_diff = f64::INFINITY;
    }
    let rel_err = if max_diff == 0.0 {
        0.0
    } else {
        max_diff / max_src
    };
    Verification {
        max_abs_logit_diff: max_diff,
        rel_err,
        kl: kl_sum / positions.max(1) as f64,
        max_abs_source_logit: max_src,
        positions,
    }
}

fn log_softmax(x: &[f32]) -> Vec<f64> {
    let max = x
        .iter()
        .map(|&v| f64::from(v))
        .fold(f64::NEG_INFINITY, f64::max);
    let lse = max
        + x.iter()
            .map(|&v| (f64::from(v) - max).exp())
            .sum::<f64>()
            .ln();
    x.iter().map(|&v| f64::from(v) - lse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_measures_difference_relative_error_and_kl() {
        let s = [1.0f32, 2.0, 3.0, 0.0, 0.0, 0.0];
        let same = compare_logits(&s, &s, 3);
        assert_eq!(
            (same.max_abs_logit_diff, same.rel_err, same.kl),
            (0.0, 0.0, 0.0)
        );
        assert_eq!(same.positions, 2);
        let t = [1.0f32, 2.0, 3.5, 0.0, 0.0, 0.0];
        let v = compare_logits(&s, &t, 3);
        assert_eq!(v.max_abs_logit_diff, 0.5);
        assert!((v.rel_err - 0.5 / 3.0).abs() < 1e-15);
        // KL of the first row by hand, second row 0, mean over 2 positions.
        let p = log_softmax(&s[..3]);
        let q = log_softmax(&t[..3]);
        let kl: f64 = (0..3).map(|i| p[i].exp() * (p[i] - q[i])).sum();
        assert!((v.kl - kl / 2.0).abs() < 1e-15 && v.kl > 0.0);
        assert!(v.check(0.1).is_err() && v.check(0.2).is_ok());
        let e = v.check(0.1).unwrap_err().to_string();
        assert!(
            e.contains("not function-preserving") && e.contains("1.667e-1"),
            "{e}"
        );
        let nan = compare_logits(&s, &[1.0, f32::NAN, 3.0, 0.0, 0.0, 0.0], 3);
        assert!(!nan.within(1.0), "{nan:?}");
    }

    #[test]
    fn probe_tokens_are_seeded_and_in_range() {
        let a = probe_tokens(50, 4, 8, 1);
        assert_eq!(a.len(), 32);
        assert!(a.iter().all(|&t| t < 50));
        assert_eq!(a, probe_tokens(50, 4, 8, 1));
        assert_ne!(a, probe_tokens(50, 4, 8, 2));
    }
}
