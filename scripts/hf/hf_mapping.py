#!/usr/bin/env python3
"""Executable spec of the mapping between Hugging Face checkpoints and hyperclone's GPT.

Both directions are written with plain torch + safetensors (no `transformers`), against the
PyTorch reference model in scripts/reference/gpt_bench.py, so they state exactly what the Rust
interop crate has to do:

GPT-2 (`model_type = "gpt2"`, keys optionally prefixed "transformer."):
    wte, wpe, h.N.ln_1, h.N.attn.c_attn, h.N.attn.c_proj, h.N.ln_2, h.N.mlp.c_fc, h.N.mlp.c_proj, ln_f
    map 1:1 by name. GPT-2's Conv1D stores weights [in, out]: that is burn's Linear layout (no
    transpose in Rust) and the transpose of torch's nn.Linear (transposed here). c_attn's output
    columns are [q | k | v], each head-major, as in our model. lm_head is tied to wte.
Llama (`model_type = "llama"`; nn.Linear weights are [out, in], i.e. transposed for burn):
    embed_tokens -> wte; layers.N.input_layernorm -> h.N.ln_1; post_attention_layernorm -> h.N.ln_2;
    cat([q_proj, k_proj, v_proj], out-dim) -> h.N.attn.c_attn; o_proj -> h.N.attn.c_proj;
    gate_proj -> h.N.mlp.c_gate; up_proj -> h.N.mlp.c_fc; down_proj -> h.N.mlp.c_proj;
    norm -> ln_f; lm_head -> lm_head (absent when tie_word_embeddings). q/k weights are already in
    the rotate-half RoPE layout, so no permutation. rope_theta is read from the top level
    (older configs) or from rope_parameters.rope_theta (transformers >= 5 writes only the latter).

Command line: `python scripts/hf/hf_mapping.py --fixtures crates/interop/tests/fixtures` loads
every fixture into the reference model and compares its logits with the fixture's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))
from gpt_bench import Gpt, GptConfig  # noqa: E402


class MappingError(Exception):
    """A config or checkpoint that the reference model cannot represent (the message says why)."""


# -------------------------------------------------------------------------------------------------
# config.json <-> GptConfig
# -------------------------------------------------------------------------------------------------


def _require(config: dict, key: str, path: str):
    if key not in config:
        raise MappingError(f"{path}: missing key {key!r}")
    return config[key]


def config_from_hf(config: dict, path: str = "config.json") -> GptConfig:
    """GptConfig for a GPT-2 or Llama config.json; MappingError for anything we do not model."""
    model_type = config.get("model_type")
    if model_type == "gpt2":
        d = _require(config, "n_embd", path)
        act = config.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise MappingError(f"{path}: activation_function = {act!r}; only the tanh GELU is supported")
        if config.get("scale_attn_by_inverse_layer_idx", False):
            raise MappingError(f"{path}: scale_attn_by_inverse_layer_idx = true is not supported")
        if not config.get("scale_attn_weights", True):
            raise MappingError(f"{path}: scale_attn_weights = false is not supported")
        n_head = _require(config, "n_head", path)
        return GptConfig(
            vocab_size=_require(config, "vocab_size", path), context_length=_require(config, "n_positions", path),
            n_layer=_require(config, "n_layer", path), d_model=d, n_head=n_head, n_kv_head=n_head,
            d_ff=config.get("n_inner") or 4 * d, positional="learned", norm="layernorm",
            norm_eps=config.get("layer_norm_epsilon", 1e-5), mlp="gelu", bias=True,
            tie_embeddings=config.get("tie_word_embeddings", True),
        )
    if model_type == "llama":
        d = _require(config, "hidden_size", path)
        n_head = _require(config, "num_attention_heads", path)
        head_dim = config.get("head_dim") or d // n_head
        if head_dim * n_head != d:
            raise MappingError(f"{path}: head_dim = {head_dim} * num_attention_heads = {n_head} != hidden_size = {d}")
        if config.get("hidden_act", "silu") != "silu":
            raise MappingError(f"{path}: hidden_act = {config['hidden_act']!r}; only silu (SwiGLU) is supported")
        attention_bias, mlp_bias = config.get("attention_bias", False), config.get("mlp_bias", False)
        if attention_bias != mlp_bias:
            raise MappingError(f"{path}: attention_bias = {attention_bias} and mlp_bias = {mlp_bias} differ; "
                               "the model has one bias switch")
        rope = config.get("rope_parameters") or {}
        rope_type = rope.get("rope_type", "default")
        if config.get("rope_scaling") or rope_type != "default":
            raise MappingError(f"{path}: RoPE scaling ({config.get('rope_scaling') or rope_type!r}) is not supported")
        theta = config.get("rope_theta", rope.get("rope_theta", 10000.0))
        return GptConfig(
            vocab_size=_require(config, "vocab_size", path),
            context_length=_require(config, "max_position_embeddings", path),
            n_layer=_require(config, "num_hidden_layers", path), d_model=d, n_head=n_head,
            n_kv_head=config.get("num_key_value_heads") or n_head, d_ff=_require(config, "intermediate_size", path),
            positional="rope", rope_theta=float(theta), norm="rmsnorm", norm_eps=config.get("rms_norm_eps", 1e-6),
            mlp="swiglu", bias=bool(attention_bias), tie_embeddings=config.get("tie_word_embeddings", False),
        )
    raise MappingError(f"{path}: model_type = {model_type!r}; supported: 'gpt2', 'llama'")


def config_to_hf(cfg: GptConfig) -> dict:
    """A minimal config.json that `transformers` loads as GPT2LMHeadModel or LlamaForCausalLM."""
    gpt2_like = (cfg.positional == "learned" and cfg.norm == "layernorm" and cfg.mlp == "gelu" and cfg.bias
                 and cfg.tie_embeddings and cfg.n_kv_head == cfg.n_head)
    llama_like = cfg.positional == "rope" and cfg.norm == "rmsnorm" and cfg.mlp == "swiglu"
    if gpt2_like:
        return {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
            "n_positions": cfg.context_length, "n_embd": cfg.d_model, "n_layer": cfg.n_layer,
            "n_head": cfg.n_head, "n_inner": cfg.d_ff, "activation_function": "gelu_new",
            "layer_norm_epsilon": cfg.norm_eps, "tie_word_embeddings": True,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "dtype": "float32",
        }
    if llama_like:
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
            "max_position_embeddings": cfg.context_length, "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
            "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim, "intermediate_size": cfg.d_ff,
            "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
            "attention_bias": cfg.bias, "mlp_bias": cfg.bias, "tie_word_embeddings": cfg.tie_embeddings,
            "dtype": "float32",
        }
    raise MappingError(f"no Hugging Face architecture matches {cfg} (need GPT-2: learned/layernorm/gelu/"
                       "bias/tied/MHA, or Llama: rope/rmsnorm/swiglu)")


# -------------------------------------------------------------------------------------------------
# tensors
# -------------------------------------------------------------------------------------------------


def state_from_hf(cfg: GptConfig, tensors: dict[str, torch.Tensor], path: str = "model.safetensors") -> dict:
    """The reference model's state_dict built from a checkpoint's tensors (all must be used)."""
    if cfg.positional == "learned":  # GPT-2
        tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()}
        tensors.pop("lm_head.weight", None)  # tied: a copy of wte when present
        # Old GPT-2 files carry the causal mask as buffers h.N.attn.bias / h.N.attn.masked_bias.
        tensors = {k: v for k, v in tensors.items()
                   if not re.fullmatch(r"h\.\d+\.attn\.(masked_)?bias", k)}
        linears = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
        state = {}
        for key, value in tensors.items():
            is_conv1d = key.endswith(".weight") and any(f".{name}." in key for name in linears)
            state[key] = value.t().contiguous() if is_conv1d else value
        return _checked(state, cfg, path)
    # Llama
    pop = lambda key: _pop(tensors, key, path)  # noqa: E731
    state = {"wte.weight": pop("model.embed_tokens.weight"), "ln_f.weight": pop("model.norm.weight")}
    for i in range(cfg.n_layer):
        src, dst = f"model.layers.{i}", f"h.{i}"
        state[f"{dst}.ln_1.weight"] = pop(f"{src}.input_layernorm.weight")
        state[f"{dst}.ln_2.weight"] = pop(f"{src}.post_attention_layernorm.weight")
        suffixes = ("weight", "bias") if cfg.bias else ("weight",)
        for suffix in suffixes:
            state[f"{dst}.attn.c_attn.{suffix}"] = torch.cat(
                [pop(f"{src}.self_attn.{p}_proj.{suffix}") for p in ("q", "k", "v")], dim=0)
            state[f"{dst}.attn.c_proj.{suffix}"] = pop(f"{src}.self_attn.o_proj.{suffix}")
            state[f"{dst}.mlp.c_gate.{suffix}"] = pop(f"{src}.mlp.gate_proj.{suffix}")
            state[f"{dst}.mlp.c_fc.{suffix}"] = pop(f"{src}.mlp.up_proj.{suffix}")
            state[f"{dst}.mlp.c_proj.{suffix}"] = pop(f"{src}.mlp.down_proj.{suffix}")
    if cfg.tie_embeddings:
        tensors.pop("lm_head.weight", None)
    else:
        state["lm_head.weight"] = pop("lm_head.weight")
    tensors.pop("model.rotary_emb.inv_freq", None)
    for i in range(cfg.n_layer):
        tensors.pop(f"model.layers.{i}.self_attn.rotary_emb.inv_freq", None)
    if tensors:
        raise MappingError(f"{path}: unused tensors {sorted(tensors)}")
    return _checked(state, cfg, path)


def state_to_hf(cfg: GptConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint tensors (transformers' save_pretrained names) for the reference model's state_dict."""
    config_to_hf(cfg)  # raises for shapes no HF architecture can hold
    if cfg.positional == "learned":
        linears = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
        out = {}
        for key, value in state.items():
            if key == "lm_head.weight":
                continue
            is_linear = key.endswith(".weight") and any(f".{name}." in key for name in linears)
            out[f"transformer.{key}"] = (value.t() if is_linear else value).contiguous()
        return out
    nh, nkv, hs = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    out = {"model.embed_tokens.weight": state["wte.weight"], "model.norm.weight": state["ln_f.weight"]}
    for i in range(cfg.n_layer):
        src, dst = f"h.{i}", f"model.layers.{i}"
        out[f"{dst}.input_layernorm.weight"] = state[f"{src}.ln_1.weight"]
        out[f"{dst}.post_attention_layernorm.weight"] = state[f"{src}.ln_2.weight"]
        for suffix in ("weight", "bias") if cfg.bias else ("weight",):
            q, k, v = state[f"{src}.attn.c_attn.{suffix}"].split([nh * hs, nkv * hs, nkv * hs], dim=0)
            out[f"{dst}.self_attn.q_proj.{suffix}"] = q
            out[f"{dst}.self_attn.k_proj.{suffix}"] = k
            out[f"{dst}.self_attn.v_proj.{suffix}"] = v
            out[f"{dst}.self_attn.o_proj.{suffix}"] = state[f"{src}.attn.c_proj.{suffix}"]
            out[f"{dst}.mlp.gate_proj.{suffix}"] = state[f"{src}.mlp.c_gate.{suffix}"]
            out[f"{dst}.mlp.up_proj.{suffix}"] = state[f"{src}.mlp.c_fc.{suffix}"]
            out[f"{dst}.mlp.down_proj.{suffix}"] = state[f"{src}.mlp.c_proj.{suffix}"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def _pop(tensors: dict, key: str, path: str) -> torch.Tensor:
    if key not in tensors:
        raise MappingError(f"{path}: missing tensor {key!r}")
    return tensors.pop(key)


def _checked(state: dict, cfg: GptConfig, path: str) -> dict:
    """Every reference parameter present with the right shape, nothing extra."""
    expected = {k: tuple(v.shape) for k, v in Gpt(cfg).state_dict().items()}
    if cfg.tie_embeddings:
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = [f"{k}: {tuple(state[k].shape)} != {expected[k]}" for k in expected if k in state
             and tuple(state[k].shape) != expected[k]]
    if missing or extra or wrong:
        raise MappingError(f"{path}: missing {missing}, unexpected {extra}, mis-shaped {wrong}")
    return state


# -------------------------------------------------------------------------------------------------
# folders
# -------------------------------------------------------------------------------------------------


def load_reference(model_dir: Path) -> Gpt:
    """The reference model holding the checkpoint in `model_dir` (config.json + model.safetensors)."""
    config_path = model_dir / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MappingError(f"{config_path}: cannot read: {exc}") from exc
    cfg = config_from_hf(config, str(config_path))
    weights = model_dir / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        tensors = {k: f.get_tensor(k).float() for k in f.keys()}
    model = Gpt(cfg, attention="naive")
    model.load_state_dict(state_from_hf(cfg, tensors, str(weights)), strict=True)
    return model.eval()


def export_reference(model: Gpt, out_dir: Path) -> None:
    """Writes `model` as a Hugging Face folder (config.json + model.safetensors), each file atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    tensors = state_to_hf(cfg, {k: v.detach().float().cpu() for k, v in model.state_dict().items()})
    _atomic(out_dir / "config.json", lambda p: Path(p).write_text(json.dumps(config_to_hf(cfg), indent=2) + "\n"))
    _atomic(out_dir / "model.safetensors", lambda p: save_file(tensors, p, metadata={"format": "pt"}))


def _atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check the HF fixtures against the PyTorch reference model.")
    parser.add_argument("--fixtures", type=Path,
                        default=Path(__file__).resolve().parents[2] / "crates/interop/tests/fixtures")
    parser.add_argument("--atol", type=float, default=1e-4)
    args = parser.parse_args(argv)
    folders = sorted(p for p in args.fixtures.iterdir() if (p / "config.json").is_file())
    if not folders:
        print(f"error: no fixture folders in {args.fixtures}", file=sys.stderr)
        return 2
    failed = 0
    for folder in folders:
        model = load_reference(folder)
        tokens = torch.tensor(json.loads((folder / "tokens.json").read_text())["tokens"])
        with safe_open(str(folder / "logits.safetensors"), framework="pt") as f:
            expected = f.get_tensor("logits")
        with torch.no_grad():
            diff = float((model(tokens) - expected).abs().max())
        ok = diff <= args.atol
        failed += not ok
        print(f"{folder.name:24} max |Δ| = {diff:.3e}  {'OK' if ok else 'MISMATCH'}")
    print(f"{len(folders) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
