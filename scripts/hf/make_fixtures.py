#!/usr/bin/env python3
"""Makes the Hugging Face parity fixtures under crates/interop/tests/fixtures/.

Each fixture is a tiny, randomly initialised `transformers` model saved in HF format
(`config.json`, `model.safetensors`, `generation_config.json`), plus fixed input token ids
(`tokens.json`, {"tokens": [[...], [...]]}, B=2, T=16) and the logits the model gives for them
(`logits.safetensors`, tensor "logits", f32 [B, T, vocab]).

Every weight is random, the norms' γ (and LayerNorm β and all biases) included, so that a loader
that forgets a tensor, transposes one or mixes up the q/k/v layout fails the comparison. All of
it is seeded and computed on the CPU in f32: running the script again gives the same files.

Usage:
    python scripts/hf/make_fixtures.py [--out crates/interop/tests/fixtures] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import safetensors  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "crates" / "interop" / "tests" / "fixtures"

VOCAB, CONTEXT, LAYERS, HIDDEN, HEADS = 96, 32, 2, 32, 4
BATCH, SEQ = 2, 16
SEED = 20240611

# Scales of the random weights: large enough that logits are O(1) and every tensor matters.
MATRIX_STD = 0.15
EMBEDDING_STD = 0.5
BIAS_STD = 0.1
NORM_GAIN_RANGE = (0.5, 1.5)


def gpt2_tiny() -> torch.nn.Module:
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=CONTEXT, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=64,
        activation_function="gelu_new", layer_norm_epsilon=1e-5, tie_word_embeddings=True,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
        attn_implementation="eager",
    )
    return GPT2LMHeadModel(config)


def llama_tiny(n_kv_head: int, tied: bool) -> torch.nn.Module:
    config = LlamaConfig(
        vocab_size=VOCAB, max_position_embeddings=CONTEXT, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=n_kv_head, intermediate_size=88,
        hidden_act="silu", rms_norm_eps=1e-5, rope_theta=10000.0, attention_bias=False, mlp_bias=False,
        tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(config)


VARIANTS = {
    "gpt2-tiny": gpt2_tiny,
    "llama-tiny-mha-untied": lambda: llama_tiny(n_kv_head=4, tied=False),
    "llama-tiny-gqa-tied": lambda: llama_tiny(n_kv_head=2, tied=True),
    "llama-tiny-mqa-untied": lambda: llama_tiny(n_kv_head=1, tied=False),
}


def is_norm_gain(name: str) -> bool:
    """γ of a LayerNorm/RMSNorm: GPT-2's ln_1/ln_2/ln_f, Llama's *layernorm and final norm."""
    return name.endswith(".weight") and any(
        part in name for part in ("ln_1", "ln_2", "ln_f", "layernorm", "model.norm"))


@torch.no_grad()
def randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Overwrites every parameter (shared ones once) in name order from `generator`."""
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        if is_norm_gain(name):
            low, high = NORM_GAIN_RANGE
            values = low + (high - low) * torch.rand(param.shape, generator=generator)
        elif name.endswith(".bias"):
            values = BIAS_STD * torch.randn(param.shape, generator=generator)
        elif any(part in name for part in ("wte", "wpe", "embed_tokens", "lm_head")):
            values = EMBEDDING_STD * torch.randn(param.shape, generator=generator)
        else:
            values = MATRIX_STD * torch.randn(param.shape, generator=generator)
        param.copy_(values.to(param.dtype))


def fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(staging: Path, target: Path) -> None:
    """Puts the complete `staging` folder at `target` by renames (never a half-written fixture)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
    os.rename(staging, target)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if old is not None:
        shutil.rmtree(old)


def make_fixture(name: str, out_dir: Path, seed: int) -> dict:
    """Builds one fixture folder `out_dir/name`; returns a summary for the console."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # transformers' own init, before randomise() overwrites it
    model = VARIANTS[name]()
    randomise(model, generator)
    model.eval()
    tokens = torch.randint(VOCAB, (BATCH, SEQ), generator=generator)
    with torch.no_grad():
        logits = model(input_ids=tokens).logits.float().contiguous()

    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out_dir))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        with open(staging / "tokens.json", "w", encoding="utf-8") as f:
            json.dump({"tokens": tokens.tolist()}, f)
            f.write("\n")
        save_file({"logits": logits}, str(staging / "logits.safetensors"),
                  # One key only: safetensors writes metadata in hash-map order.
                  metadata={"made_by": f"scripts/hf/make_fixtures.py {name}"})
        for path in staging.iterdir():
            os.chmod(path, 0o644)
        os.chmod(staging, 0o755)
        fsync_tree(staging)
        replace_dir(staging, out_dir / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in (out_dir / name).iterdir())
    return {"name": name, "params": sum(p.numel() for p in model.parameters()), "bytes": size,
            "logits_abs_max": float(logits.abs().max()), "logits_std": float(logits.std())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Make the HF parity fixtures.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fixtures folder")
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="make only these fixtures")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    transformers.utils.logging.disable_progress_bar()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # one thread: the same reduction order on every machine
    names = args.only or list(VARIANTS)
    for name in names:
        # Each fixture's seed depends only on its name's position in VARIANTS, not on --only.
        summary = make_fixture(name, args.out, args.seed + list(VARIANTS).index(name))
        print(json.dumps(summary))
    print(f"made {len(names)} fixtures in {args.out} with torch {torch.__version__}, "
          f"transformers {transformers.__version__}, safetensors {safetensors.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
