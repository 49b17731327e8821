#!/usr/bin/env python3
"""Loads a Hugging Face model folder with stock `transformers` and checks (or dumps) its logits.

This is the "does Hugging Face itself accept our export" check: the folder is loaded with
`AutoModelForCausalLM.from_pretrained` (no custom code, no network), run in f32 on the CPU on
the given token ids, and its logits are compared with the expected ones.

Check mode (exit 0 when max |Δ| <= atol; 1 on mismatch, including tensors that are missing from,
extra in or mis-shaped in model.safetensors; 2 on bad input):
    python scripts/hf/check_export.py --model-dir DIR --tokens tokens.json \
        --expected logits.safetensors [--atol 1e-4]

Dump mode (writes tensor "logits", f32 [B, T, vocab], atomically):
    python scripts/hf/check_export.py --model-dir DIR --tokens tokens.json --dump-logits OUT.safetensors

Generate mode: does DIR generate like the SOURCE folder it was made from, by default? Runs
`generate` on both with each folder's own defaults (generation_config.json, else config.json:
eos/pad ids, max_new_tokens, greedy or not) on the token rows as prompts and requires the same
sequences (so the same stop and padding); where both folders have a tokenizer, also the same
`apply_chat_template` output for a fixed conversation, and the same special tokens. Sampling
configs are compared with a fixed seed. Exit 0 when alike, 1 when not, 2 on bad input:
    python scripts/hf/check_export.py --model-dir DIR --tokens prompts.json --generate-like SOURCE

`tokens.json` is {"tokens": [[id, ...], ...]} (B rows of equal length T).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402


class InputError(Exception):
    """A file given on the command line is missing or malformed (the message names it)."""


class ExportError(Exception):
    """The model folder loads, but its tensors do not match its config (missing/extra/mis-shaped)."""


def load_tokens(path: Path) -> torch.Tensor:
    """Reads {"tokens": [[int, ...], ...]} into a [B, T] int64 tensor."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read token ids: {exc}") from exc
    rows = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, list) and r for r in rows):
        raise InputError(f"{path}: key \"tokens\" must be a non-empty list of non-empty lists")
    if len({len(r) for r in rows}) != 1:
        raise InputError(f"{path}: key \"tokens\": rows have different lengths {[len(r) for r in rows]}")
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for r in rows for t in r):
        raise InputError(f"{path}: key \"tokens\" must hold non-negative integers only")
    return torch.tensor(rows, dtype=torch.long)


def load_logits(path: Path) -> torch.Tensor:
    """Reads tensor "logits" from a safetensors file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            if "logits" not in f.keys():
                raise InputError(f"{path}: no tensor \"logits\" (has {sorted(f.keys())})")
            return f.get_tensor("logits").float()
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for bad files
        raise InputError(f"{path}: cannot read safetensors: {exc}") from exc


def run_model(model_dir: Path, tokens: torch.Tensor, attn_implementation: str) -> torch.Tensor:
    """Logits [B, T, vocab] (f32) of the model in `model_dir` for `tokens`."""
    if not (model_dir / "config.json").is_file():
        raise InputError(f"{model_dir}: no config.json (not a Hugging Face model folder)")
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation=attn_implementation, local_files_only=True,
            output_loading_info=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for bad folders
        raise InputError(f"{model_dir}: transformers cannot load it: {type(exc).__name__}: {exc}") from exc
    # transformers fills a missing tensor with random values and only warns: an export that
    # lacks (or adds, or mis-shapes) a tensor is a failed export, whatever the logits say.
    problems = {kind: sorted(str(k) for k in info.get(kind, ())) for kind in
                ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {kind: keys for kind, keys in problems.items() if keys}
    if problems:
        raise ExportError(f"{model_dir}/model.safetensors does not match the architecture in "
                          f"config.json: {problems}")
    model.eval()
    vocab = model.config.vocab_size
    if int(tokens.max()) >= vocab:
        raise InputError(f"token id {int(tokens.max())} is out of range for vocab_size {vocab}")
    with torch.no_grad():
        return model(input_ids=tokens).logits.float().contiguous()


CONVERSATION = [
    {"role": "system", "content": "you are a good model ."},
    {"role": "user", "content": "hello , tell me a story please !"},
]


def load_model(model_dir: Path):
    if not (model_dir / "config.json").is_file():
        raise InputError(f"{model_dir}: no config.json (not a Hugging Face model folder)")
    try:
        return AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation="eager", local_files_only=True).eval()
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for bad folders
        raise InputError(f"{model_dir}: transformers cannot load it: {type(exc).__name__}: {exc}") from exc


@torch.no_grad()
def generate(model_dir: Path, prompts: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """transformers' default generate on `prompts`, and the generation settings it used."""
    model = load_model(model_dir)
    torch.manual_seed(0)  # only matters for a config that samples
    out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts))
    config = model.generation_config
    used = {key: getattr(config, key, None) for key in
            ("bos_token_id", "eos_token_id", "pad_token_id", "max_new_tokens", "max_length", "do_sample")}
    return out, used


def chat_prompt(model_dir: Path) -> tuple[str, dict] | None:
    """The chat template's text for CONVERSATION and the special tokens, or None without a tokenizer."""
    if not (model_dir / "tokenizer.json").is_file():
        return None
    from transformers import AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{model_dir}: transformers cannot load its tokenizer: {type(exc).__name__}: {exc}") from exc
    special = {k: getattr(tokenizer, k, None) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    if not getattr(tokenizer, "chat_template", None):
        return None, special
    return tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True), special


def generate_like(model_dir: Path, source_dir: Path, prompts: torch.Tensor) -> int:
    ours, our_config = generate(model_dir, prompts)
    theirs, their_config = generate(source_dir, prompts)
    ok = True
    print(f"generation settings: {model_dir}: {our_config}; {source_dir}: {their_config}")
    for row in range(prompts.shape[0]):
        a, b = ours[row].tolist(), theirs[row].tolist()
        same = a == b
        ok &= same
        print(f"row {row}: {'same' if same else 'DIFFERENT'}: {len(a)} tokens {a[prompts.shape[1]:]} "
              f"vs source {len(b)} tokens {b[prompts.shape[1]:]}")
    if tuple(ours.shape) != tuple(theirs.shape):
        ok = False
        print(f"shapes differ: {list(ours.shape)} vs source {list(theirs.shape)}")
    our_chat, their_chat = chat_prompt(model_dir), chat_prompt(source_dir)
    if our_chat is not None or their_chat is not None:
        same = our_chat == their_chat
        ok &= same
        print(f"chat template and special tokens: {'same' if same else 'DIFFERENT'}: {our_chat!r}"
              + ("" if same else f" vs source {their_chat!r}"))
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


def write_logits(path: Path, logits: torch.Tensor) -> None:
    """Writes tensor "logits" atomically (temp file in the same folder, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({"logits": logits}, tmp, metadata={"made_by": "scripts/hf/check_export.py"})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check (or dump) the logits of a Hugging Face model folder.")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--tokens", type=Path, required=True, help='JSON {"tokens": [[...], ...]}')
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--expected", type=Path, help="safetensors with the expected \"logits\"")
    mode.add_argument("--dump-logits", type=Path, help="write the model's logits here instead of checking")
    mode.add_argument("--generate-like", type=Path, metavar="SOURCE_DIR",
                      help="check that --model-dir generates (and chats) like this folder by default")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest allowed |Δ| per logit")
    parser.add_argument("--attn-implementation", default="eager", choices=["eager", "sdpa"])
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    transformers.utils.logging.disable_progress_bar()

    if args.generate_like:
        try:
            return generate_like(args.model_dir, args.generate_like, load_tokens(args.tokens))
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    try:
        tokens = load_tokens(args.tokens)
        expected = load_logits(args.expected) if args.expected else None
        logits = run_model(args.model_dir, tokens, args.attn_implementation)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ExportError as exc:
        print(f"MISMATCH: {exc}")
        return 1

    if args.dump_logits:
        write_logits(args.dump_logits, logits)
        print(f"wrote logits {list(logits.shape)} to {args.dump_logits}")
        return 0

    if tuple(expected.shape) != tuple(logits.shape):
        print(f"MISMATCH: shape {list(logits.shape)} from the model, {list(expected.shape)} in {args.expected}")
        return 1
    diff = (logits - expected).abs()
    max_diff = float(diff.max())
    where = [int(i) for i in torch.unravel_index(diff.argmax(), diff.shape)]
    ok = bool(torch.isfinite(logits).all()) and max_diff <= args.atol
    print(f"max |Δ| = {max_diff:.3e} at [b, t, v] = {where} (atol {args.atol:g}, "
          f"logits {list(logits.shape)}, max |logit| {float(expected.abs().max()):.3g})")
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
