//! `hyperclone bench`: throughput of the full training step (forward, backward, AdamW) for a
//! preset and batch shape, printed as a table line and one JSON line, like
//! `scripts/reference/gpt_bench.py` prints for PyTorch.

use std::time::Instant;

use anyhow::{bail, Result};
use hyperclone_model::{
    tokens_tensor, AttentionKernel, CrossEntropyKernel, Gpt, GptAutodiffBackend, GptConfig,
    Kernels, LayerOpsKernel, SplitMix64,
};
use hyperclone_training::config::OptimizerConfig;
use hyperclone_training::metrics::{peak_flops, peak_rss_bytes};
use hyperclone_training::optim::AdamW;
use hyperclone_training::{time_data_parallel_steps, DataParallelBench, Precision, Trainer};

use crate::backend::{run_job, Env, Job};
use crate::train::CliBackend;

/// Measure training-step throughput.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Model preset: cpu-tiny, cpu-small, gpt2-124m, gpt2-350m, llama-small.
    #[arg(long, default_value = "cpu-tiny")]
    pub preset: String,
    /// Sequences per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens per sequence (default: the preset's context length).
    #[arg(long)]
    pub seq: Option<usize>,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Untimed warm-up steps (kernel compilation, allocator).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Backend.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: CliBackend,
    /// f32, bf16 (mixed: f32 weights, bf16 compute) or bf16-pure (bf16 weights; cuda only).
    #[arg(long, default_value = "f32", value_parser = str::parse::<Precision>)]
    pub precision: Precision,
    /// How the training step differentiates attention: fused (the backend's kernel, a
    /// recomputing backward), composed (burn's op-by-op autodiff) or auto (the faster one:
    /// fused on every backend so far).
    #[arg(long, default_value = "auto", value_parser = str::parse::<AttentionKernel>)]
    pub attention: AttentionKernel,
    /// How the training step differentiates the loss: fused (one op, one-pass backward) or
    /// composed (burn's log_softmax and gather).
    #[arg(long, default_value = "fused", value_parser = str::parse::<CrossEntropyKernel>)]
    pub cross_entropy: CrossEntropyKernel,
    /// How the training step differentiates the norms and the GELU: fused (one op each) or
    /// composed (burn's ops).
    #[arg(long, default_value = "fused", value_parser = str::parse::<LayerOpsKernel>)]
    pub layer_ops: LayerOpsKernel,
    /// Then time as many steps again with a device sync after the forward, the backward and
    /// the optimizer, and report each phase's median (`phases_ms` in the JSON). The syncs stop
    /// the host from queuing ahead, so the phases add up to more than `step_ms`.
    #[arg(long)]
    pub phases: bool,
    /// Then time the same global batch split over N data-parallel peers (threads; on the CPU
    /// they share the one device) and report their global tokens/s and the scaling efficiency
    /// (tokens/s of N peers / (N × one device's)).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub devices: usize,
}

impl BenchArgs {
    /// The model's compute dtype and kernels these arguments choose.
    fn kernels(&self) -> Kernels {
        Kernels {
            compute_dtype: self.precision.compute_dtype(),
            attention: self.attention.resolve(),
            cross_entropy: self.cross_entropy,
            layer_ops: self.layer_ops,
        }
    }
}

struct BenchJob {
    args: BenchArgs,
    config: GptConfig,
    seq: usize,
}

impl Job for BenchJob {
    type Output = serde_json::Value;
    fn run<AB: GptAutodiffBackend>(self, device: &AB::Device, env: Env) -> Result<Self::Output> {
        let BenchJob { args, config, seq } = self;
        let batch = args.batch;
        let model = Gpt::<AB>::init(&config, 0, device)?.with_kernels(args.kernels());
        // The training step of `train`, with AdamW's defaults and a fixed learning rate.
        let mut trainer = Trainer::new(
            model,
            AdamW::<AB>::new(OptimizerConfig::default()),
            device.clone(),
        );
        let mut rng = SplitMix64::new(1);
        let ids: Vec<u32> = (0..batch * (seq + 1))
            .map(|_| (rng.next_u64() % config.vocab_size as u64) as u32)
            .collect();
        let inputs: Vec<u32> = (0..batch)
            .flat_map(|r| ids[r * (seq + 1)..r * (seq + 1) + seq].to_vec())
            .collect();
        let targets: Vec<u32> = (0..batch)
            .flat_map(|r| ids[r * (seq + 1) + 1..(r + 1) * (seq + 1)].to_vec())
            .collect();
        let tokens = || {
            (
                tokens_tensor::<AB>(&inputs, batch, seq, device),
                tokens_tensor::<AB>(&targets, batch, seq, device),
            )
        };
        let sync = || trainer_sync::<AB>(device);
        // `host`: how long the host takes to queue a step (all of it on a synchronous CPU
        // backend); close to `step` on a GPU means the step is bound by the host, not the GPU.
        let (mut times, mut host) = (Vec::new(), Vec::new());
        let mut last_loss = f64::NAN;
        for i in 0..args.warmup + args.steps {
            let t0 = Instant::now();
            let step = trainer.step(1, 1e-4, |_| Ok::<_, anyhow::Error>(tokens()))?;
            // The step queues everything and the sync below is its only wait, as in `train`.
            let queued = t0.elapsed().as_secs_f64();
            sync()?;
            if i >= args.warmup {
                times.push(t0.elapsed().as_secs_f64());
                host.push(queued);
            }
            if i + 1 == args.warmup + args.steps {
                last_loss = step.read().0;
            }
        }
        let phases = if args.phases {
            let (mut fwd, mut bwd, mut opt) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..args.steps {
                let t0 = Instant::now();
                let (x, y) = tokens();
                let loss = trainer.forward_loss(x, y);
                sync()?;
                let t1 = Instant::now();
                trainer.backward(loss);
                sync()?;
                let t2 = Instant::now();
                drop(trainer.update(1e-4));
                sync()?;
                fwd.push((t1 - t0).as_secs_f64());
                bwd.push((t2 - t1).as_secs_f64());
                opt.push(t2.elapsed().as_secs_f64());
            }
            Some(serde_json::json!({
                "forward": median(&mut fwd) * 1e3,
                "backward": median(&mut bwd) * 1e3,
                "optimizer": median(&mut opt) * 1e3,
            }))
        } else {
            None
        };
        let host_median = median(&mut host);
        let step_median = median(&mut times);
        let tokens = (batch * seq) as f64;
        let data_parallel = if args.devices > 1 {
            drop(trainer);
            let bench = DataParallelBench {
                model: config.clone(),
                kernels: args.kernels(),
                batch,
                seq,
                warmup: args.warmup,
                steps: args.steps,
            };
            let mut peers =
                time_data_parallel_steps::<AB>(&bench, args.devices, device, &env.device_name)?;
            let peers_median = median(&mut peers);
            let peers_tps = tokens / peers_median;
            let all_reduce =
                hyperclone_training::parallel::registered_device_sum::<AB::InnerBackend>()
                    .map_or("burn-collective", |(name, _)| name);
            Some(serde_json::json!({
                "devices": args.devices,
                "gradient_all_reduce": all_reduce,
                "step_ms": peers_median * 1e3,
                "tokens_per_s": peers_tps,
                "scaling_efficiency": peers_tps / (args.devices as f64 * tokens / step_median),
            }))
        } else {
            None
        };
        let flops_per_token = config.flops_per_token(seq);
        let achieved = flops_per_token * tokens / step_median;
        let peak = peak_flops(&env.device_name, args.precision.matmuls_in_bf16());
        let peak_memory = if env.backend_name == "flex" {
            peak_rss_bytes()
        } else {
            None
        };
        Ok(serde_json::json!({
            "impl": "hyperclone",
            "preset": args.preset,
            "batch": batch,
            "seq": seq,
            "dtype": args.precision.as_str(),
            "attention": args.attention.resolved_name(),
            "cross_entropy": args.cross_entropy.as_str(),
            "layer_ops": args.layer_ops.as_str(),
            "backend": env.backend_name,
            "device": if env.backend_name == "flex" { "cpu" } else { "cuda" },
            "device_name": env.device_name,
            "params": config.param_count(),
            "step_ms": step_median * 1e3,
            "step_ms_min": times[0] * 1e3,
            "host_ms": host_median * 1e3,
            "phases_ms": phases,
            "step_ms_max": times[times.len() - 1] * 1e3,
            "tokens_per_s": tokens / step_median,
            "flops_per_token": flops_per_token,
            "tflops_per_s": achieved / 1e12,
            "mfu": peak.map(|(p, _)| achieved / p),
            "mfu_estimated": peak.is_none_or(|p| p.1),
            "peak_memory_bytes": peak_memory,
            "gpu_memory_reserved_bytes": if env.backend_name == "cuda" {
                crate::backend::gpu_memory_used_by_this_process()
            } else {
                None
            },
            "steps": args.steps,
            "final_loss": last_loss,
            "data_parallel": data_parallel,
        }))
    }
}

/// Waits for `device` to finish its queued work.
fn trainer_sync<AB: GptAutodiffBackend>(device: &AB::Device) -> Result<()> {
    AB::sync(device).map_err(|e| anyhow::anyhow!("device sync failed: {e:?}"))
}

/// The median of `values` (sorted in place; the upper one of an even count).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `hyperclone bench`.
pub fn run(args: BenchArgs) -> Result<()> {
    let Some(config) = GptConfig::preset(&args.preset) else {
        bail!(
            "--preset {:?} is unknown (known: {})",
            args.preset,
            GptConfig::PRESETS.join(", ")
        );
    };
    if args.steps == 0 || args.batch == 0 || args.devices == 0 {
        bail!("--steps, --batch and --devices must be at least 1");
    }
    if !args.batch.is_multiple_of(args.devices) {
        bail!(
            "--batch {} does not split evenly over --devices {}: give a multiple",
            args.batch,
            args.devices
        );
    }
    let seq = args.seq.unwrap_or(config.context_length);
    if seq == 0 || seq > config.context_length {
        bail!(
            "--seq {seq} must be between 1 and the preset's context length {}",
            config.context_length
        );
    }
    let json = run_job(
        args.backend.into(),
        args.precision,
        BenchJob {
            args: args.clone(),
            config,
            seq,
        },
    )?;
    println!(
        "{} {} B={} T={} {} ({} attention, {} cross-entropy, {} norms/GELU): {:.1} ms/step, {:.0} tokens/s, {:.2} TFLOP/s, MFU {}",
        json["backend"].as_str().unwrap_or(""),
        args.preset,
        args.batch,
        seq,
        json["dtype"].as_str().unwrap_or(""),
        json["attention"].as_str().unwrap_or(""),
        json["cross_entropy"].as_str().unwrap_or(""),
        json["layer_ops"].as_str().unwrap_or(""),
        json["step_ms"].as_f64().unwrap_or(f64::NAN),
        json["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
        json["tflops_per_s"].as_f64().unwrap_or(f64::NAN),
        json["mfu"].as_f64().map_or("n/a".to_string(), |m| format!(
            "{:.1}%{}",
            m * 100.0,
            if json["mfu_estimated"].as_bool() == Some(true) {
                " (estimated peak)"
            } else {
                ""
            }
        ))
    );
    let phases = &json["phases_ms"];
    println!(
        "  host queues a step in {:.1} ms{}",
        json["host_ms"].as_f64().unwrap_or(f64::NAN),
        if phases.is_object() {
            format!(
                "; with a sync after each phase: forward {:.1} ms, backward {:.1} ms, optimizer {:.1} ms",
                phases["forward"].as_f64().unwrap_or(f64::NAN),
                phases["backward"].as_f64().unwrap_or(f64::NAN),
                phases["optimizer"].as_f64().unwrap_or(f64::NAN)
            )
        } else {
            String::new()
        }
    );
    let dp = &json["data_parallel"];
    if dp.is_object() {
        println!(
            "  {} data-parallel peers ({} all-reduce), same global batch: {:.1} ms/step, {:.0} tokens/s, scaling efficiency {:.2} (tokens/s of {} peers / {} × one device){}",
            args.devices,
            dp["gradient_all_reduce"].as_str().unwrap_or("?"),
            dp["step_ms"].as_f64().unwrap_or(f64::NAN),
            dp["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
            dp["scaling_efficiency"].as_f64().unwrap_or(f64::NAN),
            args.devices,
            args.devices,
            if json["backend"] == "flex" {
                "; CPU peers share the machine's cores, so this says little about speed"
            } else {
                ""
            }
        );
    }
    println!("{json}");
    Ok(())
}
