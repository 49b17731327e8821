//! Benchmark: expand a GPT-2 124M-shaped model (n = m = 2) on the CPU (burn's flex backend)
//! and print the wall time and the peak resident memory against source + target + one layer.
//!
//! Run with `cargo bench -p hyperclone-cloning --bench expand_gpt2` (add `-- noisy` to also
//! time the noisy-symmetric variant). Linux only for the memory figures (/proc/self/status).

use std::time::Instant;

use burn::backend::Flex;
use hyperclone_cloning::{
    expand, expand_config, probe_tokens, symmetry, verify, ExpandOptions, Variant,
};
use hyperclone_model::{tokens_tensor, Gpt, GptConfig};

type B = Flex;

/// A field of /proc/self/status in bytes (VmRSS, VmHWM), or 0 where unavailable.
fn status_bytes(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Resets the peak-RSS counter (VmHWM) to the current RSS (Linux ≥ 4.0).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let noisy_too = std::env::args().any(|a| a == "noisy");
    let device = Default::default();
    let source_config = GptConfig::gpt2_124m();
    let baseline = status_bytes("VmRSS:");

    let t = Instant::now();
    let source = Gpt::<B>::init(&source_config, 0, &device).expect("valid preset");
    let init_s = t.elapsed().as_secs_f64();
    let after_source = status_bytes("VmRSS:");

    let mut variants = vec![Variant::Symmetric];
    if noisy_too {
        variants.push(Variant::NoisySymmetric);
    }
    for variant in variants {
        let opts = ExpandOptions {
            width_factor: 2,
            ffn_factor: 2,
            variant,
            ..Default::default()
        };
        let target_config = expand_config(&source_config, &opts).expect("valid expansion");
        let (sp, tp) = (source_config.param_count(), target_config.param_count());
        let d = target_config.d_model;
        let layer_params = target_config.param_count() / target_config.n_layer
            - (target_config.vocab_size + target_config.context_length) * d / target_config.n_layer;
        let (src_b, tgt_b, layer_b) = (4 * sp as u64, 4 * tp as u64, 4 * layer_params as u64);

        // The zero-filled shell that `expand` builds before overwriting every parameter.
        let t = Instant::now();
        drop(Gpt::<B>::zeros(&target_config, &device).expect("valid target"));
        let target_init_s = t.elapsed().as_secs_f64();

        let rss_before = status_bytes("VmRSS:");
        reset_peak();
        let t = Instant::now();
        let target = expand(&source, &opts).expect("expansion");
        let expand_s = t.elapsed().as_secs_f64();
        let peak = status_bytes("VmHWM:");
        let after = status_bytes("VmRSS:");

        let t = Instant::now();
        let ids = probe_tokens(source_config.vocab_size, 1, 64, 0);
        let v = verify(&source, &target, tokens_tensor(&ids, 1, 64, &device)).expect("verify");
        let verify_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let sym = symmetry(&target, 2, 2).expect("symmetry");
        let symmetry_s = t.elapsed().as_secs_f64();
        drop(target);

        println!("## {variant}, n = m = 2, GPT-2 124M shape, burn flex (CPU)");
        println!("source params        {sp:>12}  ({:.1} MiB f32)", mib(src_b));
        println!("target params        {tp:>12}  ({:.1} MiB f32)", mib(tgt_b));
        println!(
            "one target layer     {layer_params:>12}  ({:.1} MiB f32)",
            mib(layer_b)
        );
        println!("source init          {init_s:>9.2} s");
        println!("expand (total)       {expand_s:>9.2} s");
        println!("  of which the Gpt::zeros shell ≈ {target_init_s:.2} s");
        println!(
            "verify (1 x 64)      {verify_s:>9.2} s   rel_err {:.2e}, KL {:.2e}",
            v.rel_err, v.kl
        );
        println!(
            "symmetry()           {symmetry_s:>9.2} s   mean {:.4}",
            sym.mean
        );
        println!("RSS process baseline {:>9.1} MiB", mib(baseline));
        println!("RSS with source      {:>9.1} MiB", mib(after_source));
        println!("RSS before expand    {:>9.1} MiB", mib(rss_before));
        println!("RSS after expand     {:>9.1} MiB", mib(after));
        println!("peak RSS in expand   {:>9.1} MiB", mib(peak));
        let budget = baseline + src_b + tgt_b + layer_b;
        println!(
            "budget baseline + source + target + one layer = {:.1} MiB -> peak is {:.1} MiB {} budget",
            mib(budget),
            mib(peak.abs_diff(budget)),
            if peak <= budget { "under" } else { "OVER" }
        );
        println!();
    }
}
