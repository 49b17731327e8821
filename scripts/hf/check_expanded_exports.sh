#!/usr/bin/env bash
# Checks with stock transformers that our exports of HyperCloned models compute the source
# model's logits, and records the result as a fixture for CI (which has no torch).
#
# For each fixture in crates/interop/tests/fixtures/: import it, HyperClone it 2x (width 2,
# FFN 2, symmetric; and the same then 2x deeper with zero blocks interleaved: "<fixture>-depth2"),
# export it (the ignored Rust test `write_expanded_exports`), then load the
# export with transformers (scripts/hf/check_export.py) and compare its logits with the source
# fixture's logits (atol 1e-4). On success writes crates/interop/tests/expanded/<fixture>/
# logits.safetensors (transformers' logits of the export) and export.json (SHA-256 of the
# exported config.json and model.safetensors, max |Δ|, versions). The Rust test
# `expanded_exports_keep_the_source_logits` then checks that our export is byte-identical to the
# one transformers verified.
#
# Usage: scripts/hf/check_expanded_exports.sh [PYTHON]   (default: ~/.venvs/hc-ref/bin/python,
# made by scripts/reference/setup_venv.sh). Exit status 0 only when every fixture passes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
py="${1:-$HOME/.venvs/hc-ref/bin/python}"
fixtures="$root/crates/interop/tests/fixtures"
records="$root/crates/interop/tests/expanded"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$root"
HC_EXPANDED_EXPORT_DIR="$work" cargo test -p hyperclone-interop --release --test parity \
    -- --ignored --exact write_expanded_exports --quiet

status=0
for export_dir in "$work"/*/; do
    name="$(basename "$export_dir")"
    dir="$fixtures/${name%-depth2}"
    [[ -f "$dir/logits.safetensors" ]] || continue
    echo "== $name"
    if ! "$py" scripts/hf/check_export.py --model-dir "$work/$name" --tokens "$dir/tokens.json" \
        --expected "$dir/logits.safetensors"; then
        status=1
        continue
    fi
    mkdir -p "$work/$name.out"
    "$py" scripts/hf/check_export.py --model-dir "$work/$name" --tokens "$dir/tokens.json" \
        --dump-logits "$work/$name.out/logits.safetensors"
    "$py" - "$work/$name" "$dir" "$work/$name.out" <<'PY'
import hashlib, json, os, sys
import safetensors, torch, transformers
from safetensors import safe_open
export, fixture, out = sys.argv[1:4]
def sha(p):
    with open(p, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
def logits(p):
    with safe_open(p, framework="pt") as f:
        return f.get_tensor("logits")
diff = (logits(os.path.join(out, "logits.safetensors")) - logits(os.path.join(fixture, "logits.safetensors"))).abs().max()
record = {
    "made_by": "scripts/hf/check_expanded_exports.sh",
    "expand": dict({"width_factor": 2, "ffn_factor": 2, "variant": "symmetric"},
              **({"depth_factor": 2, "depth_mode": "zero", "depth_placement": "interleave",
                  "order": "width-first"} if export.rstrip("/").endswith("-depth2") else {})),
    "config_sha256": sha(os.path.join(export, "config.json")),
    "weights_sha256": sha(os.path.join(export, "model.safetensors")),
    "transformers_max_abs_diff": float(diff),
    "atol": 1e-4,
    "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                 "safetensors": safetensors.__version__},
}
with open(os.path.join(out, "export.json"), "w") as f:
    json.dump(record, f, indent=2)
    f.write("\n")
print(f"transformers logits of the expanded export vs source: max |d| = {float(diff):.3e}")
PY
    # Replace the record (a folder of two files) by renames.
    mkdir -p "$records"
    rm -rf "$records/.$name.tmp" && mv "$work/$name.out" "$records/.$name.tmp"
    rm -rf "$records/$name" && mv "$records/.$name.tmp" "$records/$name"
done
exit $status
