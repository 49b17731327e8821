//! AdamW with decoupled weight decay on matrices only, global-norm gradient clipping and
//! gradient accumulation, keyed by parameter NAME (`h.3.mlp.c_fc.weight`) so that its state
//! is saved and restored exactly with the checkpoint.
//!
//! Written here rather than taken from burn-optim because GPT training needs three things that
//! one does not offer together: per-parameter decay groups (no decay on norms, biases and
//! embeddings), a clip on the GLOBAL gradient norm (burn clips per tensor), and state that a
//! resumed run restores bit for bit.
//!
//! # The update
//! For each parameter, with `t` the number of updates so far (this one included):
//!
//! ```text
//! m ← β1·m + (1 − β1)·g          v ← β2·v + (1 − β2)·g²
//! m̂ = m / (1 − β1^t)             v̂ = v / (1 − β2^t)
//! θ ← θ·(1 − lr·wd)  (decay groups only; decoupled: it does not go through m̂/√v̂)
//! θ ← θ − (lr·s)·m̂ / (√v̂ + ε·e)
//! ```
//!
//! ε is added OUTSIDE the square root. `s` and `e` are per-parameter factors ([`ParamScale`]),
//! 1 for a run's own state: a state carried through a HyperClone (`hyperclone expand
//! --optimizer-state transfer`) sets them so that the wide model keeps following the small
//! one (`hyperclone_cloning::plan::adam_rule`). The clip's global norm likewise weights each
//! parameter's squared gradient by a per-column factor `w` (1 for a run's own state), so
//! that the wide model measures the small model's norm and clips by the same factor. They are
//! saved with the state, so that a resumed run keeps them.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, ElementConversion, Tensor, TensorData};
use hyperclone_model::ops::cast_to;
use hyperclone_model::Gpt;

use crate::config::OptimizerConfig;

/// Why optimizer state could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// The state file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The state file is not valid safetensors or lacks a tensor the model needs.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The state does not fit the model it is meant for (names, sizes or factors).
    #[error("{path}: the optimizer state does not fit the model: {reason}")]
    Mismatch {
        /// The state file.
        path: std::path::PathBuf,
        /// The parameters at fault.
        reason: String,
    },
}

/// Format tag of a state file whose parameters all have the factors 1 (byte-identical to the
/// files written before per-parameter factors existed).
pub const FORMAT_V1: &str = "hyperclone-adamw-v1";
/// Format tag of a state file with per-parameter factors (`scale.NAME` metadata): a reader
/// that ignored them would train another model, so older builds must refuse it.
pub const FORMAT_V2: &str = "hyperclone-adamw-v2";

/// Per-parameter factors of the AdamW update `θ ← θ − (lr·step)·m̂/(√v̂ + ε·eps)` and of the
/// clip's global norm `√(Σ norm·g²)`.
///
/// A run's own state has none (all 1). A state carried through a HyperClone has them: there
/// the wide model's blocks are `θ/D` and their gradients `g/G` of the small model's, and the
/// factors `step = 1/D`, `eps = 1/G` and `norm = G²/(blocks)` keep the wide model the clone of
/// the small one (`hyperclone_cloning::plan::adam_rule`).
#[derive(Debug, Clone, PartialEq)]
pub struct ParamScale {
    /// Multiplies the Adam step of the parameter (not its decoupled weight decay).
    pub step: f64,
    /// Multiplies ε, per column: one factor for each index of the parameter's LAST axis (the
    /// output side of a `[d_in, d_out]` matrix, every element of a vector). Empty: 1 for all.
    /// Per column because the fused `[q | k | v]` projection of a multi-query model has
    /// sections with different factors.
    pub eps: Vec<f64>,
    /// Weight of the squared gradient in the global norm that gradient clipping measures (and
    /// that the run logs), per column like `eps`. Empty: 1 for all.
    pub norm: Vec<f64>,
}

/// `factors` as runs of equal values: `[[count, factor], …]`.
fn runs(factors: &[f64]) -> Vec<(usize, f64)> {
    let mut runs: Vec<(usize, f64)> = Vec::new();
    for &e in factors {
        match runs.last_mut() {
            Some((count, f)) if *f == e => *count += 1,
            _ => runs.push((1, e)),
        }
    }
    runs
}

/// Expands [`runs`]' output, refusing factors that are not finite numbers > 0 and more
/// columns than `values` (`what` names the factors in errors).
fn unrun(runs: Vec<(usize, f64)>, values: usize, what: &str) -> Result<Vec<f64>, String> {
    let columns = runs
        .iter()
        .try_fold(0usize, |sum, (count, _)| sum.checked_add(*count))
        .filter(|&c| c <= values)
        .ok_or_else(|| format!("more {what} factors than the parameter's {values} values"))?;
    let mut out = Vec::with_capacity(columns);
    for (count, f) in runs {
        if !(f.is_finite() && f > 0.0) {
            return Err(format!("{what} factor {f} is not a finite number > 0"));
        }
        out.extend(std::iter::repeat_n(f, count));
    }
    Ok(out)
}

impl ParamScale {
    /// Whether every factor is 1 (such a scale changes nothing and is not stored).
    pub fn is_identity(&self) -> bool {
        self.step == 1.0
            && self.eps.iter().all(|&e| e == 1.0)
            && self.norm.iter().all(|&w| w == 1.0)
    }

    /// The `scale.NAME` metadata value: `{"step":…,"eps":[[count, factor], …],"norm":[…]}`,
    /// the per-column factors as runs of equal factors along the columns.
    fn to_json(&self) -> String {
        serde_json::json!({
            "step": self.step,
            "eps": runs(&self.eps),
            "norm": runs(&self.norm),
        })
        .to_string()
    }

    /// Parses [`ParamScale::to_json`]'s text for a parameter of `values` values (more ε
    /// factors than values cannot be columns of it).
    fn from_json(text: &str, values: usize) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            step: f64,
            eps: Vec<(usize, f64)>,
            norm: Vec<(usize, f64)>,
        }
        let raw: Raw = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if !(raw.step.is_finite() && raw.step > 0.0) {
            return Err(format!(
                "step factor {} is not a finite number > 0",
                raw.step
            ));
        }
        Ok(Self {
            step: raw.step,
            eps: unrun(raw.eps, values, "eps")?,
            norm: unrun(raw.norm, values, "norm")?,
        })
    }
}

/// AdamW state of one parameter on the host, as it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamState {
    /// First moment, flattened row-major like the parameter (`exp_avg`).
    pub exp_avg: Vec<f32>,
    /// Second moment, flattened likewise (`exp_avg_sq`).
    pub exp_avg_sq: Vec<f32>,
    /// The parameter's factors; `None`: all 1.
    pub scale: Option<ParamScale>,
}

/// Where a state carried through a HyperClone came from (recorded in its file).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateOrigin {
    /// The training checkpoint (step folder) of the small model.
    pub checkpoint: String,
    /// Its step: the small run's position in its data and its learning-rate schedule.
    pub step: u64,
    /// Width factor of the expansion.
    pub width_factor: usize,
    /// FFN factor of the expansion.
    pub ffn_factor: usize,
}

/// AdamW's state on the host, as `optimizer.safetensors` stores it: the update count (bias
/// correction), the moments and factors of every parameter by name, and, for a state carried
/// through a HyperClone, where it came from. The file's tensors are `NAME.exp_avg` and
/// `NAME.exp_avg_sq` (f32, flat); its metadata `format`, `updates`, `scale.NAME` (JSON, see
/// [`ParamScale`]) and `origin` (JSON, [`StateOrigin`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AdamWState {
    /// Updates applied so far (`t` of the bias correction is one more at the next update).
    pub updates: u64,
    /// Moments and factors by parameter name (`h.3.mlp.c_fc.weight`).
    pub params: BTreeMap<String, ParamState>,
    /// Set for a state carried through a HyperClone.
    pub origin: Option<StateOrigin>,
}

impl AdamWState {
    /// Writes the state to `path` atomically. Equal states give equal bytes; a state without
    /// factors or origin is written exactly as before factors existed ([`FORMAT_V1`]).
    pub fn write(&self, path: &Path) -> Result<(), OptimError> {
        let mut bytes: Vec<(String, Vec<u8>, usize)> = Vec::with_capacity(2 * self.params.len());
        let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let mut meta = std::collections::HashMap::new();
        for (name, p) in &self.params {
            bytes.push((format!("{name}.exp_avg"), le(&p.exp_avg), p.exp_avg.len()));
            bytes.push((
                format!("{name}.exp_avg_sq"),
                le(&p.exp_avg_sq),
                p.exp_avg_sq.len(),
            ));
            if let Some(scale) = p.scale.as_ref().filter(|s| !s.is_identity()) {
                meta.insert(format!("scale.{name}"), scale.to_json());
            }
        }
        if let Some(origin) = &self.origin {
            meta.insert(
                "origin".to_string(),
                serde_json::to_string(origin).expect("StateOrigin serialises"),
            );
        }
        let format = if meta.is_empty() {
            FORMAT_V1
        } else {
            FORMAT_V2
        };
        meta.insert("updates".to_string(), self.updates.to_string());
        meta.insert("format".to_string(), format.to_string());
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
            .iter()
            .map(|(n, b, len)| {
                let view =
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![*len], b)
                        .expect("consistent view");
                (n.clone(), view)
            })
            .collect();
        let data =
            safetensors::serialize(views, Some(meta)).map_err(|e| OptError::format(path, e))?;
        // The metadata map is written in random order: sort it, so that equal state gives
        // equal bytes (and equal checksums).
        let data = hyperclone_model::checkpoint::canonical_safetensors(data)
            .map_err(|e| OptError::format(path, e))?;
        hyperclone_model::checkpoint::write_file_atomically(path, &data).map_err(|e| {
            OptimError::Format {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })
    }

    /// Reads a state written by [`AdamWState::write`] (or by any earlier build: v1 files have
    /// no factors). Refuses unknown formats, moments without their pair or of unequal
    /// lengths, and factors that are not finite numbers > 0.
    pub fn read(path: &Path) -> Result<Self, OptimError> {
        let bytes = std::fs::read(path).map_err(|source| OptimError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |reason: String| OptimError::Format {
            path: path.to_path_buf(),
            reason,
        };
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| OptError::format(path, e))?;
        let meta = header.metadata().clone().unwrap_or_default();
        match meta.get("format").map(String::as_str) {
            Some(FORMAT_V1 | FORMAT_V2) => {}
            Some(other) => {
                return Err(bad(format!(
                    "format {other:?} is not one this build reads ({FORMAT_V1}, {FORMAT_V2})"
                )))
            }
            None => {
                return Err(bad(
                    "not a hyperclone AdamW state file (format metadata missing)".into(),
                ))
            }
        }
        let updates: u64 = meta
            .get("updates")
            .and_then(|u| u.parse().ok())
            .ok_or_else(|| bad("metadata `updates` missing".into()))?;
        let origin = match meta.get("origin") {
            Some(text) => Some(
                serde_json::from_str::<StateOrigin>(text)
                    .map_err(|e| bad(format!("metadata `origin`: {e}")))?,
            ),
            None => None,
        };
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| OptError::format(path, e))?;
        let floats = |n: &str| -> Result<Vec<f32>, OptimError> {
            let t = st.tensor(n).map_err(|e| bad(format!("{n}: {e}")))?;
            if t.dtype() != safetensors::Dtype::F32 {
                return Err(bad(format!("{n} is {:?}, expected F32", t.dtype())));
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let names: std::collections::BTreeSet<&str> = st.names().into_iter().collect();
        let mut params = BTreeMap::new();
        for &name in &names {
            if let Some(param) = name.strip_suffix(".exp_avg_sq") {
                if !names.contains(format!("{param}.exp_avg").as_str()) {
                    return Err(bad(format!("{name} has no {param}.exp_avg beside it")));
                }
                continue;
            }
            let Some(param) = name.strip_suffix(".exp_avg") else {
                return Err(bad(format!("unexpected tensor {name}")));
            };
            let exp_avg = floats(name)?;
            let exp_avg_sq = floats(&format!("{param}.exp_avg_sq"))?;
            if exp_avg.len() != exp_avg_sq.len() {
                return Err(bad(format!(
                    "{param}: exp_avg has {} values, exp_avg_sq {}",
                    exp_avg.len(),
                    exp_avg_sq.len()
                )));
            }
            params.insert(
                param.to_string(),
                ParamState {
                    exp_avg,
                    exp_avg_sq,
                    scale: None,
                },
            );
        }
        for (key, value) in &meta {
            let Some(param) = key.strip_prefix("scale.") else {
                continue;
            };
            let Some(p) = params.get_mut(param) else {
                return Err(bad(format!(
                    "metadata {key} names no parameter of the state"
                )));
            };
            let scale = ParamScale::from_json(value, p.exp_avg.len())
                .map_err(|e| bad(format!("metadata {key}: {e}")))?;
            p.scale = Some(scale);
        }
        Ok(Self {
            updates,
            params,
            origin,
        })
    }
}

/// First and second moments of one parameter, flattened.
#[derive(Debug, Clone)]
struct Moments<B: Backend> {
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
}

/// Per-column factors of one parameter on the device.
#[derive(Debug, Clone)]
enum ColumnFactors<B: Backend> {
    /// One factor for the whole parameter.
    Uniform(f64),
    /// One factor per column (`[columns]`, f32).
    Columns(Tensor<B, 1>),
}

impl<B: Backend> ColumnFactors<B> {
    /// The factors of `host` (per column; empty: all 1) on `device`.
    fn new(host: &[f64], device: &B::Device) -> Self {
        let first = host.first().copied().unwrap_or(1.0);
        if host.iter().all(|&e| e == first) {
            ColumnFactors::Uniform(first)
        } else {
            let values: Vec<f32> = host.iter().map(|&e| e as f32).collect();
            let len = values.len();
            ColumnFactors::Columns(Tensor::from_data(TensorData::new(values, [len]), device))
        }
    }

    /// `x` (`[numel]`, flattened row-major) times the factor of each element's column.
    fn times(&self, x: Tensor<B, 1>) -> Tensor<B, 1> {
        match self {
            ColumnFactors::Uniform(f) if *f == 1.0 => x,
            ColumnFactors::Uniform(f) => x * *f,
            ColumnFactors::Columns(f) => {
                // [numel] → [rows, columns] · [1, columns]
                let (n, columns) = (x.dims()[0], f.dims()[0]);
                let f = cast_to(f.clone(), x.dtype()).reshape([1, columns]);
                (x.reshape([n / columns, columns]) * f).reshape([n])
            }
        }
    }
}

/// The factors of one parameter: on the host as stored, and on the device as used.
#[derive(Debug, Clone)]
struct Scale<B: Backend> {
    host: ParamScale,
    /// ε's factors.
    eps: ColumnFactors<B>,
    /// The squared gradient's weights in the global norm.
    norm: ColumnFactors<B>,
}

/// AdamW state and accumulated gradients. `AB` is the autodiff backend the model trains on;
/// all state lives on its inner backend.
#[derive(Debug)]
pub struct AdamW<AB: AutodiffBackend> {
    config: OptimizerConfig,
    /// Number of updates applied so far (bias correction uses it).
    updates: u64,
    moments: BTreeMap<String, Moments<AB::InnerBackend>>,
    /// Per-parameter factors; absent for a parameter whose factors are all 1.
    scales: BTreeMap<String, Scale<AB::InnerBackend>>,
    accumulated: BTreeMap<String, Tensor<AB::InnerBackend, 1>>,
    micro_batches: usize,
}

/// Whether weight decay applies to the parameter at `path` with `rank` dimensions: matrices
/// of linear layers only (not norms, biases or the embeddings), unless `decay_all`.
pub fn decays(path: &str, rank: usize, decay_all: bool) -> bool {
    decay_all || (rank >= 2 && !path.starts_with("wte.") && !path.starts_with("wpe."))
}

/// Tracks the dotted parameter path while burn walks the module tree.
#[derive(Default)]
struct PathStack(Vec<String>);

impl PathStack {
    fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    fn exit(&mut self) {
        self.0.pop();
    }
    fn path(&self) -> String {
        self.0.join(".")
    }
}

struct GradCollector<'a, AB: AutodiffBackend> {
    grads: &'a AB::Gradients,
    into: &'a mut BTreeMap<String, Tensor<AB::InnerBackend, 1>>,
    path: PathStack,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for GradCollector<'_, AB> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if let Some(grad) = param.val().grad(self.grads) {
            let n = grad.shape().num_elements();
            let flat = grad.reshape([n]); // [numel]
            let path = self.path.path();
            let sum = match self.into.remove(&path) {
                Some(prev) => prev + flat,
                None => flat,
            };
            self.into.insert(path, sum);
        }
    }
}

struct Updater<'a, AB: AutodiffBackend> {
    opt: &'a mut AdamW<AB>,
    lr: f64,
    /// `[1]`, in the gradients' dtype: the mean over micro-batches times the clip factor.
    grad_scale: Tensor<AB::InnerBackend, 1>,
    path: PathStack,
}

impl<AB: AutodiffBackend> ModuleMapper<AB> for Updater<'_, AB> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let path = self.path.path();
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.opt.accumulated.remove(&path) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let c = &self.opt.config;
        let shape = tensor.shape();
        let n = shape.num_elements();
        let w = tensor.inner().reshape([n]); // [numel]
        let g = grad * self.grad_scale.clone(); // [numel]
        let (m, v) = match self.opt.moments.remove(&path) {
            Some(Moments { m, v }) => (
                m * c.beta1 + g.clone() * (1.0 - c.beta1),
                v * c.beta2 + g.square() * (1.0 - c.beta2),
            ),
            None => (g.clone() * (1.0 - c.beta1), g.square() * (1.0 - c.beta2)),
        };
        let t = self.opt.updates as i32;
        let m_hat = m.clone() / (1.0 - c.beta1.powi(t));
        let v_hat = v.clone() / (1.0 - c.beta2.powi(t));
        let scale = self.opt.scales.get(&path);
        // Without factors, exactly the expressions of a plain AdamW (bit for bit).
        let update = match scale.map(|s| &s.eps) {
            None => m_hat / (v_hat.sqrt() + c.eps),
            Some(ColumnFactors::Uniform(e)) => m_hat / (v_hat.sqrt() + c.eps * e),
            Some(ColumnFactors::Columns(e)) => {
                // [numel] → [rows, columns] + [1, columns]: the factor of each column.
                let columns = e.dims()[0];
                let e = cast_to(e.clone(), v_hat.dtype()).reshape([1, columns]) * c.eps;
                let denom = v_hat.sqrt().reshape([n / columns, columns]) + e;
                m_hat / denom.reshape([n])
            }
        };
        // Decay keeps the scheduled lr: it is proportional to θ, which already carries the
        // clone's 1/D; only the Adam step, which is not, takes the step factor.
        let w = if c.weight_decay > 0.0 && decays(&path, D, c.decay_all) {
            w * (1.0 - self.lr * c.weight_decay)
        } else {
            w
        };
        let step_lr = scale.map_or(self.lr, |s| self.lr * s.host.step);
        let w = w - update * step_lr;
        self.opt.moments.insert(path, Moments { m, v });
        let new = Tensor::<AB, D>::from_inner(w.reshape(shape)).require_grad();
        Param::from_mapped_value(id, new, mapper)
    }
}

impl<AB: AutodiffBackend> AdamW<AB> {
    /// Fresh optimizer state.
    pub fn new(config: OptimizerConfig) -> Self {
        Self {
            config,
            updates: 0,
            moments: BTreeMap::new(),
            scales: BTreeMap::new(),
            accumulated: BTreeMap::new(),
            micro_batches: 0,
        }
    }

    /// Number of updates applied.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The factors of the parameter `name` (`None`: all 1).
    pub fn scale(&self, name: &str) -> Option<&ParamScale> {
        self.scales.get(name).map(|s| &s.host)
    }

    /// The optimizer with the state `state` (moments, update count and factors) on `device`;
    /// the origin is not kept (it describes the file, not the optimizer).
    pub fn from_state(
        config: OptimizerConfig,
        state: AdamWState,
        device: &burn::tensor::Device<AB::InnerBackend>,
    ) -> Self {
        let mut moments = BTreeMap::new();
        let mut scales = BTreeMap::new();
        for (name, p) in state.params {
            let tensor = |values: Vec<f32>| {
                let len = values.len();
                Tensor::from_data(TensorData::new(values, [len]), device)
            };
            if let Some(host) = p.scale.filter(|s| !s.is_identity()) {
                let eps = ColumnFactors::new(&host.eps, device);
                let norm = ColumnFactors::new(&host.norm, device);
                scales.insert(name.clone(), Scale { host, eps, norm });
            }
            moments.insert(
                name,
                Moments {
                    m: tensor(p.exp_avg),
                    v: tensor(p.exp_avg_sq),
                },
            );
        }
        Self {
            config,
            updates: state.updates,
            moments,
            scales,
            accumulated: BTreeMap::new(),
            micro_batches: 0,
        }
    }

    /// The state on the host (reads the moments back from the device).
    pub fn to_state(&self) -> AdamWState {
        let params = self
            .moments
            .iter()
            .map(|(name, mo)| {
                let p = ParamState {
                    exp_avg: to_vec(mo.m.clone()),
                    exp_avg_sq: to_vec(mo.v.clone()),
                    scale: self.scale(name).cloned(),
                };
                (name.clone(), p)
            })
            .collect();
        AdamWState {
            updates: self.updates,
            params,
            origin: None,
        }
    }

    /// Checks that the state fits `model`: every name with moments or factors is a parameter
    /// of the model with as many values, and per-column ε factors match its last axis; with
    /// `complete`, every parameter also has moments (a state carried into a new run must
    /// cover them all: a parameter starting from zero moments at update `t > 0` would get a
    /// wrong bias correction). `Err` lists the first few problems.
    pub fn check_model(&self, model: &Gpt<AB>, complete: bool) -> Result<(), String> {
        let mut shapes = ShapeCollector::default();
        model.visit(&mut shapes);
        let mut problems = Vec::new();
        for (name, mo) in &self.moments {
            let found = mo.m.dims()[0];
            match shapes.shapes.get(name) {
                None => problems.push(format!("{name} is not a parameter of the model")),
                Some(shape) if shape.iter().product::<usize>() != found => problems.push(format!(
                    "{name} has {found} values in the state, the model's has shape {shape:?}"
                )),
                Some(_) => {}
            }
        }
        for (name, scale) in &self.scales {
            let columns = shapes.shapes.get(name).and_then(|s| s.last().copied());
            for (what, factors) in [("eps", &scale.host.eps), ("norm", &scale.host.norm)] {
                if !factors.is_empty() && Some(factors.len()) != columns {
                    problems.push(format!(
                        "{name} has {} {what} factors, the model's parameter {} columns",
                        factors.len(),
                        columns.map_or("has no".to_string(), |c| format!("has {c}"))
                    ));
                }
            }
            if !self.moments.contains_key(name) {
                problems.push(format!("{name} has factors but no moments"));
            }
        }
        if complete {
            for name in shapes.shapes.keys() {
                if !self.moments.contains_key(name) {
                    problems.push(format!("{name} has no moments in the state"));
                }
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let more = problems.len().saturating_sub(3);
        problems.truncate(3);
        let mut reason = problems.join("; ");
        if more > 0 {
            reason.push_str(&format!("; and {more} more"));
        }
        Err(reason)
    }

    /// Adds the gradients of one micro-batch (from `loss.backward()`).
    pub fn accumulate(&mut self, model: &Gpt<AB>, grads: &AB::Gradients) {
        let mut collector = GradCollector::<AB> {
            grads,
            into: &mut self.accumulated,
            path: PathStack::default(),
        };
        model.visit(&mut collector);
        self.micro_batches += 1;
    }

    /// Replaces the accumulated gradients by `reduce` of them, all parameters at once: they are
    /// concatenated in parameter-path order into one `[Σ numel]` tensor (one all-reduce per
    /// step instead of one per parameter, the same order on every data-parallel peer), and
    /// the result is cut back into the parameters. Nothing waits for the device here unless
    /// `reduce` does. No-op without accumulated gradients.
    pub fn reduce_accumulated<E>(
        &mut self,
        reduce: impl FnOnce(Tensor<AB::InnerBackend, 1>) -> Result<Tensor<AB::InnerBackend, 1>, E>,
    ) -> Result<(), E> {
        if self.accumulated.is_empty() {
            return Ok(());
        }
        let accumulated = std::mem::take(&mut self.accumulated);
        let sizes: Vec<(String, usize)> = accumulated
            .iter()
            .map(|(name, g)| (name.clone(), g.dims()[0]))
            .collect();
        let flat = Tensor::cat(accumulated.into_values().collect(), 0); // [Σ numel]
        let reduced = reduce(flat)?;
        let mut start = 0;
        for (name, len) in sizes {
            let part = reduced.clone().narrow(0, start, len); // [numel]
            self.accumulated.insert(name, part);
            start += len;
        }
        Ok(())
    }

    /// L2 norm of the mean gradient over the accumulated micro-batches, computed in f32 on the
    /// device without waiting for it (`[1]`); `None` before any gradient was accumulated. A
    /// parameter with norm factors ([`ParamScale::norm`]) contributes `Σ w·g²`: for a state
    /// carried through a HyperClone this is the small model's norm, which the clip compares.
    pub fn grad_norm_tensor(&self) -> Option<Tensor<AB::InnerBackend, 1>> {
        let mut total: Option<Tensor<AB::InnerBackend, 1>> = None;
        for (name, g) in &self.accumulated {
            let square = to_f32(g.clone()).square(); // [numel]
            let s = match self.scales.get(name) {
                Some(scale) => scale.norm.times(square).sum(),
                None => square.sum(),
            }; // [1]
            total = Some(match total {
                Some(t) => t + s,
                None => s,
            });
        }
        total.map(|t| t.sqrt() / self.micro_batches.max(1) as f64)
    }

    /// [`AdamW::grad_norm_tensor`] read back (waits for the device); 0 with no gradient.
    pub fn grad_norm(&self) -> f64 {
        self.grad_norm_tensor()
            .map_or(0.0, |n| n.into_scalar().elem::<f64>())
    }

    /// Applies one AdamW update with learning rate `lr` from the accumulated gradients
    /// (averaged over micro-batches, clipped to `grad_clip` global norm) and clears them.
    /// Returns the updated model and the pre-clip gradient norm (`[1]`, f32, still on the device).
    ///
    /// Nothing here waits for the device: the clip factor is computed there. A training step
    /// thus queues its forward, backward and update back to back, and the trainer reads the loss
    /// and this norm once at the end of the step (a read in the middle would leave the GPU idle
    /// while the host queues the rest of the step).
    pub fn step(&mut self, model: Gpt<AB>, lr: f64) -> (Gpt<AB>, Tensor<AB::InnerBackend, 1>) {
        let device = model.wte.weight.val().device();
        let norm = self
            .grad_norm_tensor()
            .unwrap_or_else(|| to_f32(Tensor::zeros([1], &device)));
        // scale = (norm > clip ? clip / (norm + 1e-6) : 1) / micro_batches, as a `[1]` tensor
        // that every gradient is multiplied by (broadcast).
        let mean = 1.0 / self.micro_batches.max(1) as f64;
        let scale = if self.config.grad_clip > 0.0 {
            let clip = self.config.grad_clip;
            let clipped = (norm.clone() + 1e-6).recip() * clip;
            let keep = norm.clone().lower_equal_elem(clip);
            clipped.mask_fill(keep, 1.0) * mean
        } else {
            to_f32(Tensor::ones([1], &device)) * mean
        };
        // Cast once to the gradients' dtype (all alike), not once per parameter.
        let scale = match self.accumulated.values().next() {
            Some(g) => cast_to(scale, g.dtype()),
            None => scale,
        };
        self.updates += 1;
        let mut updater = Updater {
            opt: self,
            lr,
            grad_scale: scale,
            path: PathStack::default(),
        };
        let model = model.map(&mut updater);
        self.accumulated.clear();
        self.micro_batches = 0;
        (model, norm)
    }

    /// Saves the moments, the update count and the factors to a safetensors file (written
    /// atomically; [`AdamWState::write`]).
    pub fn save(&self, path: &Path) -> Result<(), OptimError> {
        self.to_state().write(path)
    }

    /// Restores state saved by [`AdamW::save`] (or carried through a HyperClone) on `device`.
    pub fn load(
        config: OptimizerConfig,
        path: &Path,
        device: &burn::tensor::Device<AB::InnerBackend>,
    ) -> Result<Self, OptimError> {
        Ok(Self::from_state(config, AdamWState::read(path)?, device))
    }
}

/// Records the shape of every float parameter by its dotted name.
#[derive(Default)]
struct ShapeCollector {
    path: PathStack,
    shapes: BTreeMap<String, Vec<usize>>,
}

impl<B: Backend> ModuleVisitor<B> for ShapeCollector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.shapes
            .insert(self.path.path(), param.val().dims().to_vec());
    }
}

struct OptError;
impl OptError {
    fn format(path: &Path, e: impl std::fmt::Display) -> OptimError {
        OptimError::Format {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    }
}

fn to_f32<B: Backend>(t: Tensor<B, 1>) -> Tensor<B, 1> {
    cast_to(t, DType::F32)
}

/// Reads `[1]` tensors back to the host together: one wait for the device instead of one each.
pub fn read_scalars<B: Backend>(values: Vec<Tensor<B, 1>>) -> Vec<f64> {
    let values: Vec<Tensor<B, 1>> = values.into_iter().map(to_f32).collect();
    Tensor::cat(values, 0)
        .into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .expect("f64 data after convert")
}

fn to_vec<B: Backend>(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 tensor")
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use hyperclone_model::{tokens_tensor, GptConfig};

    type AB = Autodiff<Flex>;

    #[test]
    fn decay_groups() {
        assert!(decays("h.0.mlp.c_fc.weight", 2, false));
        assert!(!decays("h.0.mlp.c_fc.bias", 1, false));
        assert!(!decays("h.0.ln_1.weight", 1, false));
        assert!(!decays("wte.weight", 2, false));
        assert!(!decays("wpe.weight", 2, false));
        assert!(decays("wte.weight", 2, true));
    }

    /// One AdamW step on a scalar-like problem matches the closed form: the first update moves
    /// every weight by exactly lr·sign(g) (m̂/√v̂ = g/|g|), plus the decay.
    #[test]
    fn first_step_matches_closed_form_and_state_round_trips() {
        let device = Default::default();
        let cfg = GptConfig {
            n_layer: 1,
            ..GptConfig::cpu_tiny()
        };
        let model = Gpt::<AB>::init(&cfg, 0, &device).unwrap();
        let ids: Vec<u32> = (0..16).collect();
        let loss = model.forward_loss(
            tokens_tensor(&ids[..8], 1, 8, &device),
            tokens_tensor(&ids[8..], 1, 8, &device),
        );
        let grads = loss.backward();
        let grad_fc = model.h[0].mlp.c_fc.weight.val().grad(&grads).unwrap();
        let before = model.h[0].mlp.c_fc.weight.val().inner();
        let config = OptimizerConfig {
            lr: 0.01,
            weight_decay: 0.1,
            grad_clip: 0.0,
            eps: 1e-12,
            ..OptimizerConfig::default()
        };
        let mut opt = AdamW::<AB>::new(config.clone());
        opt.accumulate(&model, &grads);
        let (model, _) = opt.step(model, 0.01);
        let after = model.h[0].mlp.c_fc.weight.val().inner();
        let (b, g, a) = (
            to_vec(before.flatten(0, 1)),
            to_vec(grad_fc.flatten(0, 1)),
            to_vec(after.flatten(0, 1)),
        );
        for i in (0..b.len()).step_by(97) {
            if g[i].abs() < 1e-6 {
                continue;
            }
            let expected = b[i] * (1.0 - 0.01 * 0.1) - 0.01 * g[i].signum();
            assert!(
                (a[i] - expected).abs() < 1e-6,
                "{i}: {} vs {expected}",
                a[i]
            );
        }

        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("optimizer.safetensors");
        opt.save(&path).unwrap();
        // Saved again, the same state gives the same bytes (the safetensors crate writes the
        // metadata map in random order: 16 saves would hardly all agree by chance).
        let want = std::fs::read(&path).unwrap();
        for i in 0..16 {
            let again = tmp.path().join(format!("again-{i}.safetensors"));
            opt.save(&again).unwrap();
            assert!(std::fs::read(&again).unwrap() == want, "save {i} differs");
        }
        let loaded = AdamW::<AB>::load(config, &path, &device).unwrap();
        assert_eq!(loaded.updates(), 1);
        assert_eq!(loaded.moments.len(), opt.moments.len());
        for (k, m) in &opt.moments {
            assert_eq!(
                to_vec(m.v.clone()),
                to_vec(loaded.moments[k].v.clone()),
                "{k}"
            );
        }
    }

    #[test]
    fn clipping_bounds_the_update_norm_and_reports_the_raw_norm() {
        let device = Default::default();
        let cfg = GptConfig {
            n_layer: 1,
            ..GptConfig::cpu_tiny()
        };
        let model = Gpt::<AB>::init(&cfg, 0, &device).unwrap();
        let ids: Vec<u32> = (0..16).collect();
        let loss = model.forward_loss(
            tokens_tensor(&ids[..8], 1, 8, &device),
            tokens_tensor(&ids[8..], 1, 8, &device),
        );
        let grads = loss.backward();
        let mut opt = AdamW::<AB>::new(OptimizerConfig {
            grad_clip: 1e-3,
            ..OptimizerConfig::default()
        });
        opt.accumulate(&model, &grads);
        opt.accumulate(&model, &grads);
        // Mean of two identical micro-batches = one; the norm is the raw (pre-clip) one.
        let n = opt.grad_norm();
        assert!(n > 1e-3, "{n}");
        let (_, reported) = opt.step(model, 1e-3);
        assert_eq!(read_scalars(vec![reported]), vec![n]);
        // After clipping, the stored first moment is (1 - β1)·g·clip/n: its norm is
        // (1 - β1)·clip.
        let m_norm: f64 = opt
            .moments
            .values()
            .map(|m| {
                let s: f64 = m.m.clone().square().sum().into_scalar().elem();
                s
            })
            .sum::<f64>()
            .sqrt();
        assert!((m_norm - 0.1 * 1e-3).abs() < 1e-7, "{m_norm}");
    }
}
