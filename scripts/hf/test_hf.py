#!/usr/bin/env python3
"""Tests of the HF fixtures and scripts (python -m unittest, or pytest). Needs torch, transformers,
safetensors; no network."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import unittest
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "reference"))
import hf_mapping  # noqa: E402
import make_fixtures  # noqa: E402
from gpt_bench import Gpt, GptConfig  # noqa: E402

FIXTURES = make_fixtures.DEFAULT_OUT
NAMES = list(make_fixtures.VARIANTS)


def check_export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HERE / "check_export.py"), *args],
                          capture_output=True, text=True, timeout=300)


def fixture_args(folder: Path, expected: Path | None = None) -> list[str]:
    return ["--model-dir", str(folder), "--tokens", str(folder / "tokens.json"),
            "--expected", str(expected or folder / "logits.safetensors")]


class FixtureTests(unittest.TestCase):
    def test_every_variant_is_committed_small_and_well_formed(self):
        for name in NAMES:
            with self.subTest(name):
                folder = FIXTURES / name
                size = sum(p.stat().st_size for p in folder.iterdir())
                self.assertLess(size, 200_000)
                tokens = json.loads((folder / "tokens.json").read_text())["tokens"]
                self.assertEqual((len(tokens), len(tokens[0])), (2, 16))
                logits = load_file(str(folder / "logits.safetensors"))["logits"]
                self.assertEqual((logits.dtype, tuple(logits.shape)), (torch.float32, (2, 16, 96)))
                self.assertGreater(float(logits.std()), 0.5)  # not near-uniform: the parity test has teeth

    def test_norms_and_biases_are_random_not_default(self):
        for name in NAMES:
            with self.subTest(name):
                tensors = load_file(str(FIXTURES / name / "model.safetensors"))
                for key, value in tensors.items():
                    if value.dim() == 1:
                        self.assertFalse(bool((value == 1).all()) or bool((value == 0).all()), key)

    def test_regenerating_gives_the_committed_files(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([sys.executable, str(HERE / "make_fixtures.py"), "--out", tmp],
                                 capture_output=True, text=True, timeout=300)
            self.assertEqual(out.returncode, 0, out.stderr)
            for name in NAMES:
                extra = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "generate.json") \
                    if name == make_fixtures.CHAT else ()
                for file in ("config.json", "model.safetensors", "tokens.json", *extra):
                    with self.subTest(f"{name}/{file}"):
                        self.assertEqual((Path(tmp) / name / file).read_bytes(),
                                         (FIXTURES / name / file).read_bytes())
                with self.subTest(f"{name}/logits"):
                    # Bit-identical on one machine; another CPU's kernels may round differently.
                    torch.testing.assert_close(load_file(str(Path(tmp) / name / "logits.safetensors"))["logits"],
                                               load_file(str(FIXTURES / name / "logits.safetensors"))["logits"],
                                               atol=1e-5, rtol=0)


class CheckExportTests(unittest.TestCase):
    def test_committed_fixtures_pass(self):
        for name in NAMES:
            with self.subTest(name):
                out = check_export(*fixture_args(FIXTURES / name))
                self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
                self.assertIn("OK", out.stdout)

    def test_perturbed_logits_fail(self):
        folder = FIXTURES / "llama-tiny-gqa-tied"
        with tempfile.TemporaryDirectory() as tmp:
            logits = load_file(str(folder / "logits.safetensors"))["logits"].clone()
            logits[1, 7, 3] += 1e-3
            save_file({"logits": logits}, f"{tmp}/bad.safetensors")
            out = check_export(*fixture_args(folder, Path(tmp) / "bad.safetensors"))
            self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
            self.assertIn("[1, 7, 3]", out.stdout)
            self.assertIn("MISMATCH", out.stdout)

    def test_missing_tensor_fails_even_when_transformers_would_fill_it(self):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "m"
            shutil.copytree(FIXTURES / "llama-tiny-mqa-untied", folder)
            tensors = load_file(str(folder / "model.safetensors"))
            del tensors["model.layers.1.post_attention_layernorm.weight"]
            save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
            out = check_export(*fixture_args(folder))
            self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
            self.assertIn("post_attention_layernorm", out.stdout)

    def test_bad_inputs_exit_2_naming_the_file(self):
        with tempfile.TemporaryDirectory() as tmp:
            bad = Path(tmp) / "tokens.json"
            bad.write_text('{"tokens": [[1, 2], [3]]}')
            out = check_export("--model-dir", str(FIXTURES / "gpt2-tiny"), "--tokens", str(bad),
                               "--expected", str(FIXTURES / "gpt2-tiny" / "logits.safetensors"))
            self.assertEqual(out.returncode, 2)
            self.assertIn(str(bad), out.stderr)
            out = check_export("--model-dir", tmp, "--tokens", str(FIXTURES / "gpt2-tiny" / "tokens.json"),
                               "--dump-logits", f"{tmp}/x.safetensors")
            self.assertEqual(out.returncode, 2)
            self.assertIn("config.json", out.stderr)

    def test_generate_mode_tells_a_faithful_export_from_one_that_lost_its_stop(self):
        chat = FIXTURES / make_fixtures.CHAT
        prompts = chat / "generate.json"
        recorded = json.loads(prompts.read_text())
        out = check_export("--model-dir", str(chat), "--tokens", str(prompts), "--generate-like", str(chat))
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertIn("OK", out.stdout)
        with tempfile.TemporaryDirectory() as tmp:
            # An export as it was before the kept metadata: eos = bos = <|endoftext|> (0), no
            # generation or tokenizer config.
            lost = Path(tmp) / "lost"
            shutil.copytree(chat, lost)
            for file in ("generation_config.json", "tokenizer_config.json", "special_tokens_map.json"):
                (lost / file).unlink(missing_ok=True)
            config = json.loads((lost / "config.json").read_text())
            config.update(bos_token_id=0, eos_token_id=0)
            config.pop("pad_token_id", None)
            (lost / "config.json").write_text(json.dumps(config))
            out = check_export("--model-dir", str(lost), "--tokens", str(prompts), "--generate-like", str(chat))
            self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
            self.assertIn("MISMATCH", out.stdout)
        # Both recorded rows stop at <|im_end|> (2); the shorter one is padded with 0.
        new = [row[len(recorded["tokens"][0]):] for row in recorded["sequences"]]
        self.assertEqual(len(new), 2)
        stops = [row.index(2) for row in new]
        self.assertNotEqual(stops[0], stops[1])
        short = new[stops.index(min(stops))]
        self.assertTrue(all(t == 0 for t in short[min(stops) + 1:]))

    def test_dump_mode_writes_the_models_logits(self):
        folder = FIXTURES / "gpt2-tiny"
        with tempfile.TemporaryDirectory() as tmp:
            out = check_export("--model-dir", str(folder), "--tokens", str(folder / "tokens.json"),
                               "--dump-logits", f"{tmp}/sub/out.safetensors")
            self.assertEqual(out.returncode, 0, out.stderr)
            torch.testing.assert_close(load_file(f"{tmp}/sub/out.safetensors")["logits"],
                                       load_file(str(folder / "logits.safetensors"))["logits"], atol=1e-4, rtol=0)


class MappingTests(unittest.TestCase):
    def test_reference_model_reproduces_every_fixture(self):
        for name in NAMES:
            with self.subTest(name):
                model = hf_mapping.load_reference(FIXTURES / name)
                tokens = torch.tensor(json.loads((FIXTURES / name / "tokens.json").read_text())["tokens"])
                with torch.no_grad():
                    logits = model(tokens)
                torch.testing.assert_close(logits, load_file(str(FIXTURES / name / "logits.safetensors"))["logits"],
                                           atol=1e-4, rtol=0)

    def test_reference_export_loads_in_transformers_with_the_same_logits(self):
        base = GptConfig(vocab_size=50, context_length=20, n_layer=2, d_model=24, n_head=4, n_kv_head=4, d_ff=40)
        variants = {
            "gpt2": base,
            "llama-gqa-untied-bias": replace(base, n_kv_head=2, positional="rope", rope_theta=500.0, norm="rmsnorm",
                                             norm_eps=1e-6, mlp="swiglu", tie_embeddings=False),
            "llama-mqa-tied": replace(base, n_kv_head=1, positional="rope", norm="rmsnorm", mlp="swiglu", bias=False),
        }
        for name, cfg in variants.items():
            with self.subTest(name), tempfile.TemporaryDirectory() as tmp:
                torch.manual_seed(11)
                model = Gpt(cfg).eval()
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(0.2 * torch.randn_like(p))
                hf_mapping.export_reference(model, Path(tmp) / "m")
                tokens = torch.randint(cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
                (Path(tmp) / "tokens.json").write_text(json.dumps({"tokens": tokens.tolist()}))
                with torch.no_grad():
                    save_file({"logits": model(tokens).contiguous()}, f"{tmp}/expected.safetensors")
                out = check_export("--model-dir", f"{tmp}/m", "--tokens", f"{tmp}/tokens.json",
                                   "--expected", f"{tmp}/expected.safetensors")
                self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
                # And back: HF folder -> reference gives the very same tensors.
                again = hf_mapping.load_reference(Path(tmp) / "m")
                for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
                    self.assertTrue(torch.equal(a, b), k)

    def test_unsupported_configs_are_refused_with_the_reason(self):
        llama = json.loads((FIXTURES / "llama-tiny-gqa-tied" / "config.json").read_text())
        gpt2 = json.loads((FIXTURES / "gpt2-tiny" / "config.json").read_text())
        cases = [
            ({**llama, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "RoPE scaling"),
            ({**llama, "hidden_act": "gelu"}, "hidden_act"),
            ({**llama, "attention_bias": True}, "one bias switch"),
            ({**gpt2, "activation_function": "relu"}, "activation_function"),
            ({**gpt2, "model_type": "mistral"}, "model_type"),
        ]
        for config, reason in cases:
            with self.subTest(reason):
                with self.assertRaisesRegex(hf_mapping.MappingError, reason):
                    hf_mapping.config_from_hf(config)

    def test_rope_theta_read_from_either_place(self):
        llama = json.loads((FIXTURES / "llama-tiny-gqa-tied" / "config.json").read_text())
        self.assertEqual(hf_mapping.config_from_hf(llama).rope_theta, 10000.0)  # rope_parameters (transformers 5)
        old_style = {k: v for k, v in llama.items() if k != "rope_parameters"} | {"rope_theta": 500000.0}
        self.assertEqual(hf_mapping.config_from_hf(old_style).rope_theta, 500000.0)


if __name__ == "__main__":
    unittest.main()
