//! Times forward + backward + AdamW of the same model, batch and weights on `flex` and
//! `ndarray`, back to back, and prints one line per backend and shape.

use std::time::Instant;

use burn::backend::{Autodiff, Flex, NdArray};
use hyperclone_model::{tokens_tensor, Gpt, GptAutodiffBackend, GptConfig, SplitMix64};
use hyperclone_training::config::OptimizerConfig;
use hyperclone_training::optim::AdamW;

fn step_ms<AB: GptAutodiffBackend>(config: &GptConfig, batch: usize, seq: usize, steps: usize) -> f64 {
    let device = AB::Device::default();
    let mut model = Gpt::<AB>::init(config, 0, &device).expect("valid preset");
    let mut optimizer = AdamW::<AB>::new(OptimizerConfig::default());
    let mut rng = SplitMix64::new(1);
    let ids: Vec<u32> = (0..batch * seq * 2)
        .map(|_| (rng.next_u64() % config.vocab_size as u64) as u32)
        .collect();
    let mut times = Vec::new();
    for i in 0..steps + 2 {
        let t0 = Instant::now();
        let x = tokens_tensor::<AB>(&ids[..batch * seq], batch, seq, &device);
        let y = tokens_tensor::<AB>(&ids[batch * seq..], batch, seq, &device);
        let loss = model.forward_loss(x, y);
        let grads = loss.backward();
        optimizer.accumulate(&model, &grads);
        model = optimizer.step(model, 1e-4).0;
        AB::sync(&device).expect("sync");
        if i >= 2 {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    for (preset, batch, seq, steps) in [("cpu-tiny", 8, 64, 20), ("cpu-small", 8, 128, 8)] {
        let config = GptConfig::preset(preset).expect("preset");
        for round in 1..=2 {
            let flex = step_ms::<Autodiff<Flex>>(&config, batch, seq, steps);
            let nd = step_ms::<Autodiff<NdArray>>(&config, batch, seq, steps);
            println!(
                "{preset} B={batch} T={seq} round {round}: flex {flex:.1} ms/step, ndarray {nd:.1} ms/step, ndarray/flex {:.2}",
                nd / flex
            );
        }
    }
}
