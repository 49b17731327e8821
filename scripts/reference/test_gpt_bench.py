#!/usr/bin/env python3
"""Tests of the PyTorch reference model and benchmark (python -m unittest, or pytest)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
import unittest
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpt_bench  # noqa: E402
from gpt_bench import PRESETS, Gpt, GptConfig, apply_rope, flops_per_token, loss_fn, rope_tables  # noqa: E402

TINY = GptConfig(vocab_size=61, context_length=24, n_layer=2, d_model=48, n_head=6, n_kv_head=6, d_ff=80)


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Random values everywhere (norm gains and biases too), so no parameter hides behind 1 or 0."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen) + (1.0 if p.dim() == 1 else 0.0))


def tokens_for(cfg: GptConfig, batch: int = 3, seq: int | None = None, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(cfg.vocab_size, (batch, seq or cfg.context_length), generator=gen)


VARIANTS = {
    "gpt2-like": TINY,
    "gqa-rope-swiglu": replace(TINY, n_kv_head=2, positional="rope", norm="rmsnorm", mlp="swiglu", bias=False,
                               tie_embeddings=False),
    "mqa-rope-bias": replace(TINY, n_kv_head=1, positional="rope", norm="rmsnorm", mlp="swiglu"),
    "learned-gqa-untied": replace(TINY, n_kv_head=3, tie_embeddings=False),
}


class AttentionTests(unittest.TestCase):
    def test_sdpa_matches_naive_forward_and_backward(self):
        for name, cfg in VARIANTS.items():
            with self.subTest(name):
                sdpa, naive = Gpt(cfg, "sdpa"), Gpt(cfg, "naive")
                randomise(sdpa, 1)
                naive.load_state_dict(sdpa.state_dict())
                tokens = tokens_for(cfg)
                out_s, out_n = sdpa(tokens), naive(tokens)
                torch.testing.assert_close(out_s, out_n, atol=1e-5, rtol=1e-5)
                loss_fn(out_s, tokens).backward()
                loss_fn(out_n, tokens).backward()
                for (k, a), (_, b) in zip(sdpa.named_parameters(), naive.named_parameters()):
                    torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=k)

    def test_gqa_equals_mha_with_each_kv_head_repeated_for_its_query_group(self):
        gqa_cfg = VARIANTS["gqa-rope-swiglu"]
        mha_cfg = replace(gqa_cfg, n_kv_head=gqa_cfg.n_head)
        gqa, mha = Gpt(gqa_cfg, "naive"), Gpt(mha_cfg, "naive")
        randomise(gqa, 2)
        state = gqa.state_dict()
        nh, nkv, hs, d = gqa_cfg.n_head, gqa_cfg.n_kv_head, gqa_cfg.head_dim, gqa_cfg.d_model
        for i in range(gqa_cfg.n_layer):
            w = state[f"h.{i}.attn.c_attn.weight"]  # [(nh + 2 nkv) hs, d]
            q, k, v = w.split([nh * hs, nkv * hs, nkv * hs])
            # query head h reads kv head h // (nh / nkv)
            expand = lambda x: x.view(nkv, hs, d)[[h // (nh // nkv) for h in range(nh)]].reshape(nh * hs, d)  # noqa: E731
            state[f"h.{i}.attn.c_attn.weight"] = torch.cat([q, expand(k), expand(v)])
        mha.load_state_dict(state)
        tokens = tokens_for(gqa_cfg)
        torch.testing.assert_close(gqa(tokens), mha(tokens), atol=1e-5, rtol=1e-5)

    def test_causality_future_tokens_do_not_change_past_logits(self):
        for name, cfg in VARIANTS.items():
            with self.subTest(name):
                model = Gpt(cfg, "sdpa")
                randomise(model, 3)
                tokens = tokens_for(cfg, batch=1)
                changed = tokens.clone()
                changed[0, 10:] = (changed[0, 10:] + 7) % cfg.vocab_size
                with torch.no_grad():
                    a, b = model(tokens), model(changed)
                torch.testing.assert_close(a[:, :10], b[:, :10])
                self.assertGreater(float((a[:, 10:] - b[:, 10:]).abs().max()), 1e-3)


class RopeTests(unittest.TestCase):
    def test_scores_depend_only_on_relative_position(self):
        hd, seq = 16, 20
        cos, sin = rope_tables(seq, hd, 10000.0, "cpu")
        gen = torch.Generator().manual_seed(4)
        q, k = torch.randn(hd, generator=gen), torch.randn(hd, generator=gen)
        rq = apply_rope(q.expand(1, 1, seq, hd), cos, sin)[0, 0]
        rk = apply_rope(k.expand(1, 1, seq, hd), cos, sin)[0, 0]
        # <rope(q, m), rope(k, n)> is the same for (m, n) = (5, 2), (12, 9), (17, 14)
        scores = [float(rq[m] @ rk[m - 3]) for m in (5, 12, 17)]
        for s in scores[1:]:
            self.assertAlmostEqual(s, scores[0], places=4)
        self.assertAlmostEqual(float(rq[7].norm()), float(q.norm()), places=4)  # a rotation

    def test_pairs_are_i_and_i_plus_half_with_llama_frequencies(self):
        hd, theta = 8, 10000.0
        cos, sin = rope_tables(4, hd, theta, "cpu")
        x = torch.zeros(1, 1, 4, hd)
        x[..., 1] = 1.0  # channel 1 pairs with channel 1 + hd/2 = 5, frequency theta^(-2/hd)
        y = apply_rope(x, cos, sin)[0, 0]
        angle = 3 * theta ** (-2 * 1 / hd)
        self.assertAlmostEqual(float(y[3, 1]), math.cos(angle), places=5)
        self.assertAlmostEqual(float(y[3, 5]), math.sin(angle), places=5)
        others = [c for c in range(hd) if c not in (1, 5)]
        self.assertEqual(float(y[:, others].abs().max()), 0.0)


class InitAndCountTests(unittest.TestCase):
    def test_parameter_count_of_every_preset_matches_the_closed_form(self):
        for name, cfg in PRESETS.items():
            with self.subTest(name):
                d, f, v, hs = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.head_dim
                b = 1 if cfg.bias else 0
                norm = d * (2 if cfg.norm == "layernorm" and cfg.bias else 1)
                qkv = (cfg.n_head + 2 * cfg.n_kv_head) * hs
                attn = d * qkv + b * qkv + d * d + b * d
                mlp = (3 if cfg.mlp == "swiglu" else 2) * d * f + b * f * (2 if cfg.mlp == "swiglu" else 1) + b * d
                expected = (v * d + (cfg.context_length * d if cfg.positional == "learned" else 0)
                            + cfg.n_layer * (2 * norm + attn + mlp) + norm + (0 if cfg.tie_embeddings else v * d))
                with torch.device("meta"):
                    model = Gpt(cfg)
                self.assertEqual(model.num_params(), expected)
                self.assertEqual(flops_per_token(cfg, expected, 100), 6 * expected + 12 * cfg.n_layer * d * 100)

    def test_init_follows_gpt2(self):
        torch.manual_seed(5)
        cfg = PRESETS["cpu-small"]
        model = Gpt(cfg)
        proj_std = 0.02 / math.sqrt(2 * cfg.n_layer)
        for name, p in model.named_parameters():
            with self.subTest(name):
                if name.endswith("c_proj.weight"):
                    self.assertAlmostEqual(float(p.std()), proj_std, delta=0.05 * proj_std)
                elif p.dim() == 2:
                    self.assertAlmostEqual(float(p.std()), 0.02, delta=0.001)
                elif ".ln_" in f".{name}" and name.endswith("weight"):
                    self.assertTrue(bool((p == 1).all()))
                else:
                    self.assertTrue(bool((p == 0).all()))

    def test_tied_head_is_the_embedding(self):
        model = Gpt(TINY)
        randomise(model, 6)
        self.assertFalse(any("lm_head" in n for n, _ in model.named_parameters()))
        tokens = tokens_for(TINY)
        x = model.ln_f(model.h[1](model.h[0](model.wte(tokens) + model.wpe.weight[: tokens.shape[1]], None), None))
        torch.testing.assert_close(model(tokens), x @ model.wte.weight.t())


class TrainingTests(unittest.TestCase):
    def test_initial_loss_is_near_log_vocab_and_training_lowers_it(self):
        torch.manual_seed(7)
        cfg = PRESETS["cpu-tiny"]
        model = Gpt(cfg)
        opt = gpt_bench.make_optimizer(model, lr=3e-3, weight_decay=0.1, fused=False)
        data = tokens_for(cfg, batch=4, seq=33)
        losses = []
        for _ in range(30):
            loss = loss_fn(model(data[:, :-1]), data[:, 1:])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss))
        self.assertLess(abs(losses[0] - math.log(cfg.vocab_size)), 0.1)
        self.assertLess(losses[-1], 0.5 * losses[0])

    def test_weight_decay_only_on_matrices(self):
        model = Gpt(VARIANTS["gqa-rope-swiglu"])
        opt = gpt_bench.make_optimizer(model, lr=3e-4, weight_decay=0.1, fused=False)
        for group in opt.param_groups:
            for p in group["params"]:
                self.assertEqual(group["weight_decay"], 0.1 if p.dim() >= 2 else 0.0)


class BenchTests(unittest.TestCase):
    def run_main(self, *argv: str) -> tuple[int, dict]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = gpt_bench.main(list(argv))
        lines = [line for line in out.getvalue().splitlines() if line.startswith("{")]
        self.assertEqual(len(lines), 1, out.getvalue())
        return rc, json.loads(lines[0])

    def test_json_line_is_complete_and_consistent(self):
        rc, r = self.run_main("--preset", "cpu-tiny", "--batch", "2", "--seq", "32", "--steps", "2",
                              "--warmup-steps", "1", "--threads", "1")
        self.assertEqual(rc, 0)
        for key in ("impl", "preset", "batch", "seq", "dtype", "compile", "device", "device_name", "step_ms",
                    "tokens_per_s", "flops_per_token", "tflops_per_s", "mfu", "peak_memory_bytes", "threads",
                    "torch"):
            self.assertIn(key, r)
        self.assertEqual((r["impl"], r["preset"], r["batch"], r["seq"], r["threads"]), ("pytorch", "cpu-tiny", 2, 32, 1))
        cfg = PRESETS["cpu-tiny"]
        self.assertEqual(r["flops_per_token"], 6 * r["n_params"] + 12 * cfg.n_layer * cfg.d_model * 32)
        self.assertAlmostEqual(r["tokens_per_s"], 2 * 32 / (r["step_ms"] / 1e3), delta=0.01 * r["tokens_per_s"])
        self.assertAlmostEqual(r["tflops_per_s"], r["flops_per_token"] * r["tokens_per_s"] / 1e12, delta=1e-5)
        self.assertIsNone(r["mfu"])  # CPU
        self.assertIsNone(r["peak_memory_bytes"])
        self.assertIsNone(r["gpu_memory_reserved_bytes"])
        self.assertGreater(r["host_ms"], 0)
        self.assertIsNone(r["phases_ms"])

    def test_phases_time_forward_backward_and_optimizer(self):
        rc, r = self.run_main("--preset", "cpu-tiny", "--batch", "2", "--seq", "32", "--steps", "2",
                              "--warmup-steps", "1", "--threads", "1", "--phases")
        self.assertEqual(rc, 0)
        self.assertEqual(sorted(r["phases_ms"]), ["backward", "forward", "optimizer"])
        for name, ms in r["phases_ms"].items():
            self.assertGreater(ms, 0, name)

    def test_shape_flags_override_the_preset(self):
        rc, r = self.run_main("--preset", "llama-small", "--vocab-size", "128", "--context-length", "16",
                              "--n-layer", "1", "--d-model", "32", "--n-head", "4", "--n-kv-head", "2",
                              "--d-ff", "40", "--batch", "1", "--steps", "1", "--warmup-steps", "0",
                              "--attention", "naive", "--dtype", "bf16-pure")
        self.assertEqual(rc, 0)
        self.assertEqual(r["preset"], "custom")
        self.assertEqual(r["config"]["n_kv_head"], 2)
        self.assertEqual(r["config"]["positional"], "rope")
        self.assertEqual(r["seq"], 16)

    def test_bad_shape_is_refused(self):
        with contextlib.redirect_stderr(io.StringIO()) as err:
            rc = gpt_bench.main(["--preset", "cpu-tiny", "--n-head", "4", "--n-kv-head", "3"])
        self.assertEqual(rc, 2)
        self.assertIn("n_kv_head = 3", err.getvalue())

    def test_peak_table(self):
        self.assertEqual(gpt_bench.device_family("NVIDIA H100 80GB HBM3"), "H100-SXM")
        self.assertIsNone(gpt_bench.device_family("NVIDIA H100 PCIe"))
        self.assertEqual(gpt_bench.device_family("NVIDIA H200"), "H200")
        self.assertEqual(gpt_bench.device_family("NVIDIA A100-SXM4-80GB"), "A100")
        self.assertIsNone(gpt_bench.device_family("NVIDIA GeForce RTX 4090"))
        self.assertEqual(gpt_bench.PEAK_FLOPS["H100-SXM"]["bf16"], gpt_bench.PEAK_FLOPS["H200"]["bf16"])


if __name__ == "__main__":
    unittest.main()
