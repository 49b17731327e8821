//! What a run measures about its machine: the per-device peak table behind MFU, the CPU's
//! name and the process's peak memory. The files the measurements go to (`metrics.jsonl`,
//! `run_info.json`) are declared once, in `hyperclone-runfiles`, for the trainer that writes
//! them and the report that reads them; they are re-exported here.

pub use hyperclone_runfiles::{
    read_metrics, EvalLine, Line, Metrics, MetricsWriter, RunInfo, SymmetryLine, TrainLine,
    WarmupLine,
};

/// Peak dense FLOP/s of a device by name and precision, and whether it is an estimate.
/// Known GPUs come from their data sheets (dense, no sparsity); f32 on tensor-core GPUs is
/// counted at the TF32 rate since burn's matmuls run f32 on tensor cores as TF32.
pub fn peak_flops(device_name: &str, bf16: bool) -> Option<(f64, bool)> {
    let n = device_name.to_ascii_lowercase();
    let table: [(&str, f64, f64); 6] = [
        // (name contains, bf16 dense, tf32 dense)
        ("h200", 989e12, 495e12),
        ("h100", 989e12, 495e12),
        ("a100", 312e12, 156e12),
        ("l40s", 362e12, 183e12),
        ("a10g", 125e12, 62.5e12),
        ("rtx 4090", 165e12, 82.6e12),
    ];
    for (key, bf, tf) in table {
        if n.contains(key) {
            return Some((if bf16 { bf } else { tf }, false));
        }
    }
    if n.starts_with("cpu") {
        // Estimate: cores × clock × 32 f32 FLOP/cycle (two AVX2 FMA units).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let mhz = cpu_mhz().unwrap_or(2500.0);
        return Some((cores * mhz * 1e6 * 32.0, true));
    }
    None
}

fn cpu_mhz() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
}

/// The CPU's model name from /proc/cpuinfo, prefixed with `cpu: `.
pub fn cpu_name() -> String {
    let name = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("cpu: {name} ({cores} threads)")
}

/// Peak resident memory of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = text
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_table_knows_h100_and_estimates_cpu() {
        assert_eq!(
            peak_flops("NVIDIA H100 80GB HBM3", true),
            Some((989e12, false))
        );
        assert_eq!(
            peak_flops("NVIDIA H100 80GB HBM3", false),
            Some((495e12, false))
        );
        let (cpu, est) = peak_flops(&cpu_name(), false).unwrap();
        assert!(est && cpu > 1e9);
        assert_eq!(peak_flops("Mystery Accelerator", false), None);
    }
}
