//! Backend selection. Library crates are generic over burn's `Backend`; only this file names
//! concrete backends. `flex` (CPU) is compiled in except with `nccl`; `cuda` and `wgpu` come
//! with the cargo features of the same names, and `nccl` adds NCCL's all-reduce to `cuda`.

use anyhow::{bail, Result};
use hyperclone_model::GptAutodiffBackend;
use hyperclone_training::{BackendKind, Precision};

/// What a job learns about where it runs.
#[derive(Debug, Clone)]
pub struct Env {
    /// `flex`, `cuda` or `wgpu`.
    pub backend_name: &'static str,
    /// Human device name (`cpu: …`, the GPU's name); selects the MFU peak.
    pub device_name: String,
}

/// A piece of work generic over the training backend (`AB::InnerBackend` for inference).
pub trait Job {
    /// What the job returns.
    type Output;
    /// Runs the job on `device`.
    fn run<AB: GptAutodiffBackend>(self, device: &AB::Device, env: Env) -> Result<Self::Output>;
}

/// The backends compiled into this binary.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut v = if cfg!(feature = "nccl") {
        vec![]
    } else {
        vec!["flex"]
    };
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    v
}

/// Runs `job` on the backend and precision asked for.
pub fn run_job<J: Job>(kind: BackendKind, precision: Precision, job: J) -> Result<J::Output> {
    let kind = match kind {
        BackendKind::Auto if cfg!(feature = "cuda") => BackendKind::Cuda,
        BackendKind::Auto if cfg!(feature = "wgpu") => BackendKind::Wgpu,
        BackendKind::Auto => BackendKind::Flex,
        k => k,
    };
    match (kind, precision) {
        // burn's `distributed` feature (our `nccl`) makes its autodiff require NCCL-style
        // collectives of the inner backend, which flex has not.
        #[cfg(feature = "nccl")]
        (BackendKind::Flex, _) => bail!(
            "this binary was built with the `nccl` feature, which cannot run the CPU backend (flex): burn's `distributed` autodiff needs a backend with device collectives; use --backend cuda, or a build without `nccl` for the CPU"
        ),
        // bf16 (mixed) runs on an f32 backend: the model casts to bf16 where it computes.
        #[cfg(not(feature = "nccl"))]
        (BackendKind::Flex, Precision::F32 | Precision::Bf16) => {
            type AB = burn::backend::Autodiff<burn::backend::Flex>;
            let env = Env {
                backend_name: "flex",
                device_name: hyperclone_training::metrics::cpu_name(),
            };
            job.run::<AB>(&Default::default(), env)
        }
        #[cfg(not(feature = "nccl"))]
        (BackendKind::Flex, Precision::Bf16Pure) => bail!(
            "run.precision = \"bf16-pure\" is for the cuda backend; the CPU backend (flex) trains in f32 or bf16 (mixed)"
        ),
        #[cfg(feature = "cuda")]
        (BackendKind::Cuda, precision) => {
            let env = Env {
                backend_name: "cuda",
                device_name: gpu_name(),
            };
            let device = burn::backend::cuda::CudaDevice::default();
            preflight::<burn::backend::Cuda>(&device, "cuda", "an NVIDIA GPU with its driver (libcuda)")?;
            // Data-parallel peers on several GPUs sum their gradients with NCCL.
            #[cfg(feature = "nccl")]
            {
                use hyperclone_training::parallel::nccl_sum;
                use hyperclone_training::register_device_sum;
                register_device_sum::<burn::backend::Cuda>("NCCL", nccl_sum::<burn::backend::Cuda>);
                register_device_sum::<burn::backend::Cuda<burn::tensor::bf16>>("NCCL", nccl_sum::<burn::backend::Cuda<burn::tensor::bf16>>);
            }
            match precision {
                Precision::F32 | Precision::Bf16 => job.run::<burn::backend::Autodiff<burn::backend::Cuda>>(&device, env),
                Precision::Bf16Pure => job.run::<burn::backend::Autodiff<burn::backend::Cuda<burn::tensor::bf16>>>(&device, env),
            }
        }
        #[cfg(feature = "wgpu")]
        (BackendKind::Wgpu, precision) => {
            let env = Env {
                backend_name: "wgpu",
                device_name: gpu_name(),
            };
            let device = burn::backend::wgpu::WgpuDevice::default();
            preflight::<burn::backend::Wgpu>(&device, "wgpu", "a GPU with a Vulkan, Metal or DX12 driver")?;
            match precision {
                Precision::F32 => job.run::<burn::backend::Autodiff<burn::backend::Wgpu>>(&device, env),
                Precision::Bf16 | Precision::Bf16Pure => bail!("run.precision = {:?} is not supported on wgpu; use f32 or the cuda backend", precision.as_str()),
            }
        }
        (other, _) => bail!(
            "run.backend = {:?} is not compiled into this binary (compiled: {}); rebuild with `cargo build --release --features {}`",
            format!("{other:?}").to_lowercase(),
            compiled_backends().join(", "),
            format!("{other:?}").to_lowercase()
        ),
    }
}

/// Fails with the same message as [`run_job`] when the backend or precision cannot run in this
/// binary; nothing is run. Lets a multi-stage job refuse up front instead of after hours.
pub fn check_available(kind: BackendKind, precision: Precision) -> Result<()> {
    struct Noop;
    impl Job for Noop {
        type Output = ();
        fn run<AB: GptAutodiffBackend>(self, _device: &AB::Device, _env: Env) -> Result<()> {
            Ok(())
        }
    }
    run_job(kind, precision, Noop)
}

/// Fails with a clear error when `device` cannot run a tensor operation (no driver, no GPU):
/// burn panics inside its device thread then, which would otherwise reach the user as a bare
/// `RecvError` panic after hours of set-up. Its own panic message (which library could not be
/// loaded) is printed above the error.
#[allow(dead_code)]
fn preflight<B: burn::tensor::backend::Backend>(
    device: &B::Device,
    backend: &str,
    needs: &str,
) -> Result<()> {
    let probe = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        burn::tensor::Tensor::<B, 1>::ones([1], device)
            .into_data()
            .to_vec::<f32>()
    }));
    match probe {
        Ok(Ok(v)) if v == [1.0] => Ok(()),
        Ok(Ok(v)) => bail!("the {backend} backend is broken on this machine: a tensor of ones read back as {v:?}"),
        Ok(Err(e)) => bail!("the {backend} backend is broken on this machine: {e:?}"),
        Err(_) => bail!(
            "the {backend} backend cannot start on this machine: it needs {needs} (see the panic message above); use --backend flex / run.backend = \"flex\" for the CPU"
        ),
    }
}

/// The first GPU's name from `nvidia-smi`, or `gpu: unknown`.
#[allow(dead_code)]
fn gpu_name() -> String {
    std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "gpu: unknown".into())
}

/// GPU memory held by this process according to `nvidia-smi`, in bytes, or `None` when it
/// cannot tell. CubeCL's memory pools keep what they reserved, so read at the end of a run this
/// is the peak reserved plus the CUDA context (compare with PyTorch's `max_memory_reserved`,
/// not `max_memory_allocated`). Where nvidia-smi lists host process ids (containers), our id is
/// not among them: then the whole first GPU's used memory, on a machine running one job.
pub fn gpu_memory_used_by_this_process() -> Option<u64> {
    let query = |args: &[&str]| {
        let out = std::process::Command::new("nvidia-smi")
            .args(args)
            .output()
            .ok()?;
        String::from_utf8(out.stdout).ok()
    };
    let apps = query(&[
        "--query-compute-apps=pid,used_memory",
        "--format=csv,noheader,nounits",
    ])?;
    memory_of_pid(&apps, std::process::id()).or_else(|| {
        let used = query(&["--query-gpu=memory.used", "--format=csv,noheader,nounits"])?;
        used.lines()
            .next()?
            .trim()
            .parse::<u64>()
            .ok()
            .map(|m| m << 20)
    })
}

/// The `used_memory` (MiB) of `pid` in `nvidia-smi --query-compute-apps=pid,used_memory
/// --format=csv,noheader,nounits` output, in bytes.
fn memory_of_pid(csv: &str, pid: u32) -> Option<u64> {
    csv.lines().find_map(|line| {
        let (p, mib) = line.split_once(',')?;
        (p.trim().parse::<u32>().ok()? == pid)
            .then(|| mib.trim().parse::<u64>().ok())
            .flatten()
            .map(|m| m << 20)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preflight_passes_on_a_working_backend() {
        preflight::<burn::backend::Flex>(&Default::default(), "flex", "nothing").unwrap();
    }

    #[test]
    fn nvidia_smi_memory_line_of_our_pid() {
        let csv = "1234, 80\n4321, 15210\n";
        assert_eq!(memory_of_pid(csv, 4321), Some(15210 << 20));
        assert_eq!(memory_of_pid(csv, 99), None);
        assert_eq!(memory_of_pid("", 1), None);
        assert_eq!(memory_of_pid("4321, [N/A]\n", 4321), None);
    }
}
