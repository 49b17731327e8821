//! Hugging Face folder → our [`Gpt`]: `config.json` + `model.safetensors` (or shards).
//!
//! GPT-2 tensors map 1:1 by name (Conv1D weights are `[in, out]`, burn's layout). Llama's
//! `nn.Linear` weights are `[out, in]` and are transposed; `q_proj`, `k_proj` and `v_proj` are
//! concatenated along the output dimension into our fused `c_attn` (`[q | k | v]`, heads
//! contiguous); their rows are already in the rotate-half RoPE layout that our model uses.

use std::fs;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use hyperclone_model::{Gpt, GptConfig};
use serde::{Deserialize, Serialize};

use crate::config::{HfArchitecture, HfConfig};
use crate::error::{io_err, InteropError};
use crate::tensors::{transpose, TensorSet};

/// Configuration file name of a Hugging Face model folder.
pub const CONFIG_FILE: &str = "config.json";
/// Tokenizer file name of a Hugging Face model folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// What [`import_hf`] read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportInfo {
    /// The Hugging Face architecture.
    pub architecture: HfArchitecture,
    /// Our configuration derived from `config.json`.
    pub config: GptConfig,
    /// The weight files read (one, or every shard).
    pub weight_files: Vec<PathBuf>,
    /// The element types found in them (converted to f32).
    pub dtypes: Vec<String>,
    /// Tensors present in the files that carry no weights of ours (GPT-2's causal-mask
    /// buffers, Llama's `rotary_emb.inv_freq`, the copy of a tied head).
    pub ignored_tensors: Vec<String>,
    /// `tokenizer.json` of the folder, when present.
    pub tokenizer: Option<PathBuf>,
}

fn param2<B: Backend>(
    data: Vec<f32>,
    shape: [usize; 2],
    device: &B::Device,
) -> Param<Tensor<B, 2>> {
    Param::from_tensor(Tensor::from_data(TensorData::new(data, shape), device))
}

fn param1<B: Backend>(data: Vec<f32>, device: &B::Device) -> Param<Tensor<B, 1>> {
    let n = data.len();
    Param::from_tensor(Tensor::from_data(TensorData::new(data, [n]), device))
}

/// Reads a Hugging Face model folder into our model.
///
/// Refuses unknown architectures (naming `model_type` and `architectures`), settings we cannot
/// represent (naming the key), missing, mis-shaped or unexpected tensors (naming the tensor and
/// both shapes), and folders with only pickled weights. Weights in F16/BF16/F64 are converted
/// to f32.
pub fn import_hf<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(Gpt<B>, ImportInfo), InteropError> {
    let config_path = dir.join(CONFIG_FILE);
    let text = fs::read_to_string(&config_path).map_err(io_err(&config_path))?;
    let hf = HfConfig::from_json(&text, &config_path)?;
    let config = hf.to_gpt_config(&config_path)?;
    let mut set = TensorSet::read_dir(dir)?;
    tracing::info!(
        dir = %dir.display(),
        architecture = hf.architecture().class_name(),
        files = set.files.len(),
        "importing a Hugging Face checkpoint"
    );
    let mut model = Gpt::<B>::zeros(&config, device).map_err(|source| InteropError::BadConfig {
        path: config_path.clone(),
        source,
    })?;
    let ignored = match hf.architecture() {
        HfArchitecture::Gpt2 => fill_gpt2(&mut model, &mut set, device)?,
        HfArchitecture::Llama => fill_llama(&mut model, &mut set, device)?,
    };
    let info = ImportInfo {
        architecture: hf.architecture(),
        config,
        weight_files: set.files.clone(),
        dtypes: set.dtypes.iter().cloned().collect(),
        ignored_tensors: ignored,
        tokenizer: Some(dir.join(TOKENIZER_FILE)).filter(|p| p.is_file()),
    };
    set.finish()?;
    Ok((model, info))
}

/// Whether `name` is one of GPT-2's causal-mask buffers `h.N.attn.bias` / `h.N.attn.masked_bias`.
fn is_gpt2_mask_buffer(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    matches!(parts.as_slice(), ["h", n, "attn", "bias" | "masked_bias"]
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn fill_gpt2<B: Backend>(
    model: &mut Gpt<B>,
    set: &mut TensorSet,
    device: &B::Device,
) -> Result<Vec<String>, InteropError> {
    let c = model.config().clone();
    let (d, v, ff) = (c.d_model, c.vocab_size, c.d_ff);
    set.strip_prefix("transformer.");
    let mut ignored = set.drop_where(is_gpt2_mask_buffer);
    if c.tie_embeddings {
        ignored.extend(set.drop_where(|n| n == "lm_head.weight"));
    }
    let mut vec2 = |name: &str, shape: [usize; 2]| set.take(name, &shape).map(|t| t.data);
    model.wte.weight = param2(vec2("wte.weight", [v, d])?, [v, d], device);
    if let Some(wpe) = model.wpe.as_mut() {
        let p = c.context_length;
        wpe.weight = param2(vec2("wpe.weight", [p, d])?, [p, d], device);
    }
    if let Some(head) = model.lm_head.as_mut() {
        // An untied head is an nn.Linear: [vocab, d] → [d, vocab].
        head.weight = param2(
            transpose(&vec2("lm_head.weight", [v, d])?, v, d),
            [d, v],
            device,
        );
    }
    let qkv = c.qkv_dim();
    for (i, block) in model.h.iter_mut().enumerate() {
        let p = |s: &str| format!("h.{i}.{s}");
        let linears = [
            (&mut block.attn.c_attn, "attn.c_attn", d, qkv),
            (&mut block.attn.c_proj, "attn.c_proj", d, d),
            (&mut block.mlp.c_fc, "mlp.c_fc", d, ff),
            (&mut block.mlp.c_proj, "mlp.c_proj", ff, d),
        ];
        for (lin, name, din, dout) in linears {
            // Conv1D: [in, out], burn's layout.
            lin.weight = param2(
                set.take(&p(&format!("{name}.weight")), &[din, dout])?.data,
                [din, dout],
                device,
            );
            lin.bias = Some(param1(
                set.take(&p(&format!("{name}.bias")), &[dout])?.data,
                device,
            ));
        }
        for (norm, name) in [(&mut block.ln_1, "ln_1"), (&mut block.ln_2, "ln_2")] {
            norm.weight = param1(set.take(&p(&format!("{name}.weight")), &[d])?.data, device);
            norm.bias = Some(param1(
                set.take(&p(&format!("{name}.bias")), &[d])?.data,
                device,
            ));
        }
    }
    model.ln_f.weight = param1(set.take("ln_f.weight", &[d])?.data, device);
    model.ln_f.bias = Some(param1(set.take("ln_f.bias", &[d])?.data, device));
    Ok(ignored)
}

fn fill_llama<B: Backend>(
    model: &mut Gpt<B>,
    set: &mut TensorSet,
    device: &B::Device,
) -> Result<Vec<String>, InteropError> {
    let c = model.config().clone();
    let (d, v, ff, hd) = (c.d_model, c.vocab_size, c.d_ff, c.head_dim());
    let (q_out, kv_out) = (c.n_head * hd, c.kv_heads() * hd);
    let mut ignored = set.drop_where(|n| n.ends_with(".rotary_emb.inv_freq"));
    if c.tie_embeddings {
        ignored.extend(set.drop_where(|n| n == "lm_head.weight"));
    }
    model.wte.weight = param2(
        set.take("model.embed_tokens.weight", &[v, d])?.data,
        [v, d],
        device,
    );
    if let Some(head) = model.lm_head.as_mut() {
        let w = set.take("lm_head.weight", &[v, d])?.data;
        head.weight = param2(transpose(&w, v, d), [d, v], device);
    }
    // nn.Linear [out, in] → burn [in, out].
    let linear = |set: &mut TensorSet, name: &str, din: usize, dout: usize| {
        set.take(name, &[dout, din])
            .map(|t| transpose(&t.data, dout, din))
    };
    for (i, block) in model.h.iter_mut().enumerate() {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        // Fused c_attn = [q | k | v] along the output axis: concatenating the [out, in] rows
        // and transposing once gives exactly that.
        let mut rows = Vec::with_capacity((q_out + 2 * kv_out) * d);
        let mut biases = Vec::with_capacity(q_out + 2 * kv_out);
        for (name, out) in [("q_proj", q_out), ("k_proj", kv_out), ("v_proj", kv_out)] {
            rows.extend(
                set.take(&p(&format!("self_attn.{name}.weight")), &[out, d])?
                    .data,
            );
            if c.bias {
                biases.extend(
                    set.take(&p(&format!("self_attn.{name}.bias")), &[out])?
                        .data,
                );
            }
        }
        let qkv = q_out + 2 * kv_out;
        block.attn.c_attn.weight = param2(transpose(&rows, qkv, d), [d, qkv], device);
        block.attn.c_proj.weight = param2(
            linear(set, &p("self_attn.o_proj.weight"), d, d)?,
            [d, d],
            device,
        );
        block.mlp.c_fc.weight = param2(
            linear(set, &p("mlp.up_proj.weight"), d, ff)?,
            [d, ff],
            device,
        );
        if let Some(gate) = block.mlp.c_gate.as_mut() {
            gate.weight = param2(
                linear(set, &p("mlp.gate_proj.weight"), d, ff)?,
                [d, ff],
                device,
            );
        }
        block.mlp.c_proj.weight = param2(
            linear(set, &p("mlp.down_proj.weight"), ff, d)?,
            [ff, d],
            device,
        );
        if c.bias {
            block.attn.c_attn.bias = Some(param1(biases, device));
            block.attn.c_proj.bias = Some(param1(
                set.take(&p("self_attn.o_proj.bias"), &[d])?.data,
                device,
            ));
            block.mlp.c_fc.bias = Some(param1(
                set.take(&p("mlp.up_proj.bias"), &[ff])?.data,
                device,
            ));
            if let Some(gate) = block.mlp.c_gate.as_mut() {
                gate.bias = Some(param1(
                    set.take(&p("mlp.gate_proj.bias"), &[ff])?.data,
                    device,
                ));
            }
            block.mlp.c_proj.bias = Some(param1(
                set.take(&p("mlp.down_proj.bias"), &[d])?.data,
                device,
            ));
        }
        block.ln_1.weight = param1(set.take(&p("input_layernorm.weight"), &[d])?.data, device);
        block.ln_2.weight = param1(
            set.take(&p("post_attention_layernorm.weight"), &[d])?.data,
            device,
        );
    }
    model.ln_f.weight = param1(set.take("model.norm.weight", &[d])?.data, device);
    Ok(ignored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_buffers_are_recognised() {
        assert!(is_gpt2_mask_buffer("h.0.attn.bias"));
        assert!(is_gpt2_mask_buffer("h.11.attn.masked_bias"));
        assert!(!is_gpt2_mask_buffer("h.0.attn.c_attn.bias"));
        assert!(!is_gpt2_mask_buffer("h.x.attn.bias"));
    }
}
