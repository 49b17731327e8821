#!/usr/bin/env python3
"""PyTorch reference of hyperclone's GPT, and a training-step throughput benchmark.

The model below implements exactly the architecture of `crates/model` (see the docstrings of
`GptConfig`): a pre-norm decoder with a fused `[q | k | v]` projection, grouped-query attention,
learned or rotary positions, LayerNorm or RMSNorm, a GELU (tanh) or SwiGLU MLP, optional biases
and optional tied embeddings. It exists to tell how fast a plain, well-known PyTorch training
loop runs the same model on the same machine, so that the Rust numbers have something to be
compared against.

One timed step is what a real training loop does per batch: forward, mean cross-entropy over all
B*T positions, backward, AdamW step (lr 3e-4, weight decay 0.1 on matrices only), zero_grad.
The input is one fixed batch of random token ids already on the device, so data loading is not
measured. Warm-up steps run first and are not timed; on CUDA every step is followed by a
synchronise, so the wall-clock time covers the GPU work.

FLOPs per token follow the PaLM convention (appendix B): 6*N + 12*L*d*T, with N every parameter
including the embeddings (a tied embedding counted once), L layers, d = d_model, T = seq.

Usage (see README.md beside this file):
    python gpt_bench.py --preset cpu-tiny --batch 8 --seq 64 --threads 2
    python gpt_bench.py --preset gpt2-124m --batch 16 --seq 1024 --device cuda --dtype bf16 --compile

Output: one human-readable table row, then one JSON line (prefixed by nothing, starting with `{`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

# -------------------------------------------------------------------------------------------------
# Configuration and presets (the same table as crates/model's presets)
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GptConfig:
    """Shape and architecture of the decoder (field names as in crates/model's GptConfig)."""

    vocab_size: int
    context_length: int
    n_layer: int
    d_model: int
    n_head: int
    n_kv_head: int
    d_ff: int
    positional: str = "learned"  # "learned" | "rope"
    rope_theta: float = 10000.0
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    norm_eps: float = 1e-5
    mlp: str = "gelu"  # "gelu" | "swiglu"
    bias: bool = True
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def validate(self) -> None:
        """Raises ValueError naming the field and value when the shape cannot work."""
        for name in ("vocab_size", "context_length", "n_layer", "d_model", "n_head", "d_ff"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.d_model % self.n_head != 0:
            raise ValueError(f"d_model = {self.d_model} is not divisible by n_head = {self.n_head}")
        if self.n_kv_head < 1 or self.n_head % self.n_kv_head != 0:
            raise ValueError(f"n_kv_head = {self.n_kv_head} must divide n_head = {self.n_head}")
        if self.positional not in ("learned", "rope"):
            raise ValueError(f"positional = {self.positional!r}: expected 'learned' or 'rope'")
        if self.positional == "rope" and self.head_dim % 2 != 0:
            raise ValueError(f"rope needs an even head_dim, got {self.head_dim}")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"norm = {self.norm!r}: expected 'layernorm' or 'rmsnorm'")
        if self.mlp not in ("gelu", "swiglu"):
            raise ValueError(f"mlp = {self.mlp!r}: expected 'gelu' or 'swiglu'")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout = {self.dropout}: expected 0 <= dropout < 1")


def _preset(vocab, ctx, layers, d, heads, kv, ff, positional, norm, mlp, bias, tied, **kw):
    return GptConfig(
        vocab_size=vocab, context_length=ctx, n_layer=layers, d_model=d, n_head=heads,
        n_kv_head=kv, d_ff=ff, positional=positional, norm=norm, mlp=mlp, bias=bias,
        tie_embeddings=tied, **kw,
    )


PRESETS: dict[str, GptConfig] = {
    "cpu-tiny": _preset(512, 64, 2, 128, 4, 4, 512, "learned", "layernorm", "gelu", True, True),
    "cpu-small": _preset(4096, 128, 4, 128, 4, 4, 512, "learned", "layernorm", "gelu", True, True),
    "gpt2-124m": _preset(50304, 1024, 12, 768, 12, 12, 3072, "learned", "layernorm", "gelu", True, True),
    "gpt2-350m": _preset(50304, 1024, 24, 1024, 16, 16, 4096, "learned", "layernorm", "gelu", True, True),
    "llama-small": _preset(32000, 1024, 8, 512, 8, 4, 1408, "rope", "rmsnorm", "swiglu", False, False,
                           rope_theta=10000.0, norm_eps=1e-5),
}

# -------------------------------------------------------------------------------------------------
# Model
# -------------------------------------------------------------------------------------------------


class Norm(nn.Module):
    """LayerNorm (β only when `bias`) or RMSNorm, over the last dimension."""

    def __init__(self, cfg: GptConfig, width: int):
        super().__init__()
        self.kind, self.eps = cfg.norm, cfg.norm_eps
        self.weight = nn.Parameter(torch.ones(width))
        has_beta = cfg.norm == "layernorm" and cfg.bias
        self.bias = nn.Parameter(torch.zeros(width)) if has_beta else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layernorm":
            return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_tables(seq: int, head_dim: int, theta: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [seq, head_dim] for rotate-half RoPE (pairs (i, i + head_dim/2))."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    angles = torch.outer(torch.arange(seq, dtype=torch.float32, device=device), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)  # [seq, head_dim]: channel i and i + hd/2 share a frequency
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, hd] -> x*cos + rotate_half(x)*sin with rotate_half(x) = [-x2, x1]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class Attention(nn.Module):
    """Causal self-attention: fused [q | k | v] projection, GQA, optional RoPE, output projection."""

    def __init__(self, cfg: GptConfig, attention: str):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.attention = attention
        qkv_dim = (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim
        self.c_attn = nn.Linear(cfg.d_model, qkv_dim, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        b, t, _ = x.shape
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.c_attn(x).split([nh * hs, nkv * hs, nkv * hs], dim=-1)
        q = q.view(b, t, nh, hs).transpose(1, 2)  # [B, nh, T, hs]
        k = k.view(b, t, nkv, hs).transpose(1, 2)  # [B, nkv, T, hs]
        v = v.view(b, t, nkv, hs).transpose(1, 2)  # [B, nkv, T, hs]
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if self.attention == "sdpa":
            # enable_gqa: query head h reads kv head h // (nh / nkv), as in the Rust model.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=nkv != nh)
        else:
            if nkv != nh:
                k = k.repeat_interleave(nh // nkv, dim=1)
                v = v.repeat_interleave(nh // nkv, dim=1)
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # [B, nh, T, T]
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            scores = scores.masked_fill(~mask, float("-inf"))
            y = scores.softmax(dim=-1) @ v
        y = y.transpose(1, 2).reshape(b, t, nh * hs)
        return self.c_proj(y)


class Mlp(nn.Module):
    """gelu: c_proj(gelu_tanh(c_fc(x))); swiglu: c_proj(silu(c_gate(x)) * c_fc(x))."""

    def __init__(self, cfg: GptConfig):
        super().__init__()
        self.kind = cfg.mlp
        self.c_fc = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.c_gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias) if cfg.mlp == "swiglu" else None
        self.c_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "gelu":
            return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))
        return self.c_proj(F.silu(self.c_gate(x)) * self.c_fc(x))


class Block(nn.Module):
    """Pre-norm block: x + drop(attn(ln_1(x))), then x + drop(mlp(ln_2(x)))."""

    def __init__(self, cfg: GptConfig, attention: str):
        super().__init__()
        self.ln_1 = Norm(cfg, cfg.d_model)
        self.attn = Attention(cfg, attention)
        self.ln_2 = Norm(cfg, cfg.d_model)
        self.mlp = Mlp(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rope):
        x = x + self.drop(self.attn(self.ln_1(x), rope))
        return x + self.drop(self.mlp(self.ln_2(x)))


class Gpt(nn.Module):
    """The whole decoder; `forward(tokens [B, T]) -> logits [B, T, vocab]`."""

    def __init__(self, cfg: GptConfig, attention: str = "sdpa"):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.context_length, cfg.d_model) if cfg.positional == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg, attention) for _ in range(cfg.n_layer))
        self.ln_f = Norm(cfg, cfg.d_model)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 init: weights N(0, std), every c_proj N(0, std/sqrt(2*n_layer)), biases 0, norms 1/0."""
        std = self.cfg.init_std
        proj_std = std / math.sqrt(2 * self.cfg.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, proj_std if name.endswith("c_proj") else std)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, Norm):
                module.weight.fill_(1.0)
                if module.bias is not None:
                    module.bias.zero_()

    def num_params(self) -> int:
        """Every parameter, shared ones counted once (a tied embedding is one tensor)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, t = tokens.shape
        if t > self.cfg.context_length:
            raise ValueError(f"sequence length {t} exceeds context_length {self.cfg.context_length}")
        x = self.wte(tokens)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(t, device=tokens.device))
        else:
            rope = rope_tables(t, self.cfg.head_dim, self.cfg.rope_theta, tokens.device)
        x = self.drop(x)
        for block in self.h:
            x = block(x, rope)
        x = self.ln_f(x)
        if self.lm_head is None:
            return x @ self.wte.weight.t()
        return self.lm_head(x)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over all B*T positions (computed in f32)."""
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, fused: bool) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (dim >= 2: Linear weights, embeddings) only."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)


def flops_per_token(cfg: GptConfig, n_params: int, seq: int) -> int:
    """PaLM appendix B: 6*N + 12*L*d*T (N includes embeddings, a tied one counted once)."""
    return 6 * n_params + 12 * cfg.n_layer * cfg.d_model * seq


# -------------------------------------------------------------------------------------------------
# Device facts: name, peak FLOP/s for MFU
# -------------------------------------------------------------------------------------------------

# Dense peak FLOP/s per precision. H200 has the H100 SXM's compute. Anything else: MFU is null.
PEAK_FLOPS = {
    "H100-SXM": {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12},
    "H200": {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
}


def device_family(device_name: str) -> str | None:
    """Maps a CUDA device name to a PEAK_FLOPS key; None for CPUs and unknown cards."""
    name = device_name.upper()
    if "H200" in name:
        return "H200"
    if "H100" in name:
        # The PCIe and NVL parts have lower peaks that the table does not hold.
        return None if ("PCIE" in name or "NVL" in name) else "H100-SXM"
    if "A100" in name:
        return "A100"
    return None


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# -------------------------------------------------------------------------------------------------
# Benchmark
# -------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu-tiny",
                   help="model shape; the shape flags below override single fields")
    shape = p.add_argument_group("shape overrides (default: the preset's value)")
    for flag, typ in [("vocab-size", int), ("context-length", int), ("n-layer", int), ("d-model", int),
                      ("n-head", int), ("n-kv-head", int), ("d-ff", int), ("rope-theta", float),
                      ("norm-eps", float), ("dropout", float)]:
        shape.add_argument(f"--{flag}", type=typ, default=None)
    shape.add_argument("--positional", choices=["learned", "rope"], default=None)
    shape.add_argument("--norm", choices=["layernorm", "rmsnorm"], default=None)
    shape.add_argument("--mlp", choices=["gelu", "swiglu"], default=None)
    shape.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None)
    shape.add_argument("--tie-embeddings", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=None, help="sequence length (default: context_length)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup-steps", type=int, default=5, help="untimed steps first (>= 1 with --compile)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["f32", "bf16", "bf16-pure"], default="f32",
                   help="f32; bf16 = autocast (f32 master weights); bf16-pure = parameters and "
                        "optimizer state in bf16")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                   help="allow TF32 tensor-core matmuls for f32 on CUDA (MFU then uses the TF32 peak)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (falls back to eager)")
    p.add_argument("--phases", action="store_true",
                   help="then time --steps more steps with a sync after forward, backward and optimizer "
                        "(phases_ms in the JSON; the syncs stop queuing ahead, so they add up to more than step_ms)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--attention", choices=["sdpa", "naive"], default="sdpa")
    p.add_argument("--seed", type=int, default=1337)
    args = p.parse_args(argv)
    if args.batch < 1 or args.steps < 1 or args.warmup_steps < 0:
        p.error("--batch and --steps must be >= 1, --warmup-steps >= 0")
    return args


def config_from_args(args: argparse.Namespace) -> tuple[GptConfig, bool]:
    """The preset with the shape flags applied, and whether any flag changed it."""
    cfg = PRESETS[args.preset]
    overrides = {}
    for field in ("vocab_size", "context_length", "n_layer", "d_model", "n_head", "n_kv_head", "d_ff",
                  "rope_theta", "norm_eps", "dropout", "positional", "norm", "mlp", "bias", "tie_embeddings"):
        value = getattr(args, field)
        if value is not None:
            overrides[field] = value
    # Changing n_head on an MHA preset keeps it MHA unless n_kv_head is given too.
    if "n_head" in overrides and "n_kv_head" not in overrides and cfg.n_kv_head == cfg.n_head:
        overrides["n_kv_head"] = overrides["n_head"]
    new = replace(cfg, **overrides)
    new.validate()
    return new, new != cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg, customised = config_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seq = args.seq if args.seq is not None else cfg.context_length
    if not 1 <= seq <= cfg.context_length:
        print(f"error: --seq {seq} must be in 1..={cfg.context_length} (context_length)", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    is_cuda = device.type == "cuda"
    if is_cuda:
        # "high" lets f32 matmuls use TF32 tensor cores; "highest" keeps full FP32.
        torch.set_float32_matmul_precision("high" if args.tf32 else "highest")
    use_tf32 = is_cuda and args.tf32 and args.dtype == "f32"

    model = Gpt(cfg, attention=args.attention).to(device)
    if args.dtype == "bf16-pure":
        model = model.to(torch.bfloat16)
    n_params = model.num_params()
    optimizer = make_optimizer(model, lr=3e-4, weight_decay=0.1, fused=is_cuda)
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if args.dtype == "bf16"
                else contextlib.nullcontext())

    generator = torch.Generator().manual_seed(args.seed)
    data = torch.randint(cfg.vocab_size, (args.batch, seq + 1), generator=generator).to(device)
    inputs, targets = data[:, :-1].contiguous(), data[:, 1:].contiguous()

    forward = model
    compiled = False
    if args.compile:
        try:
            forward = torch.compile(model)
            compiled = True
        except Exception as exc:  # noqa: BLE001 - any failure means "run eagerly"
            print(f"torch.compile unavailable ({type(exc).__name__}: {exc}); running eagerly", file=sys.stderr)

    def step() -> torch.Tensor:
        with autocast:
            loss = loss_fn(forward(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def sync() -> None:
        if is_cuda:
            torch.cuda.synchronize()

    model.train()
    warmup = args.warmup_steps
    if compiled and warmup == 0:
        warmup = 1  # compilation happens on the first call and must not be timed
    for i in range(warmup):
        if compiled and i == 0:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - compile errors surface on the first call
                print(f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                      "running eagerly", file=sys.stderr)
                forward, compiled = model, False
                optimizer.zero_grad(set_to_none=True)
                step()
        else:
            step()
    sync()
    if is_cuda:
        torch.cuda.reset_peak_memory_stats()

    times = []
    loss = None
    start = time.perf_counter()
    host = []  # how long the host takes to queue a step: close to the step time = bound by the host
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        host.append(time.perf_counter() - t0)
        sync()
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    final_loss = float(loss.item())
    phases = None
    if args.phases:
        fwd, bwd, opt = [], [], []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            with autocast:
                phase_loss = loss_fn(forward(inputs), targets)
            sync()
            t1 = time.perf_counter()
            phase_loss.backward()
            sync()
            t2 = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync()
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            opt.append(time.perf_counter() - t2)
        phases = {name: round(statistics.median(v) * 1e3, 4)
                  for name, v in (("forward", fwd), ("backward", bwd), ("optimizer", opt))}

    step_s = total / args.steps
    tokens_per_s = args.batch * seq / step_s
    fpt = flops_per_token(cfg, n_params, seq)
    achieved = fpt * tokens_per_s
    device_name = torch.cuda.get_device_name(device) if is_cuda else cpu_name()
    family = device_family(device_name) if is_cuda else None
    precision = "bf16" if args.dtype.startswith("bf16") else ("tf32" if use_tf32 else "fp32")
    mfu = achieved / PEAK_FLOPS[family][precision] if family else None
    peak_memory = torch.cuda.max_memory_allocated(device) if is_cuda else None

    result = {
        "impl": "pytorch",
        "preset": "custom" if customised else args.preset,
        "batch": args.batch,
        "seq": seq,
        "dtype": args.dtype,
        "compile": compiled,
        "device": args.device,
        "device_name": device_name,
        "step_ms": round(step_s * 1e3, 4),
        "tokens_per_s": round(tokens_per_s, 2),
        "flops_per_token": fpt,
        "tflops_per_s": round(achieved / 1e12, 6),
        "mfu": None if mfu is None else round(mfu, 6),
        "peak_memory_bytes": peak_memory,
        # What the caching allocator held at its peak: comparable with hyperclone's
        # gpu_memory_reserved_bytes (which also counts the CUDA context, ~0.5 GB).
        "gpu_memory_reserved_bytes": torch.cuda.max_memory_reserved(device) if is_cuda else None,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        # Extra context (not part of the shared result schema):
        "step_ms_median": round(statistics.median(times) * 1e3, 4),
        "step_ms_min": round(min(times) * 1e3, 4),
        "host_ms": round(statistics.median(host) * 1e3, 4),
        "phases_ms": phases,
        "steps": args.steps,
        "warmup_steps": warmup,
        "attention": args.attention,
        "tf32": use_tf32,
        "n_params": n_params,
        "final_loss": round(final_loss, 6),
        "base_preset": args.preset,
        "config": asdict(cfg),
    }
    if not math.isfinite(final_loss):
        print(f"error: loss is {final_loss}", file=sys.stderr)
    mfu_text = "n/a" if mfu is None else f"{100 * mfu:.1f}%"
    mem_text = "n/a" if peak_memory is None else f"{peak_memory / 2**20:.0f} MiB"
    print(f"{'impl':8} {'preset':12} {'B':>4} {'T':>5} {'dtype':9} {'compile':7} {'device':6} {'thr':>3} "
          f"{'step ms':>10} {'tok/s':>11} {'TFLOP/s':>9} {'MFU':>6} {'peak mem':>10} {'loss':>7}")
    print(f"{'pytorch':8} {result['preset']:12} {args.batch:>4} {seq:>5} {args.dtype:9} {str(compiled):7} "
          f"{args.device:6} {torch.get_num_threads():>3} {step_s * 1e3:>10.2f} {tokens_per_s:>11.0f} "
          f"{achieved / 1e12:>9.3f} {mfu_text:>6} {mem_text:>10} {final_loss:>7.3f}")
    print(json.dumps(result), flush=True)
    return 0 if math.isfinite(final_loss) else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
