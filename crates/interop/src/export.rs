//! Our [`Gpt`] → a Hugging Face folder that transformers loads without custom code:
//! `config.json` + `model.safetensors` (f32, the names and layouts `save_pretrained` writes),
//! `tokenizer.json` when one is given, and the source's generation and tokenizer configs when
//! the model came from the hub ([`export_hf_with_metadata`]).
//!
//! GPT-2-shaped models become `GPT2LMHeadModel` (keys prefixed `transformer.`, Conv1D weights
//! `[in, out]` as ours); RoPE/RMSNorm/SwiGLU models without biases become `LlamaForCausalLM`
//! (weights transposed to `[out, in]`, `c_attn` split into `q_proj`/`k_proj`/`v_proj`). A tied
//! head writes no `lm_head.weight`: expanded tied models stay exact because HyperCloning folds
//! the head's 1/n into the final norm.

use std::fs;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use hyperclone_model::checkpoint::{sha256_hex, write_dir_atomically, write_file_atomically};
use hyperclone_model::Gpt;
use serde::{Deserialize, Serialize};

use crate::config::{HfArchitecture, HfConfig};
use crate::error::{io_err, InteropError};
use crate::import::{CONFIG_FILE, TOKENIZER_FILE};
use crate::metadata::HfMetadata;
use crate::tensors::{transpose, F32Safetensors, NamedTensors, WEIGHTS_FILE};

/// What [`export_hf`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportInfo {
    /// The Hugging Face architecture written.
    pub architecture: HfArchitecture,
    /// The folder written.
    pub dir: PathBuf,
    /// Number of tensors in `model.safetensors`.
    pub tensors: usize,
    /// Lower-case hex SHA-256 of `model.safetensors`.
    pub weights_sha256: String,
    /// Lower-case hex SHA-256 of `config.json`.
    pub config_sha256: String,
    /// Whether `tokenizer.json` was copied.
    pub tokenizer: bool,
    /// With kept Hugging Face metadata: the files written from it (the special token ids in
    /// `config.json` are the source's). `None`: ids from the tokenizer's `<|endoftext|>`.
    #[serde(default)]
    pub hf_metadata: Option<Vec<String>>,
}

fn values<B: Backend, const D: usize>(p: &Param<Tensor<B, D>>) -> Result<Vec<f32>, InteropError> {
    p.val()
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| InteropError::Safetensors {
            path: PathBuf::from(WEIGHTS_FILE),
            reason: format!("reading a model tensor: {e:?}"),
        })
}

/// The Hugging Face tensors of `model` (names, shapes, f32 values), without writing anything.
pub fn hf_tensors<B: Backend>(model: &Gpt<B>) -> Result<(HfConfig, NamedTensors), InteropError> {
    let c = model.config();
    let hf = HfConfig::from_gpt_config(c)?;
    let (d, v, ff) = (c.d_model, c.vocab_size, c.d_ff);
    let mut out = NamedTensors::new();
    let mut put = |name: String, shape: Vec<usize>, data: Vec<f32>| {
        out.insert(name, (shape, data));
    };
    match hf.architecture() {
        HfArchitecture::Gpt2 => {
            let t = |s: &str| format!("transformer.{s}");
            put(t("wte.weight"), vec![v, d], values(&model.wte.weight)?);
            if let Some(wpe) = &model.wpe {
                put(
                    t("wpe.weight"),
                    vec![c.context_length, d],
                    values(&wpe.weight)?,
                );
            }
            for (i, b) in model.h.iter().enumerate() {
                let p = |s: &str| t(&format!("h.{i}.{s}"));
                for (lin, name, din, dout) in [
                    (&b.attn.c_attn, "attn.c_attn", d, c.qkv_dim()),
                    (&b.attn.c_proj, "attn.c_proj", d, d),
                    (&b.mlp.c_fc, "mlp.c_fc", d, ff),
                    (&b.mlp.c_proj, "mlp.c_proj", ff, d),
                ] {
                    put(
                        p(&format!("{name}.weight")),
                        vec![din, dout],
                        values(&lin.weight)?,
                    );
                    if let Some(bias) = &lin.bias {
                        put(p(&format!("{name}.bias")), vec![dout], values(bias)?);
                    }
                }
                for (norm, name) in [(&b.ln_1, "ln_1"), (&b.ln_2, "ln_2")] {
                    put(p(&format!("{name}.weight")), vec![d], values(&norm.weight)?);
                    if let Some(bias) = &norm.bias {
                        put(p(&format!("{name}.bias")), vec![d], values(bias)?);
                    }
                }
            }
            put(t("ln_f.weight"), vec![d], values(&model.ln_f.weight)?);
            if let Some(bias) = &model.ln_f.bias {
                put(t("ln_f.bias"), vec![d], values(bias)?);
            }
        }
        HfArchitecture::Llama => {
            let hd = c.head_dim();
            let (q_out, kv_out) = (c.n_head * hd, c.kv_heads() * hd);
            let qkv = q_out + 2 * kv_out;
            put(
                "model.embed_tokens.weight".into(),
                vec![v, d],
                values(&model.wte.weight)?,
            );
            for (i, b) in model.h.iter().enumerate() {
                let p = |s: &str| format!("model.layers.{i}.{s}");
                // [d, qkv] → [qkv, d]: rows are then q, k, v outputs in order.
                let rows = transpose(&values(&b.attn.c_attn.weight)?, d, qkv);
                let mut start = 0;
                for (name, n) in [("q_proj", q_out), ("k_proj", kv_out), ("v_proj", kv_out)] {
                    put(
                        p(&format!("self_attn.{name}.weight")),
                        vec![n, d],
                        rows[start * d..(start + n) * d].to_vec(),
                    );
                    start += n;
                }
                let lin_t = |w: &Param<Tensor<B, 2>>, din: usize, dout: usize| {
                    values(w).map(|x| transpose(&x, din, dout))
                };
                put(
                    p("self_attn.o_proj.weight"),
                    vec![d, d],
                    lin_t(&b.attn.c_proj.weight, d, d)?,
                );
                put(
                    p("mlp.up_proj.weight"),
                    vec![ff, d],
                    lin_t(&b.mlp.c_fc.weight, d, ff)?,
                );
                if let Some(gate) = &b.mlp.c_gate {
                    put(
                        p("mlp.gate_proj.weight"),
                        vec![ff, d],
                        lin_t(&gate.weight, d, ff)?,
                    );
                }
                put(
                    p("mlp.down_proj.weight"),
                    vec![d, ff],
                    lin_t(&b.mlp.c_proj.weight, ff, d)?,
                );
                put(
                    p("input_layernorm.weight"),
                    vec![d],
                    values(&b.ln_1.weight)?,
                );
                put(
                    p("post_attention_layernorm.weight"),
                    vec![d],
                    values(&b.ln_2.weight)?,
                );
            }
            put(
                "model.norm.weight".into(),
                vec![d],
                values(&model.ln_f.weight)?,
            );
            if let Some(head) = &model.lm_head {
                put(
                    "lm_head.weight".into(),
                    vec![v, d],
                    transpose(&values(&head.weight)?, d, v),
                );
            }
        }
    }
    Ok((hf, out))
}

/// The id of `<|endoftext|>` in a `tokenizer.json` (its added tokens, else its vocabulary).
pub fn eot_id(tokenizer_json: &[u8]) -> Option<u32> {
    const EOT: &str = "<|endoftext|>";
    let value: serde_json::Value = serde_json::from_slice(tokenizer_json).ok()?;
    let added = value.get("added_tokens").and_then(|a| a.as_array());
    let from_added = added
        .into_iter()
        .flatten()
        .find_map(|t| (t.get("content")?.as_str()? == EOT).then(|| t.get("id")?.as_u64())?);
    let id = from_added.or_else(|| value.get("model")?.get("vocab")?.get(EOT)?.as_u64())?;
    u32::try_from(id).ok()
}

/// Writes `model` as a Hugging Face folder at `dir` (replaced atomically if it exists):
/// `config.json`, `model.safetensors` and, when `tokenizer` is given, a copy of it as
/// `tokenizer.json`. `bos_token_id`/`eos_token_id` are set to the tokenizer's `<|endoftext|>`
/// when it has one (for GPT-2 without one and a vocabulary below 50257: `null`, instead of
/// transformers' out-of-range default 50256): the behaviour for models trained here. A model
/// imported from the hub exports with [`export_hf_with_metadata`] instead. The files are a pure
/// function of the weights and the tokenizer (byte-identical on reruns).
pub fn export_hf<B: Backend>(
    model: &Gpt<B>,
    dir: &Path,
    tokenizer: Option<&Path>,
) -> Result<ExportInfo, InteropError> {
    export_hf_with_metadata(model, dir, tokenizer, None)
}

/// [`export_hf`], and with `metadata` (what `hyperclone import` kept of the source) the
/// source's generation behaviour: `config.json`'s `bos_token_id`, `eos_token_id` and
/// `pad_token_id` are the source's (a key the source left out is left out, so transformers'
/// default applies to both alike) instead of the tokenizer's `<|endoftext|>`, and the kept
/// `generation_config.json`, `tokenizer_config.json`, `special_tokens_map.json` and
/// `chat_template.jinja` are written byte for byte. transformers' default `generate` then stops
/// and pads where the source's does, and `apply_chat_template` gives the source's prompts.
pub fn export_hf_with_metadata<B: Backend>(
    model: &Gpt<B>,
    dir: &Path,
    tokenizer: Option<&Path>,
    metadata: Option<&HfMetadata>,
) -> Result<ExportInfo, InteropError> {
    let (hf, tensors) = hf_tensors(model)?;
    // Laid out (and checked) up front; the values are streamed into the file below, so the
    // peak memory is the model plus `tensors`, not another copy or two of the weights.
    let weights = F32Safetensors::new(&tensors, &dir.join(WEIGHTS_FILE))?;
    let tokenizer_bytes = match tokenizer {
        Some(p) => Some(fs::read(p).map_err(io_err(p))?),
        None => None,
    };
    let mut json = hf.to_json();
    let obj = json.as_object_mut().expect("config.json is an object");
    match metadata {
        Some(meta) => meta.token_ids.apply(obj),
        None => {
            let eot = tokenizer_bytes.as_deref().and_then(eot_id);
            let vocab = model.config().vocab_size;
            let special = match eot {
                Some(id) if (id as usize) < vocab => Some(serde_json::Value::from(id)),
                // transformers' GPT-2 defaults (50256) would point outside a smaller vocabulary.
                _ if hf.architecture() == HfArchitecture::Gpt2 && vocab <= 50_256 => {
                    Some(serde_json::Value::Null)
                }
                _ => None,
            };
            if let Some(value) = special {
                obj.insert("bos_token_id".into(), value.clone());
                obj.insert("eos_token_id".into(), value);
            }
        }
    }
    let mut config = serde_json::to_vec_pretty(&json).expect("JSON value serialises");
    config.push(b'\n');
    let mut weights_sha256 = String::new();
    write_dir_atomically::<InteropError>(dir, |tmp| {
        weights_sha256 = weights.write_atomically(&tmp.join(WEIGHTS_FILE))?;
        write_file_atomically(&tmp.join(CONFIG_FILE), &config)?;
        if let Some(bytes) = &tokenizer_bytes {
            write_file_atomically(&tmp.join(TOKENIZER_FILE), bytes)?;
        }
        if let Some(meta) = metadata {
            meta.write_files(tmp)?;
        }
        Ok(())
    })?;
    tracing::info!(dir = %dir.display(), architecture = hf.architecture().class_name(), tensors = tensors.len(), "exported a Hugging Face checkpoint");
    Ok(ExportInfo {
        architecture: hf.architecture(),
        dir: dir.to_path_buf(),
        tensors: tensors.len(),
        weights_sha256,
        config_sha256: sha256_hex(&config),
        tokenizer: tokenizer_bytes.is_some(),
        hf_metadata: metadata.map(HfMetadata::file_names),
    })
}
