#!/usr/bin/env python3
"""Makes the Hugging Face parity fixtures under crates/interop/tests/fixtures/.

Each fixture is a tiny, randomly initialised `transformers` model saved in HF format
(`config.json`, `model.safetensors`, `generation_config.json`), plus fixed input token ids
(`tokens.json`, {"tokens": [[...], [...]]}, B=2, T=16) and the logits the model gives for them
(`logits.safetensors`, tensor "logits", f32 [B, T, vocab]).

`llama-tiny-chat` is a chat model besides: special tokens that are not GPT-2's (its tokenizer
has `<|endoftext|>` at id 0, as SmolLM2's does, but bos/eos are `<|im_start|>` = 1 and
`<|im_end|>` = 2, pad 0), a generation config of its own (eos [2, 0], 8 new tokens, greedy), a
word-level `tokenizer.json`, `tokenizer_config.json` with a ChatML `chat_template`, and
`generate.json`: two prompts on which transformers' default `generate` stops at `<|im_end|>`
after different numbers of steps, and the sequences it returns (the shorter one padded with 0).
An export that forgot these would stop at 0 instead (the tokenizer's `<|endoftext|>`).

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
    "llama-tiny-chat": lambda: llama_tiny(n_kv_head=2, tied=True),
}

# ---------------------------------------------------------------------------------------------
# The chat fixture's tokenizer, generation config and recorded generations.

CHAT = "llama-tiny-chat"
# Ids 0-3. bos = <|im_start|> (1), eos = <|im_end|> (2), pad = <|endoftext|> (0): not GPT-2's.
CHAT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
CHAT_WORDS = (
    "system user assistant . , ? ! : ' - the a an and or but of to in on at for with from by "
    "is are was were be been has have had do does did will would can could should may might "
    "i you he she it we they me him her us them my your his its our their this that these those "
    "what who how why when where yes no not all some any one two three hello thanks please help "
    "tell story model text word good new"
).split()
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHAT_EOS = [2, 0]
CHAT_PAD = 0
CHAT_MAX_NEW_TOKENS = 8
CHAT_PROMPT_LEN = 8
# Every greedy step of a recorded generation wins by at least this much, so that a model that
# computes the same logits to ~1e-6 (a HyperCloned one) picks the same tokens.
CHAT_MIN_MARGIN = 1e-2


def chat_tokenizer():
    """A word-level fast tokenizer over CHAT_SPECIALS + CHAT_WORDS (VOCAB ids) with the template."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(CHAT_SPECIALS + CHAT_WORDS)}
    assert len(vocab) == VOCAB, len(vocab)
    inner = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    inner.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CHAT_SPECIALS])
    fast_class = getattr(transformers, "PreTrainedTokenizerFast", None) or transformers.TokenizersBackend
    return fast_class(
        tokenizer_object=inner, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token="<unk>", model_max_length=CONTEXT, chat_template=CHAT_TEMPLATE)


def chat_generation_config():
    return transformers.GenerationConfig(
        bos_token_id=1, eos_token_id=CHAT_EOS, pad_token_id=CHAT_PAD, max_new_tokens=CHAT_MAX_NEW_TOKENS,
        do_sample=False)


@torch.no_grad()
def chat_prompts(model: torch.nn.Module, generator: torch.Generator) -> torch.Tensor:
    """Two prompts of ordinary words on which greedy decoding says <|im_end|> (2) before any other
    stop token and before CHAT_MAX_NEW_TOKENS, after different numbers of steps, every step
    winning by at least CHAT_MIN_MARGIN."""
    by_length: dict[int, list[int]] = {}
    for _ in range(50_000):
        prompt = torch.randint(len(CHAT_SPECIALS), VOCAB, (CHAT_PROMPT_LEN,), generator=generator).tolist()
        seq = list(prompt)
        for _step in range(CHAT_MAX_NEW_TOKENS - 1):  # stop strictly before the length limit
            top = torch.topk(model(input_ids=torch.tensor([seq])).logits[0, -1].float(), 2)
            if float(top.values[0] - top.values[1]) < CHAT_MIN_MARGIN:
                break
            seq.append(int(top.indices[0]))
            if seq[-1] in CHAT_EOS:
                break
        new = len(seq) - CHAT_PROMPT_LEN
        if seq[-1] == 2 and new not in by_length:
            by_length[new] = prompt
            if len(by_length) == 2:
                return torch.tensor([by_length[n] for n in sorted(by_length)])
    raise RuntimeError("no two prompts found that stop at <|im_end|> after different numbers of steps")


def add_chat_files(model: torch.nn.Module, staging: Path, generator: torch.Generator) -> None:
    """tokenizer.json, tokenizer_config.json (chat_template inline, as most hub repos have it)
    and generate.json for the chat fixture (generation_config.json is saved with the model)."""
    tokenizer = chat_tokenizer()
    try:
        # transformers >= 4.5x writes the template to chat_template.jinja unless told not to.
        tokenizer.save_pretrained(staging, save_jinja_files=False)
    except TypeError:
        tokenizer.save_pretrained(staging)
    config = json.loads((staging / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config.get("chat_template") == CHAT_TEMPLATE, "chat_template not in tokenizer_config.json"
    prompts = chat_prompts(model, generator)
    sequences = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts))
    with open(staging / "generate.json", "w", encoding="utf-8") as f:
        json.dump({"tokens": prompts.tolist(), "sequences": sequences.tolist()}, f)
        f.write("\n")


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
    if name == CHAT:
        model.generation_config = chat_generation_config()
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
        if name == CHAT:
            add_chat_files(model, staging, generator)
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
