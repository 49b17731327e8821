//! Autoregressive sampling: temperature, top-k, seeded.

use crate::ops::GptBackend;

use crate::gpt::{tokens_tensor, Gpt};
use crate::rng::SplitMix64;

/// How to sample continuations.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleOptions {
    /// Number of tokens to append to the prompt.
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f64,
    /// Keep only the k most likely tokens before sampling (`None`: all).
    pub top_k: Option<usize>,
    /// Seed of the sampling stream: same seed, same text.
    pub seed: u64,
}

impl Default for SampleOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 100,
            temperature: 0.8,
            top_k: Some(50),
            seed: 0,
        }
    }
}

/// Draws one token id from `logits` (host-side, so the result does not depend on the backend's
/// random generator).
pub fn sample_token(logits: &[f32], options: &SampleOptions, rng: &mut SplitMix64) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &l)| {
                if l > best.1 {
                    (i, l)
                } else {
                    best
                }
            })
            .0 as u32
    };
    if options.temperature <= 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let keep = options.top_k.unwrap_or(logits.len()).clamp(1, logits.len());
    let kept = &order[..keep];
    let max = f64::from(logits[kept[0]]);
    let weights: Vec<f64> = kept
        .iter()
        .map(|&i| ((f64::from(logits[i]) - max) / options.temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut r = rng.next_f64() * total;
    for (&i, w) in kept.iter().zip(&weights) {
        if r < *w {
            return i as u32;
        }
        r -= w;
    }
    kept[keep - 1] as u32
}

/// Appends up to `max_new_tokens` sampled tokens to `prompt` and returns the whole sequence.
/// The context is cropped to the model's `context_length` (no KV cache: fine for the small
/// models this runs on the CPU).
pub fn generate<B: GptBackend>(
    model: &Gpt<B>,
    prompt: &[u32],
    options: &SampleOptions,
) -> Vec<u32> {
    let device = model.wte.weight.device();
    let ctx = model.config().context_length;
    let vocab = model.config().vocab_size;
    let mut rng = SplitMix64::derive(options.seed, "sample");
    let mut ids = prompt.to_vec();
    if ids.is_empty() {
        ids.push(0);
    }
    for _ in 0..options.max_new_tokens {
        let start = ids.len().saturating_sub(ctx);
        let window = &ids[start..];
        let logits = model.forward(tokens_tensor(window, 1, window.len(), &device)); // [1, T, V]
        let last = logits
            .narrow(1, window.len() - 1, 1)
            .reshape([vocab]) // [V]
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("f32 logits");
        ids.push(sample_token(&last, options, &mut rng));
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_argmax_and_top1_equals_greedy() {
        let logits = [0.1f32, 2.0, -1.0, 1.5];
        let mut rng = SplitMix64::new(0);
        let greedy = SampleOptions {
            temperature: 0.0,
            ..Default::default()
        };
        assert_eq!(sample_token(&logits, &greedy, &mut rng), 1);
        let top1 = SampleOptions {
            temperature: 1.0,
            top_k: Some(1),
            ..Default::default()
        };
        for _ in 0..20 {
            assert_eq!(sample_token(&logits, &top1, &mut rng), 1);
        }
    }

    #[test]
    fn top_k_never_samples_outside_the_k_best() {
        let logits = [3.0f32, 2.9, -5.0, 2.8, -4.0];
        let opts = SampleOptions {
            temperature: 2.0,
            top_k: Some(3),
            ..Default::default()
        };
        let mut rng = SplitMix64::new(3);
        let mut seen = [0usize; 5];
        for _ in 0..3000 {
            seen[sample_token(&logits, &opts, &mut rng) as usize] += 1;
        }
        assert_eq!(seen[2] + seen[4], 0);
        assert!(seen[0] > 500 && seen[1] > 500 && seen[3] > 500, "{seen:?}");
    }
}
