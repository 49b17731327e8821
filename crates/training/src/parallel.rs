//! Data-parallel training on burn's collective engine (`burn-collective`).
//!
//! N peers train one model: each holds a full copy of the weights and the optimiser state,
//! computes the gradient of its share of every micro-batch (rows `rank·B/N ..
//! (rank+1)·B/N` of the batch a single device would draw at that step, so the global batch is
//! the single-device batch), and an all-reduce averages the gradients and the loss before the
//! clip and AdamW: every peer applies the same update and the weights stay identical (checked
//! with a checksum at the start and at every checkpoint). Peers are threads of one process,
//! one per device, and across machines processes joined through burn-collective's global
//! orchestrator. Rank 0 alone writes checkpoints, metrics and reports.
//!
//! burn-collective's calls block until every peer has made the same call; a peer that died
//! would leave the others waiting forever. Every call here therefore runs on a helper thread
//! that the peer waits for with a deadline ([`Launch::peer_timeout`]), and a peer that fails in
//! this process tells its siblings at once, so the others stop with an error instead of
//! hanging.
//!
//! The gradients of the peers of one process can instead be summed by the devices themselves
//! ([`register_device_sum`]): NCCL on CUDA in a binary built with the `nccl` feature, which
//! moves them GPU to GPU where burn-collective copies them through the host. The small
//! exchanges (the loss, the checksums, the budget flag) stay on burn-collective.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_collective::{CollectiveConfig, CollectiveError, PeerId, ReduceOperation};
use hyperclone_model::Gpt;
use sha2::{Digest, Sha256};

/// Why data-parallel training could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ParallelError {
    /// More peers per node than the backend has devices (GPU backends; CPU peers share the
    /// one CPU device).
    #[error("run.devices = {asked}, but the backend has {available} device(s) ({device}); lower run.devices (--devices)")]
    TooManyDevices {
        /// `run.devices`.
        asked: usize,
        /// Devices the backend reports.
        available: usize,
        /// The first device.
        device: String,
    },
    /// `run.batch_size` does not split evenly over the peers.
    #[error("run.batch_size = {batch_size} does not split evenly over {world} data-parallel peers (run.devices × nodes): every peer takes an equal share of each micro-batch; make run.batch_size a multiple of {world}")]
    BatchNotDivisible {
        /// `run.batch_size`.
        batch_size: usize,
        /// Peers in all.
        world: usize,
    },
    /// Dropout with several peers in one process: its masks come from the backend's
    /// process-wide generator, which they would share in an unpredictable order.
    #[error("model.dropout = {dropout} with run.devices = {devices}: dropout masks come from the backend's process-wide generator, which the peers of one process would share (the run would not be reproducible); set model.dropout = 0 or run.devices = 1")]
    SharedDropout {
        /// The model's dropout.
        dropout: f64,
        /// `run.devices`.
        devices: usize,
    },
    /// A launch option is out of range.
    #[error("{key} = {value}: {message}")]
    InvalidLaunch {
        /// The option.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is allowed.
        message: &'static str,
    },
    /// burn-collective reported an error.
    #[error("peer {rank}: {operation} failed in burn-collective: {detail}")]
    Collective {
        /// The peer.
        rank: usize,
        /// The collective operation.
        operation: &'static str,
        /// burn-collective's error.
        detail: String,
    },
    /// The other peers did not answer in time: one of them died or hangs.
    #[error("peer {rank}: the other peers did not join {operation} within {seconds} s (a peer or node died, hangs, or never started; raise --peer-timeout if they are only slow)")]
    Timeout {
        /// The peer that waited.
        rank: usize,
        /// The collective operation.
        operation: &'static str,
        /// The deadline.
        seconds: f64,
    },
    /// Another peer of this process failed; this one stopped.
    #[error("peer {rank} stopped because peer {failed} of this process failed")]
    PeerFailed {
        /// This peer.
        rank: usize,
        /// The peer that failed first.
        failed: usize,
    },
    /// The nodes were started with different configurations.
    #[error("the nodes were started with different configurations (hash of config, model, data and run.devices): {detail}; start every node with the same config file, overrides, data and --devices")]
    ConfigMismatch {
        /// Which peers hold which hash.
        detail: String,
    },
    /// The peers start from different weights or steps.
    #[error("the peers start from different weights or steps: {detail}; every node must start from the same run directory and --init-from (a shared file system)")]
    StartMismatch {
        /// Which peers hold which checksum.
        detail: String,
    },
    /// The weights of the peers differ at a checkpoint.
    #[error("the weights of the peers differ at step {step} ({detail}): they no longer compute the same run; the checkpoint of this step was not written")]
    Diverged {
        /// The step.
        step: u64,
        /// Which peers hold which checksum.
        detail: String,
    },
    /// A peer was stopped by [`Launch::fail_peer`] (tests of the failure path).
    #[error("peer {rank} stopped before step {step} (fault injected by the test hook fail_peer)")]
    Injected {
        /// The peer.
        rank: usize,
        /// The step it did not take.
        step: u64,
    },
    /// A peer thread panicked.
    #[error("peer {rank} panicked: {message}")]
    Panicked {
        /// The peer.
        rank: usize,
        /// The panic message.
        message: String,
    },
}

/// How this process takes part in a data-parallel run: the part `run.devices` of the config
/// does not say (it differs between the nodes of one run).
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// Processes (machines) in the run, each with `run.devices` peers; 1: this process alone.
    pub nodes: u32,
    /// This process's index among the nodes, `0..nodes`. Node 0 starts the orchestrator and
    /// its first peer (rank 0) writes the run files.
    pub node_rank: u32,
    /// `HOST:PORT` of the orchestrator, which node 0 starts on `PORT` (needed when `nodes > 1`).
    pub coordinator: Option<String>,
    /// The host name or address at which the other nodes reach this node's tensor service.
    pub node_host: String,
    /// The port of this node's tensor service; default: the coordinator's port + 1 + node rank.
    pub data_port: Option<u16>,
    /// How long a peer waits for the others at one collective operation before it stops with
    /// [`ParallelError::Timeout`]. It must cover the slowest peer's step plus rank 0's
    /// evaluation and checkpoint, which the others wait through.
    pub peer_timeout: Duration,
    /// Test hook: peer `.0` (global rank) fails before step `.1`, as a lost device would.
    pub fail_peer: Option<(usize, u64)>,
    /// Which all-reduce sums the gradients.
    pub all_reduce: AllReduceChoice,
}

/// Which all-reduce sums the gradients of the peers of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AllReduceChoice {
    /// The device all-reduce registered for the backend ([`register_device_sum`]: NCCL on
    /// CUDA in an `nccl` build) when the run has one node, else burn-collective.
    #[default]
    Auto,
    /// burn-collective always (to compare, or where NCCL misbehaves).
    Collective,
}

impl AllReduceChoice {
    /// The name used on the command line and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Collective => "collective",
        }
    }
}

/// A sum of one tensor over the peers of this process, made by the devices themselves (NCCL
/// on CUDA) instead of burn-collective. Every peer calls it at the same time with its own
/// tensor (`[n]`, on its own device) and `devices`, the devices of all the peers of this
/// process in rank order; each gets the sum on its own device. It may block until all have
/// called it (the caller bounds the wait).
pub type DeviceSumFn<B> = fn(Tensor<B, 1>, &[burn::tensor::Device<B>]) -> Tensor<B, 1>;

/// The registered device all-reduces: backend type → (name, `DeviceSumFn<B>`).
type DeviceSums = HashMap<TypeId, (&'static str, Box<dyn Any + Send + Sync>)>;

fn device_sums() -> &'static Mutex<DeviceSums> {
    static SUMS: OnceLock<Mutex<DeviceSums>> = OnceLock::new();
    SUMS.get_or_init(Default::default)
}

/// Makes data-parallel runs of this process on backend `B` sum their gradients with `sum`
/// (named `name` in logs) when the run has one node and [`Launch::all_reduce`] is
/// [`AllReduceChoice::Auto`]. The binary calls it where it knows the concrete backend (the
/// CLI, for CUDA with NCCL); library code stays generic.
pub fn register_device_sum<B: Backend>(name: &'static str, sum: DeviceSumFn<B>) {
    device_sums()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(TypeId::of::<B>(), (name, Box::new(sum)));
}

/// The device all-reduce registered for `B`, if any.
pub fn registered_device_sum<B: Backend>() -> Option<(&'static str, DeviceSumFn<B>)> {
    let sums = device_sums().lock().unwrap_or_else(|e| e.into_inner());
    let (name, sum) = sums.get(&TypeId::of::<B>())?;
    Some((name, *sum.downcast_ref::<DeviceSumFn<B>>()?))
}

/// NCCL's sum over the GPUs of this process (burn's `distributed` feature; a
/// [`DeviceSumFn`] for [`register_device_sum`]).
#[cfg(feature = "nccl")]
pub fn nccl_sum<B>(tensor: Tensor<B, 1>, devices: &[B::Device]) -> Tensor<B, 1>
where
    B: burn::tensor::backend::distributed::DistributedBackend,
{
    use burn::tensor::backend::distributed::ReduceOperation as Op;
    use burn::tensor::backend::DeviceOps;
    let ids = devices.iter().map(|d| d.id()).collect();
    let reduced = B::all_reduce(tensor.into_primitive().tensor(), Op::Sum, ids);
    // `resolve` waits for NCCL's stream before the handle is used.
    Tensor::from_primitive(TensorPrimitive::Float(reduced.resolve()))
}

impl Default for Launch {
    fn default() -> Self {
        Self {
            nodes: 1,
            node_rank: 0,
            coordinator: None,
            node_host: "127.0.0.1".into(),
            data_port: None,
            peer_timeout: Duration::from_secs(600),
            fail_peer: None,
            all_reduce: AllReduceChoice::Auto,
        }
    }
}

impl Launch {
    /// Checks the options and returns the burn-collective configuration of this node with
    /// `devices` peers.
    pub fn collective_config(&self, devices: usize) -> Result<CollectiveConfig, ParallelError> {
        let base = CollectiveConfig::default().with_num_devices(devices);
        if self.nodes == 0 {
            return Err(ParallelError::InvalidLaunch {
                key: "--nodes",
                value: "0".into(),
                message: "must be at least 1",
            });
        }
        if self.node_rank >= self.nodes {
            return Err(ParallelError::InvalidLaunch {
                key: "--node-rank",
                value: self.node_rank.to_string(),
                message: "must be below --nodes",
            });
        }
        if self.nodes == 1 {
            return Ok(base);
        }
        let (_, port) = self.coordinator_host_port()?;
        let data_port = match self.data_port {
            Some(p) => p,
            None => port
                .checked_add(1 + self.node_rank as u16)
                .ok_or(ParallelError::InvalidLaunch {
                key: "--coordinator",
                value: port.to_string(),
                message:
                    "the port leaves no room for the nodes' default data ports; give --node-port",
            })?,
        };
        let coordinator = self.coordinator.clone().unwrap_or_default();
        let parse = |s: String| {
            s.parse()
                .expect("burn-communication parses every address string")
        };
        Ok(base
            .with_num_nodes(self.nodes)
            .with_global_address(parse(format!("ws://{coordinator}")))
            .with_node_address(parse(format!("ws://{}:{data_port}", self.node_host)))
            .with_data_service_port(data_port))
    }

    /// The coordinator's host and port.
    pub fn coordinator_host_port(&self) -> Result<(String, u16), ParallelError> {
        let bad = |value: String| ParallelError::InvalidLaunch {
            key: "--coordinator",
            value,
            message: "give HOST:PORT of node 0 (required with --nodes > 1)",
        };
        let text = self
            .coordinator
            .clone()
            .ok_or_else(|| bad("(none)".into()))?;
        let (host, port) = text.rsplit_once(':').ok_or_else(|| bad(text.clone()))?;
        let port: u16 = port.parse().map_err(|_| bad(text.clone()))?;
        if host.is_empty() || port == 0 {
            return Err(bad(text));
        }
        Ok((host.to_string(), port))
    }
}

/// Which peer of this process failed first (`usize::MAX`: none), shared by the peers of one
/// process so that the others stop at once.
#[derive(Debug)]
pub(crate) struct Abort(AtomicUsize);

impl Abort {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self(AtomicUsize::new(usize::MAX)))
    }

    /// Records that `rank` failed (the first failure wins).
    pub(crate) fn fail(&self, rank: usize) {
        let _ = self
            .0
            .compare_exchange(usize::MAX, rank, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// The peer that failed first, if any.
    pub(crate) fn failed(&self) -> Option<usize> {
        let r = self.0.load(Ordering::SeqCst);
        (r != usize::MAX).then_some(r)
    }
}

/// One data-parallel peer: its rank and the collective calls it makes, each bounded in time.
/// `B` is the backend the gradients live on (the inner backend of the training backend).
pub(crate) struct Peer<B: Backend> {
    /// Global rank, `0..world`.
    pub rank: usize,
    /// Peers in all (`run.devices × nodes`).
    pub world: usize,
    id: PeerId,
    device: B::Device,
    timeout: Duration,
    abort: Arc<Abort>,
    /// The step before which this peer fails (test hook).
    fail_before: Option<u64>,
    /// The device all-reduce of the gradients and the devices of this process's peers, when
    /// one is used ([`Peer::use_device_sum`]).
    device_sum: Option<DeviceSum<B>>,
    _backend: std::marker::PhantomData<B>,
}

/// A device all-reduce in use by a peer, with the devices of the peers of its process.
struct DeviceSum<B: Backend> {
    sum: DeviceSumFn<B>,
    devices: Vec<B::Device>,
}

/// How often a waiting peer looks whether a sibling failed.
const POLL: Duration = Duration::from_millis(50);

impl<B: Backend> Peer<B> {
    /// Registers peer `rank` of `world` on `device` with burn-collective (blocks until every
    /// peer of every node has registered, within the timeout).
    pub(crate) fn register(
        rank: usize,
        world: usize,
        device: B::Device,
        config: CollectiveConfig,
        launch: &Launch,
        abort: Arc<Abort>,
    ) -> Result<Self, ParallelError> {
        let peer = Self {
            rank,
            world,
            id: PeerId::from(rank),
            device: device.clone(),
            timeout: launch.peer_timeout,
            abort,
            fail_before: launch.fail_peer.filter(|f| f.0 == rank).map(|f| f.1),
            device_sum: None,
            _backend: std::marker::PhantomData,
        };
        let id = peer.id;
        peer.call("register", move || {
            burn_collective::register::<B>(id, device, config)
        })?;
        Ok(peer)
    }

    /// Runs the blocking collective call `f` on a helper thread and waits for it until the
    /// deadline, or until a sibling peer fails. A helper abandoned this way stays blocked
    /// until the collective server is reset ([`reset`]).
    fn call<T: Send + 'static>(
        &self,
        operation: &'static str,
        f: impl FnOnce() -> Result<T, CollectiveError> + Send + 'static,
    ) -> Result<T, ParallelError> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("collective-{}", self.rank))
            .spawn(move || {
                let _ = tx.send(f());
            })
            .map_err(|e| ParallelError::Collective {
                rank: self.rank,
                operation,
                detail: format!("could not start a thread: {e}"),
            })?;
        let deadline = Instant::now() + self.timeout;
        loop {
            match rx.recv_timeout(POLL) {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => {
                    return Err(ParallelError::Collective {
                        rank: self.rank,
                        operation,
                        detail: format!("{e:?}"),
                    })
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(ParallelError::Collective {
                        rank: self.rank,
                        operation,
                        detail: "the collective call ended without an answer".into(),
                    })
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(failed) = self.abort.failed() {
                        return Err(ParallelError::PeerFailed {
                            rank: self.rank,
                            failed,
                        });
                    }
                    if Instant::now() >= deadline {
                        return Err(ParallelError::Timeout {
                            rank: self.rank,
                            operation,
                            seconds: self.timeout.as_secs_f64(),
                        });
                    }
                }
            }
        }
    }

    /// The element-wise sum of `tensor` over all peers (`[n]` → `[n]`, on this peer's device).
    pub(crate) fn sum(
        &self,
        operation: &'static str,
        tensor: Tensor<B, 1>,
    ) -> Result<Tensor<B, 1>, ParallelError> {
        let id = self.id;
        let primitive = tensor.into_primitive().tensor();
        let reduced = self.call(operation, move || {
            burn_collective::all_reduce::<B>(id, primitive, ReduceOperation::Sum)
        })?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(reduced)))
    }

    /// The element-wise mean of `tensor` over all peers: the sum divided by the number of
    /// peers here, the same division on every peer (burn's `Mean` divides by the peers of a
    /// node, not of the whole run).
    pub(crate) fn mean(
        &self,
        operation: &'static str,
        tensor: Tensor<B, 1>,
    ) -> Result<Tensor<B, 1>, ParallelError> {
        Ok(self.sum(operation, tensor)? / self.world as f64)
    }

    /// Sums the gradients with the device all-reduce registered for `B`
    /// ([`register_device_sum`]), if there is one, the run has one node and `launch` allows it;
    /// `devices` are the devices of all peers of this process, in rank order. Returns the name
    /// of the all-reduce the gradients will use.
    pub(crate) fn use_device_sum(
        &mut self,
        launch: &Launch,
        devices: Vec<B::Device>,
    ) -> &'static str {
        if launch.all_reduce == AllReduceChoice::Auto && launch.nodes == 1 {
            if let Some((name, sum)) = registered_device_sum::<B>() {
                self.device_sum = Some(DeviceSum { sum, devices });
                return name;
            }
        }
        "burn-collective"
    }

    /// The mean of the flat gradient `[n]` over all peers: by the device all-reduce when one
    /// is in use ([`Peer::use_device_sum`]), else by burn-collective. Bounded in time either way.
    pub(crate) fn gradient_mean(
        &self,
        gradient: Tensor<B, 1>,
    ) -> Result<Tensor<B, 1>, ParallelError> {
        const OPERATION: &str = "the gradient all-reduce";
        let Some(device_sum) = &self.device_sum else {
            return self.mean(OPERATION, gradient);
        };
        let (sum, devices) = (device_sum.sum, device_sum.devices.clone());
        let summed = self.call(OPERATION, move || Ok(sum(gradient, &devices)))?;
        Ok(summed / self.world as f64)
    }

    /// Whether `flag` holds on any peer.
    pub(crate) fn any(&self, operation: &'static str, flag: bool) -> Result<bool, ParallelError> {
        let t =
            Tensor::<B, 1>::from_data(TensorData::new(vec![flag as u8 as f32], [1]), &self.device);
        let total = self.sum(operation, t)?.into_scalar();
        Ok(burn::tensor::ElementConversion::elem::<f32>(total) > 0.0)
    }

    /// Every peer's 16 bytes, by rank: an all-gather made of an all-reduce (each peer fills
    /// its own slot of a zero vector; sums of one byte value and zeros are exact in f32).
    pub(crate) fn gather(
        &self,
        operation: &'static str,
        mine: [u8; 16],
    ) -> Result<Vec<[u8; 16]>, ParallelError> {
        let mut slots = vec![0f32; self.world * 16];
        for (i, b) in mine.iter().enumerate() {
            slots[self.rank * 16 + i] = *b as f32;
        }
        let len = slots.len();
        let t = Tensor::<B, 1>::from_data(TensorData::new(slots, [len]), &self.device);
        let all = self.sum(operation, t)?.into_data();
        let values: Vec<f32> =
            all.convert::<f32>()
                .into_vec()
                .map_err(|e| ParallelError::Collective {
                    rank: self.rank,
                    operation,
                    detail: format!("{e:?}"),
                })?;
        Ok(values
            .chunks(16)
            .map(|c| {
                let mut out = [0u8; 16];
                for (o, v) in out.iter_mut().zip(c) {
                    *o = *v as u8;
                }
                out
            })
            .collect())
    }

    /// `Ok(())` when every peer holds the same 16 bytes as this one, else a description of
    /// who holds what.
    pub(crate) fn agree(
        &self,
        operation: &'static str,
        mine: [u8; 16],
    ) -> Result<Result<(), String>, ParallelError> {
        let all = self.gather(operation, mine)?;
        if all.iter().all(|h| *h == all[0]) {
            return Ok(Ok(()));
        }
        let detail = all
            .iter()
            .enumerate()
            .map(|(rank, h)| format!("peer {rank}: {}", hex(h)))
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Err(detail))
    }

    /// The test hook: fails when this peer is to stop before `step`.
    pub(crate) fn check_injected(&self, step: u64) -> Result<(), ParallelError> {
        match self.fail_before {
            Some(s) if s == step => Err(ParallelError::Injected {
                rank: self.rank,
                step,
            }),
            _ => Ok(()),
        }
    }

    /// Unregisters the peer (at the end of a run).
    pub(crate) fn finish(&self) -> Result<(), ParallelError> {
        let id = self.id;
        self.call("finish", move || {
            burn_collective::finish_collective::<B>(id)
        })
    }
}

/// Forgets every registration and pending operation of `B`'s collective server: after a
/// failed run, so that the helper threads still waiting get an error and end, and a later run
/// in this process starts clean.
pub(crate) fn reset<B: Backend>() {
    burn_collective::reset_collective::<B>();
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first 16 bytes of the SHA-256 of `bytes`.
pub(crate) fn digest16(bytes: &[u8]) -> [u8; 16] {
    let full = Sha256::digest(bytes);
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// A checksum of a model's weights: SHA-256 over every parameter's bytes in module order,
/// read back from the device (as a checkpoint does).
pub fn weights_checksum<B: Backend>(model: &Gpt<B>) -> [u8; 16] {
    struct Hasher(Sha256);
    impl<B: Backend> ModuleVisitor<B> for Hasher {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let data = param.val().into_data();
            self.0.update(data.as_bytes());
        }
    }
    let mut hasher = Hasher(Sha256::new());
    model.visit(&mut hasher);
    let full = hasher.0.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coordinator_must_be_host_and_port() {
        let mut launch = Launch {
            nodes: 2,
            ..Launch::default()
        };
        let e = launch.collective_config(1).unwrap_err().to_string();
        assert!(e.contains("--coordinator") && e.contains("(none)"), "{e}");
        launch.coordinator = Some("localhost".into());
        let e = launch.collective_config(1).unwrap_err().to_string();
        assert!(e.contains("localhost") && e.contains("HOST:PORT"), "{e}");
        launch.coordinator = Some("127.0.0.1:29500".into());
        assert!(launch.collective_config(1).unwrap().is_valid());
        launch.node_rank = 2;
        let e = launch.collective_config(1).unwrap_err().to_string();
        assert!(e.contains("--node-rank = 2"), "{e}");
    }

    type B = burn::backend::Flex;

    /// burn-collective keeps one server per backend and process: these tests take turns.
    fn serial() -> std::sync::MutexGuard<'static, ()> {
        static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn quick(timeout: Duration) -> Launch {
        Launch {
            peer_timeout: timeout,
            ..Launch::default()
        }
    }

    #[test]
    fn peers_agree_on_equal_bytes_and_name_who_differs() {
        let _serial = serial();
        reset::<B>();
        let launch = quick(Duration::from_secs(30));
        let abort = Abort::new();
        let config = launch.collective_config(2).unwrap();
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|rank| {
                    let (launch, abort, config) = (&launch, abort.clone(), config.clone());
                    s.spawn(move || {
                        let peer =
                            Peer::<B>::register(rank, 2, Default::default(), config, launch, abort)
                                .unwrap();
                        let same = peer.agree("same", [7; 16]).unwrap();
                        let mut mine = [7u8; 16];
                        mine[15] = rank as u8;
                        let differ = peer.agree("differ", mine).unwrap();
                        let any = peer.any("any", rank == 1).unwrap();
                        let none = peer.any("none", false).unwrap();
                        peer.finish().unwrap();
                        (same, differ, any, none)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (same, differ, any, none) in results {
            assert_eq!(same, Ok(()));
            let detail = differ.unwrap_err();
            assert!(
                detail.contains(&format!("peer 0: {}00", "07".repeat(15)))
                    && detail.contains(&format!("peer 1: {}01", "07".repeat(15))),
                "{detail}"
            );
            assert!(any && !none);
        }
    }

    #[test]
    fn a_peer_whose_sibling_never_comes_stops_at_its_deadline() {
        let _serial = serial();
        reset::<B>();
        let launch = quick(Duration::from_millis(500));
        let config = launch.collective_config(2).unwrap();
        let t0 = Instant::now();
        let err = Peer::<B>::register(0, 2, Default::default(), config, &launch, Abort::new())
            .err()
            .expect("registration cannot complete without peer 1");
        let waited = t0.elapsed();
        assert!(
            matches!(err, ParallelError::Timeout { rank: 0, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("register within 0.5 s"), "{err}");
        assert!(waited < Duration::from_secs(5), "waited {waited:?}");
        reset::<B>();
    }

    #[test]
    fn a_peer_stops_at_once_when_a_sibling_failed() {
        let _serial = serial();
        reset::<B>();
        let launch = quick(Duration::from_secs(60));
        let config = launch.collective_config(2).unwrap();
        let abort = Abort::new();
        abort.fail(1);
        let t0 = Instant::now();
        let err = Peer::<B>::register(0, 2, Default::default(), config, &launch, abort)
            .err()
            .expect("peer 1 failed");
        assert!(
            matches!(err, ParallelError::PeerFailed { rank: 0, failed: 1 }),
            "{err}"
        );
        assert!(t0.elapsed() < Duration::from_secs(5));
        reset::<B>();
    }

    #[test]
    fn abort_keeps_the_first_failure() {
        let a = Abort::new();
        assert_eq!(a.failed(), None);
        a.fail(3);
        a.fail(1);
        assert_eq!(a.failed(), Some(3));
    }
}
