//! Batches of contiguous token windows `[B, T+1]` drawn from a [`TokenStream`].
//!
//! - [`BatchSampler::random_batch`]: window starts drawn uniformly (with replacement) from a PRNG
//!   seeded by a hash of `(seed, step)`. The batch is a pure function of `(stream, seed, step)`,
//!   so a run resumed at step `s` sees exactly the batches it would have seen.
//! - [`BatchSampler::sequential_batch`]: epoch mode; the stream is cut into windows at stride
//!   `T` (every token is a target once per epoch) and batch `s` takes windows
//!   `s·B .. s·B + B` modulo their number, wrapping around.
//! - [`validation_batches`]: a fixed, evenly spaced, non-random set of windows.

use crate::shard::{ShardError, TokenStream};
use thiserror::Error;

/// Errors of this module.
#[derive(Debug, Error)]
pub enum BatchError {
    /// The stream holds fewer than `seq_len + 1` tokens (or too few windows for one batch).
    #[error("token stream of {tokens} tokens is too short for {needed}")]
    StreamTooShort {
        /// Tokens in the stream.
        tokens: u64,
        /// What was needed, in words.
        needed: String,
    },
    /// `batch_size` or `seq_len` is 0.
    #[error("invalid batch shape: batch_size = {batch_size}, seq_len = {seq_len} (both must be at least 1)")]
    BadShape {
        /// Rows.
        batch_size: usize,
        /// Tokens per row (inputs).
        seq_len: usize,
    },
    /// Reading tokens failed.
    #[error(transparent)]
    Shard(#[from] ShardError),
}

/// `batch_size` rows of `seq_len + 1` contiguous tokens, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Rows (B).
    pub batch_size: usize,
    /// Inputs per row (T); each row holds T + 1 tokens.
    pub seq_len: usize,
    /// `[B, T+1]` row-major.
    pub tokens: Vec<u32>,
}

impl Batch {
    /// Row `b` (T + 1 tokens).
    pub fn row(&self, b: usize) -> &[u32] {
        let w = self.seq_len + 1;
        &self.tokens[b * w..(b + 1) * w]
    }

    /// The first T tokens of each row: `[B, T]` row-major.
    pub fn inputs(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.batch_size * self.seq_len);
        for b in 0..self.batch_size {
            out.extend_from_slice(&self.row(b)[..self.seq_len]);
        }
        out
    }

    /// The last T tokens of each row (inputs shifted by one): `[B, T]` row-major.
    pub fn targets(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.batch_size * self.seq_len);
        for b in 0..self.batch_size {
            out.extend_from_slice(&self.row(b)[1..]);
        }
        out
    }
}

/// SplitMix64 finaliser: a bijective 64-bit mix.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A small deterministic PRNG (SplitMix64) seeded from `(seed, step)`.
struct StepRng {
    state: u64,
}

impl StepRng {
    fn new(seed: u64, step: u64) -> Self {
        let state =
            mix64(seed ^ 0x6a09_e667_f3bc_c908) ^ mix64(step.wrapping_add(0x9e37_79b9_7f4a_7c15));
        StepRng {
            state: mix64(state),
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.state)
    }

    /// Uniform in `[0, n)` without modulo bias (Lemire's method with rejection); `n > 0`.
    fn below(&mut self, n: u64) -> u64 {
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

/// Draws `[batch_size, seq_len + 1]` batches from a stream, deterministically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSampler {
    /// Rows per batch (B).
    pub batch_size: usize,
    /// Input tokens per row (T).
    pub seq_len: usize,
    /// Seed of the random mode.
    pub seed: u64,
}

impl BatchSampler {
    /// A sampler; `batch_size` and `seq_len` must be at least 1.
    pub fn new(batch_size: usize, seq_len: usize, seed: u64) -> Result<Self, BatchError> {
        let s = BatchSampler {
            batch_size,
            seq_len,
            seed,
        };
        s.check_shape()?;
        Ok(s)
    }

    fn check_shape(&self) -> Result<(), BatchError> {
        if self.batch_size == 0 || self.seq_len == 0 {
            return Err(BatchError::BadShape {
                batch_size: self.batch_size,
                seq_len: self.seq_len,
            });
        }
        Ok(())
    }

    fn window_len(&self) -> u64 {
        self.seq_len as u64 + 1
    }

    /// Batch number `step` of the random mode: B window starts drawn uniformly from
    /// `[0, len - T - 1]` by a PRNG seeded with `(seed, step)`.
    pub fn random_batch(&self, stream: &TokenStream, step: u64) -> Result<Batch, BatchError> {
        self.check_shape()?;
        let len = stream.len();
        if len < self.window_len() {
            return Err(BatchError::StreamTooShort {
                tokens: len,
                needed: format!("one window of seq_len + 1 = {} tokens", self.window_len()),
            });
        }
        let positions = len - self.window_len() + 1;
        let mut rng = StepRng::new(self.seed, step);
        let mut tokens = Vec::with_capacity(self.batch_size * (self.seq_len + 1));
        for _ in 0..self.batch_size {
            let start = rng.below(positions);
            stream.window_into(start, self.seq_len + 1, &mut tokens)?;
        }
        Ok(Batch {
            batch_size: self.batch_size,
            seq_len: self.seq_len,
            tokens,
        })
    }

    /// Windows in one epoch of the sequential mode: `(len - 1) / T`.
    pub fn windows_per_epoch(&self, stream: &TokenStream) -> u64 {
        if self.seq_len == 0 {
            return 0;
        }
        stream.len().saturating_sub(1) / self.seq_len as u64
    }

    /// Batches in one epoch of the sequential mode (the last one may wrap around).
    pub fn batches_per_epoch(&self, stream: &TokenStream) -> u64 {
        self.windows_per_epoch(stream)
            .div_ceil(self.batch_size.max(1) as u64)
    }

    /// Batch number `step` of the sequential (epoch) mode: row `b` is window
    /// `(step·B + b) mod n`, the window `i` starting at token `i·T`.
    pub fn sequential_batch(&self, stream: &TokenStream, step: u64) -> Result<Batch, BatchError> {
        self.check_shape()?;
        let n = self.windows_per_epoch(stream);
        if n == 0 {
            return Err(BatchError::StreamTooShort {
                tokens: stream.len(),
                needed: format!("one window of seq_len + 1 = {} tokens", self.window_len()),
            });
        }
        let b = self.batch_size as u64;
        let first = ((step as u128 * b as u128) % n as u128) as u64;
        let mut tokens = Vec::with_capacity(self.batch_size * (self.seq_len + 1));
        for r in 0..b {
            let w = (first + r) % n;
            stream.window_into(w * self.seq_len as u64, self.seq_len + 1, &mut tokens)?;
        }
        Ok(Batch {
            batch_size: self.batch_size,
            seq_len: self.seq_len,
            tokens,
        })
    }
}

/// A fixed validation set: `k·batch_size` windows of `seq_len + 1` tokens, evenly spaced from
/// the start to the end of the stream, with `k = min(max_batches, ⌊(len-1)/T⌋ / batch_size)`.
/// Windows never overlap by more than one token. No randomness: the same stream always gives
/// the same batches.
pub fn validation_batches(
    stream: &TokenStream,
    batch_size: usize,
    seq_len: usize,
    max_batches: usize,
) -> Result<Vec<Batch>, BatchError> {
    if batch_size == 0 || seq_len == 0 {
        return Err(BatchError::BadShape {
            batch_size,
            seq_len,
        });
    }
    let len = stream.len();
    let available = len.saturating_sub(1) / seq_len as u64;
    let k = (max_batches as u64).min(available / batch_size as u64);
    if k == 0 {
        return Err(BatchError::StreamTooShort {
            tokens: len,
            needed: format!(
                "{batch_size} non-overlapping validation windows of {} tokens",
                seq_len + 1
            ),
        });
    }
    let count = k * batch_size as u64;
    let span = len - (seq_len as u64 + 1);
    let mut batches = Vec::with_capacity(k as usize);
    let mut tokens = Vec::with_capacity(batch_size * (seq_len + 1));
    for i in 0..count {
        let start = if count == 1 {
            0
        } else {
            ((i as u128 * span as u128) / (count as u128 - 1)) as u64
        };
        stream.window_into(start, seq_len + 1, &mut tokens)?;
        if tokens.len() == batch_size * (seq_len + 1) {
            batches.push(Batch {
                batch_size,
                seq_len,
                tokens: std::mem::replace(
                    &mut tokens,
                    Vec::with_capacity(batch_size * (seq_len + 1)),
                ),
            });
        }
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::{write_shard, Shard};

    /// A stream holding 0, 1, 2, … (mod vocab), split over a few shards.
    fn counting_stream(len: u32, dir: &std::path::Path) -> TokenStream {
        let all: Vec<u32> = (0..len).collect();
        let mut shards = Vec::new();
        for (i, part) in all.chunks(len.div_ceil(3).max(1) as usize).enumerate() {
            let p = dir.join(format!("s{i}.bin"));
            write_shard(&p, part, len.max(1), &[1; 32]).unwrap();
            shards.push(Shard::open(&p).unwrap());
        }
        TokenStream::from_shards(shards)
    }

    #[test]
    fn random_batches_are_pure_functions_of_seed_and_step() {
        let dir = tempfile::tempdir().unwrap();
        let stream = counting_stream(10_000, dir.path());
        let s = BatchSampler::new(4, 16, 42).unwrap();
        let a = s.random_batch(&stream, 7).unwrap();
        let b = s.random_batch(&stream, 7).unwrap();
        assert_eq!(a, b);
        // Resuming: steps drawn out of order give the same batches.
        let in_order: Vec<_> = (0..5)
            .map(|k| s.random_batch(&stream, k).unwrap())
            .collect();
        for k in (0..5).rev() {
            assert_eq!(s.random_batch(&stream, k).unwrap(), in_order[k as usize]);
        }
        assert_ne!(in_order[0], in_order[1]);
        let other_seed = BatchSampler::new(4, 16, 43).unwrap();
        assert_ne!(other_seed.random_batch(&stream, 7).unwrap(), a);
        // Rows are contiguous windows; targets are inputs shifted by one.
        for r in 0..4 {
            let row = a.row(r);
            assert_eq!(row.len(), 17);
            assert!(row.windows(2).all(|w| w[1] == w[0] + 1));
        }
        let (inp, tgt) = (a.inputs(), a.targets());
        assert_eq!(inp.len(), 4 * 16);
        for r in 0..4 {
            for t in 0..16 {
                assert_eq!(tgt[r * 16 + t], inp[r * 16 + t] + 1);
            }
        }
    }

    #[test]
    fn random_positions_cover_the_stream_uniformly() {
        let dir = tempfile::tempdir().unwrap();
        let stream = counting_stream(1_001, dir.path());
        let s = BatchSampler::new(8, 1, 3).unwrap();
        // 1000 possible starts, 10 buckets of 100; 2000 batches x 8 rows = 16000 draws.
        let mut buckets = [0u32; 10];
        for step in 0..2000 {
            let b = s.random_batch(&stream, step).unwrap();
            for r in 0..8 {
                buckets[(b.row(r)[0] / 100) as usize] += 1;
            }
        }
        // Each bucket expects 1600 (sd = 38); 5 sd either side.
        for (i, &c) in buckets.iter().enumerate() {
            assert!((1410..=1790).contains(&c), "bucket {i}: {c}");
        }
    }

    #[test]
    fn edge_window_at_the_very_end_is_reachable() {
        let dir = tempfile::tempdir().unwrap();
        let stream = counting_stream(5, dir.path());
        let s = BatchSampler::new(1, 3, 0).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for step in 0..200 {
            seen.insert(s.random_batch(&stream, step).unwrap().row(0)[0]);
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn sequential_batches_cover_an_epoch_then_wrap() {
        let dir = tempfile::tempdir().unwrap();
        let stream = counting_stream(101, dir.path());
        let s = BatchSampler::new(3, 10, 0).unwrap();
        assert_eq!(s.windows_per_epoch(&stream), 10);
        assert_eq!(s.batches_per_epoch(&stream), 4);
        let starts: Vec<u32> = (0..4)
            .flat_map(|step| {
                let b = s.sequential_batch(&stream, step).unwrap();
                (0..3).map(move |r| b.row(r)[0]).collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(starts, vec![0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 0, 10]);
        // Every token but the first is a target exactly once in the first 10 windows.
        let last = s.sequential_batch(&stream, 3).unwrap();
        assert_eq!(last.row(0)[10], 100);
    }

    #[test]
    fn validation_windows_are_fixed_spread_and_disjoint() {
        let dir = tempfile::tempdir().unwrap();
        let stream = counting_stream(1_000, dir.path());
        let v = validation_batches(&stream, 4, 9, 5).unwrap();
        assert_eq!(v.len(), 5);
        assert_eq!(v, validation_batches(&stream, 4, 9, 5).unwrap());
        let starts: Vec<u32> = v
            .iter()
            .flat_map(|b| (0..4).map(|r| b.row(r)[0]).collect::<Vec<_>>())
            .collect();
        assert_eq!(starts[0], 0);
        assert_eq!(*starts.last().unwrap(), 1000 - 10);
        assert!(starts.windows(2).all(|w| w[1] >= w[0] + 9));
        // Capped by what the stream holds: (999 / 9) / 4 = 27 batches.
        assert_eq!(validation_batches(&stream, 4, 9, 1000).unwrap().len(), 27);
    }

    #[test]
    fn too_short_streams_and_bad_shapes_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let stream = counting_stream(10, dir.path());
        let s = BatchSampler::new(2, 10, 0).unwrap();
        assert!(matches!(
            s.random_batch(&stream, 0),
            Err(BatchError::StreamTooShort { tokens: 10, .. })
        ));
        assert!(matches!(
            s.sequential_batch(&stream, 0),
            Err(BatchError::StreamTooShort { .. })
        ));
        assert!(matches!(
            validation_batches(&stream, 2, 9, 1),
            Err(BatchError::StreamTooShort { .. })
        ));
        assert!(matches!(
            BatchSampler::new(0, 4, 0),
            Err(BatchError::BadShape { .. })
        ));
        assert!(matches!(
            validation_batches(&stream, 1, 0, 1),
            Err(BatchError::BadShape { .. })
        ));
    }

    #[test]
    fn below_is_in_range() {
        let mut rng = StepRng::new(1, 2);
        for n in [1u64, 2, 3, 7, 1 << 40, u64::MAX] {
            for _ in 0..100 {
                assert!(rng.below(n) < n);
            }
        }
    }
}
