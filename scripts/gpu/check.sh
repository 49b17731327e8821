#!/usr/bin/env bash
# GPU check: correctness (CUDA vs CPU losses), throughput (ours vs the PyTorch reference) and a
# short train-small → expand → train-large pipeline, in one call on a CUDA machine that has
# PyTorch but no Rust toolchain and no network.
#
#   scripts/gpu/check.sh OUT_DIR [BINARY]          # on the GPU machine
#   scripts/gpu/check.sh --cpu-only OUT_DIR [BINARY]  # the CPU half (CI): flex vs flex, CPU bench
#
# BINARY defaults to .gpu/hyperclone (a release build with --features cuda, carried over), else
# target/release/hyperclone. Everything goes under OUT_DIR; a short table is printed last.
set -uo pipefail
cpu_only=0
if [ "${1:-}" = "--cpu-only" ]; then cpu_only=1; shift; fi
out="${1:?usage: check.sh [--cpu-only] OUT_DIR [BINARY]}"
bin="${2:-}"
here="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$here"
if [ -z "$bin" ]; then
  if [ -x .gpu/hyperclone ]; then bin=.gpu/hyperclone; else bin="${CARGO_TARGET_DIR:-target}/release/hyperclone"; fi
fi
[ -x "$bin" ] || { echo "no binary at $bin (build: cargo build --release [--features cuda])"; exit 2; }
mkdir -p "$out"
# Start from a clean slate: a run dir left by an earlier check (another commit, another clone
# path) holds checkpoints of a different configuration, which `train` and `run` rightly refuse.
# Only what this script itself creates is removed.
rm -rf "$out"/c-cpu "$out"/c-cpu-fused "$out"/c-cpu-composed "$out"/c-cpu-bf16 "$out"/c-gpu "$out"/c-gpu-composed "$out"/c-bf16 "$out"/c-bf16p "$out"/c-dp1 "$out"/c-dp2 "$out"/c-dp2-nccl "$out"/pipeline "$out"/data "$out"/data-full
rm -f "$out"/*.log "$out"/train-check.toml "$out"/pipeline.toml
results="$out/results.jsonl"
: > "$results"
table="$out/table.txt"
: > "$table"
gpu=cuda
[ $cpu_only = 1 ] && gpu=flex
export RUST_LOG=${RUST_LOG:-info}
status=0
note() { echo "$*" | tee -a "$table"; }
# The reason a command failed: its `Error:` line and `Caused by:` chain (anyhow) or its panic,
# else its last lines; never a backtrace. `why LOG RC` says "timed out" for timeout's 124.
why() {
  [ "${2:-}" = 124 ] && printf 'timed out; '
  if grep -q -E '^(Error|thread .* panicked)' "$1"; then
    sed -n -E '/^(Error|thread .* panicked)/,/^(Stack backtrace|note: run with)/p' "$1" \
      | grep -v -E '^(Stack backtrace|note: run with)|^\s*$' | head -8
  else
    tail -2 "$1"
  fi | tr '\n' ' '
}

# Small data set for the checks: two books, 5 % held out (prepares in a second).
cfg="$out/train-check.toml"
sed -e "s#train = \[\"datasets/gutenberg/train\"\]#train = [\"$here/datasets/gutenberg/val\"]#" \
    -e "s#^val = \[\"datasets/gutenberg/val\"\]#val_fraction = 0.05#" \
    -e "s#datasets/gutenberg/tokenizer-4096.json#$here/datasets/gutenberg/tokenizer-4096.json#" \
    -e "s#out = \"runs/data/gutenberg-4096\"#out = \"$out/data\"#" \
    configs/train-tiny.toml > "$cfg"

# (1) Correctness: the same weights and batches give the same losses on both backends.
compare() { # name tol dirA dirB
  python3 - "$@" <<'PY' | tee -a "$table"
import json, sys
name, tol, a, b = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
def losses(d):
    out = {}
    for line in open(d + "/metrics.jsonl"):
        v = json.loads(line)
        if v.get("kind") == "train":
            out[v["step"]] = v["loss"]
    return out
la, lb = losses(a), losses(b)
steps = sorted(set(la) & set(lb))
worst = max(abs(la[s] - lb[s]) / abs(la[s]) for s in steps) if steps else float("nan")
ok = bool(steps) and worst <= tol
print(f"correctness {name}: {len(steps)} steps, max relative loss difference {worst:.2e} (tolerance {tol:g}) {'OK' if ok else 'FAIL'}")
with open(sys.argv[3] + "/../results.jsonl", "a") as f:
    f.write(json.dumps({"check": name, "steps": len(steps), "max_rel_diff": worst, "tolerance": tol, "ok": ok}) + "\n")
sys.exit(0 if ok else 1)
PY
}
train5() { # dir backend precision [attention: auto (default), fused, composed]
  timeout 240 "$bin" train --config "$cfg" --run-dir "$1" --set run.max_steps=5 --set run.eval_every=5 \
    --set run.backend="$2" --set run.precision="$3" --set run.attention="${4:-auto}" > "$1.log" 2>&1
  local rc=$?
  [ $rc = 0 ] || { note "train on $2/$3 failed: $(why "$1.log" $rc)"; return 1; }
}
note "== hyperclone GPU check $(date -u +%FT%TZ) binary $bin"
[ $cpu_only = 0 ] && note "device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null)"
# Attention: `auto` trains with the fused attention (on the GPU: flash forward, recomputing
# backward; on the CPU: the native kernels of crates/model/src/ops/cpu_kernels.rs); the CPU
# runs burn's composed one too, so a GPU mismatch can be told apart from the op's own maths.
train5 "$out/c-cpu" flex f32 || status=1
train5 "$out/c-cpu-composed" flex f32 composed || status=1
compare "f32 cpu fused vs composed attention" 1e-5 "$out/c-cpu" "$out/c-cpu-composed" || status=1
train5 "$out/c-gpu" $gpu f32 || status=1
compare "f32 $gpu vs cpu" 1e-4 "$out/c-gpu" "$out/c-cpu" || status=1
# bf16 = mixed precision (f32 weights, bf16 matmuls): on the GPU and, in the CPU half, on flex.
train5 "$out/c-bf16" $gpu bf16 || status=1
compare "bf16 $gpu vs cpu f32" 1e-2 "$out/c-bf16" "$out/c-cpu" || status=1
# Data parallel (#17): 2 peers against 1 device at the same global batch, without dropout (its
# masks would come from a generator the peers share). On CUDA it needs 2 GPUs; the CPU half runs
# 2 flex peers (threads sharing the CPU).
# The gradients go through burn-collective in this binary (`--all-reduce collective` makes it
# explicit); a second binary built with `--features nccl` (NCCL_BIN, default
# .gpu/hyperclone-nccl), when present, repeats the 2-peer run with NCCL's all-reduce.
train5dp() { # dir backend devices [binary]
  timeout 240 "${4:-$bin}" train --config "$cfg" --run-dir "$1" --set run.max_steps=5 --set run.eval_every=5 \
    --set run.backend="$2" --set model.dropout=0.0 --devices "$3" \
    $([ -z "${4:-}" ] && echo --all-reduce collective) > "$1.log" 2>&1
  local rc=$?
  [ $rc = 0 ] || { note "train on $2 with $3 peer(s) failed: $(why "$1.log" $rc)"; return 1; }
}
gpus=1
[ $cpu_only = 0 ] && gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
nccl_bin="${NCCL_BIN:-.gpu/hyperclone-nccl}"
if [ $cpu_only = 1 ] || [ "$gpus" -ge 2 ]; then
  train5dp "$out/c-dp1" $gpu 1 || status=1
  train5dp "$out/c-dp2" $gpu 2 || status=1
  compare "2 data-parallel peers (burn-collective) vs 1 device on $gpu" 1e-5 "$out/c-dp2" "$out/c-dp1" || status=1
  if [ $cpu_only = 0 ] && [ -x "$nccl_bin" ]; then
    train5dp "$out/c-dp2-nccl" cuda 2 "$nccl_bin" || status=1
    grep -q 'gradients are summed by NCCL' "$out/c-dp2-nccl.log" \
      || { note "the nccl build did not sum the gradients with NCCL (see c-dp2-nccl.log)"; status=1; }
    compare "2 data-parallel peers (NCCL) vs 1 device on cuda" 1e-5 "$out/c-dp2-nccl" "$out/c-dp1" || status=1
  elif [ $cpu_only = 0 ]; then
    note "NCCL: skipped, no binary at $nccl_bin (build one with: cargo build --release --features nccl)"
  fi
else
  note "data parallel: skipped, $gpus GPU on this machine (the 2-peer check needs 2)"
fi
if [ $cpu_only = 0 ]; then
  # The same mixed recipe on the CPU rounds at the same places: a closer reference for CUDA's
  # bf16 kernels than f32, so its difference should come out well under the f32 comparison's.
  train5 "$out/c-cpu-bf16" flex bf16 || status=1
  compare "bf16 cuda vs cpu bf16" 1e-2 "$out/c-bf16" "$out/c-cpu-bf16" || status=1
  train5 "$out/c-bf16p" cuda bf16-pure || status=1
  compare "bf16-pure cuda vs cpu f32" 1e-2 "$out/c-bf16p" "$out/c-cpu" || status=1
  train5 "$out/c-gpu-composed" cuda f32 composed || status=1
  compare "f32 cuda composed attention vs cpu" 1e-4 "$out/c-gpu-composed" "$out/c-cpu" || status=1
fi

# (2) Throughput: ours and the PyTorch reference, same shapes and precision.
fmt_line() { # one JSON line on stdin → a short summary
  python3 -c 'import json,sys
v = json.load(sys.stdin)
mfu = v.get("mfu")
res, rss = v.get("gpu_memory_reserved_bytes"), v.get("peak_memory_bytes")
mem = "%.0f MiB reserved" % (res / 2**20) if res else ("%.0f MiB peak" % (rss / 2**20) if rss else "n/a")
att = " (%s attention%s%s)" % (v["attention"], ", %s cross-entropy" % v["cross_entropy"] if "cross_entropy" in v else "", ", %s norms/GELU" % v["layer_ops"] if "layer_ops" in v else "") if "attention" in v else ""
print("%.0f tok/s, %.1f ms/step, %.2f TFLOP/s, MFU %s, memory %s%s" % (v["tokens_per_s"], v["step_ms"], v["tflops_per_s"], "n/a" if mfu is None else "%.1f%%" % (100 * mfu), mem, att))
if v.get("host_ms") is not None:
    ph = v.get("phases_ms")
    print("        host queues a step in %.1f ms%s" % (v["host_ms"], "; synced phases: forward %.1f, backward %.1f, optimizer %.1f ms" % (ph["forward"], ph["backward"], ph["optimizer"]) if ph else ""))'
}
bench_ours() { # preset batch seq precision steps [attention: auto (default), fused, composed] [cross-entropy: fused (default), composed] [norms/GELU: fused (default), composed]
  local line att="${6:-auto}" ce="${7:-fused}" lo="${8:-fused}" log="$out/bench-$1-B$2-$4-${6:-auto}${7:+-ce-$7}${8:+-ln-$8}.log"
  line=$(timeout 150 "$bin" bench --backend $gpu --preset "$1" --batch "$2" --seq "$3" --precision "$4" --attention "$att" --cross-entropy "$ce" --layer-ops "$lo" --steps "$5" --warmup 2 ${PHASES:+--phases} 2>"$log" | tail -1)
  if [ -n "$line" ]; then echo "$line" >> "$results"; note "ours    $1 B=$2 T=$3 $4: $(echo "$line" | fmt_line)"
  else note "ours    $1 B=$2 $4 $att attention, $ce cross-entropy, $lo norms/GELU: failed ($(why "$log"))"; status=1; fi
}
bench_torch() { # preset batch seq dtype steps
  local line dev=cuda
  [ $cpu_only = 1 ] && dev=cpu
  python3 -c "import torch" 2>/dev/null || { note "pytorch $1 $4: skipped (no torch)"; return 0; }
  line=$(timeout 150 python3 scripts/reference/gpt_bench.py --preset "$1" --batch "$2" --seq "$3" --dtype "$4" --device $dev --steps "$5" --warmup-steps 2 ${TORCH_THREADS:+--threads $TORCH_THREADS} ${PHASES:+--phases} 2>"$out/torch-$1-B$2-$4.log" | tail -1)
  if [ -n "$line" ]; then echo "$line" >> "$results"; note "pytorch $1 B=$2 T=$3 $4: $(echo "$line" | fmt_line)"
  else note "pytorch $1 $4: failed ($(why "$out/torch-$1-B$2-$4.log"))"; fi
}
# Benches of ours with a fused and a composed kernel (attention, cross-entropy or norms/GELU) start from the
# same weights and tokens: their final losses must agree (float rounding only). At full size this
# checks the fused ops where CubeCL may pick other kernels than at the tiny correctness shape.
same_loss() { # preset batch dtype kernel (attention | cross_entropy | layer_ops)
  python3 - "$results" "$@" <<'PY' | tee -a "$table"
import json, sys
path, preset, batch, dtype, kernel = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
runs = {}
for line in open(path):
    r = json.loads(line)
    if r.get("impl") == "hyperclone" and (r.get("preset"), r.get("batch"), r.get("dtype")) == (preset, batch, dtype):
        runs[(r.get("attention"), r.get("cross_entropy", "fused"), r.get("layer_ops", "fused"))] = r
fused = runs.get(("fused", "fused", "fused"))
composed = runs.get({"attention": ("composed", "fused", "fused"),
                     "cross_entropy": ("fused", "composed", "fused"),
                     "layer_ops": ("fused", "fused", "composed")}[kernel])
tol = 1e-2 if dtype != "f32" else 1e-4
what = {"attention": "attention", "cross_entropy": "cross-entropy", "layer_ops": "norms/GELU"}[kernel]
if fused and composed:
    a, b = fused["final_loss"], composed["final_loss"]
    rel = abs(a - b) / abs(b)
    ok = rel <= tol
    print(f"correctness {preset} {dtype} fused vs composed {what} (bench's last loss): {a:.5f} vs {b:.5f}, relative {rel:.1e} (tolerance {tol:g}) {'OK' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)
print(f"correctness {preset} {dtype} fused vs composed {what}: skipped (a bench failed)")
PY
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
}
if [ $cpu_only = 1 ]; then
  bench_ours cpu-tiny 8 64 f32 5 composed
  PHASES=1 bench_ours cpu-tiny 8 64 f32 5 fused
  same_loss cpu-tiny 8 f32 attention
  bench_ours cpu-tiny 8 64 f32 5 fused composed
  same_loss cpu-tiny 8 f32 cross_entropy
  bench_ours cpu-tiny 8 64 f32 5 fused fused composed
  same_loss cpu-tiny 8 f32 layer_ops
  PHASES=1 TORCH_THREADS=2 bench_torch cpu-tiny 8 64 f32 5
else
  # Most wanted first: a lease can end mid-script, and each line of the table is kept as it comes.
  # ours bf16 = mixed (f32 master weights), like PyTorch's autocast `bf16`; `bf16-pure` on both
  # sides keeps weights and optimiser state in bf16.
  # --phases: where the step's time goes (forward, backward, optimizer, and how long the host
  # takes to queue a step), to aim the next change at the largest gap.
  PHASES=1 bench_ours gpt2-124m 8 1024 bf16 10
  PHASES=1 bench_torch gpt2-124m 8 1024 bf16 10
  # The fused attention's effect, measured: the same step with burn's composed attention.
  bench_ours gpt2-124m 8 1024 bf16 10 composed
  same_loss gpt2-124m 8 bf16 attention
  # The norm and GELU ops' effect: the same step with burn's ops.
  bench_ours gpt2-124m 8 1024 bf16 10 auto fused composed
  same_loss gpt2-124m 8 bf16 layer_ops
  bench_ours gpt2-124m 8 1024 bf16-pure 10
  bench_torch gpt2-124m 8 1024 bf16-pure 10
fi

# (3) A short pipeline on the device, with its report.
pipe="$out/pipeline"
sed -e "s#train = \[\"datasets/gutenberg/train\"\]#train = [\"$here/datasets/gutenberg/train\"]#" \
    -e "s#^val = \[\"datasets/gutenberg/val\"\]#val = [\"$here/datasets/gutenberg/val\"]#" \
    -e "s#datasets/gutenberg/tokenizer-4096.json#$here/datasets/gutenberg/tokenizer-4096.json#" \
    -e "s#out = \"runs/data/gutenberg-4096\"#out = \"$out/data-full\"#" \
    -e "s#out = \"runs/tiny\"#out = \"$pipe\"#" configs/tiny.toml > "$out/pipeline.toml"
timeout 240 "$bin" run "$out/pipeline.toml" --set small.run.backend=$gpu --set large.run.backend=$gpu > "$out/pipeline.log" 2>&1
rc=$?
if [ $rc = 0 ]; then
  note "pipeline on $gpu: $(grep -E "speedup total to the baseline's final" "$out/pipeline.log" | head -1)"
else
  note "pipeline on $gpu: FAILED ($(why "$out/pipeline.log" $rc))"; status=1
fi

if [ $cpu_only = 0 ]; then
  # The loss op's effect, measured: the same step with burn's log_softmax and gather.
  bench_ours gpt2-124m 8 1024 bf16 10 auto composed
  same_loss gpt2-124m 8 bf16 cross_entropy
  bench_ours gpt2-124m 8 1024 f32 10
  bench_torch gpt2-124m 8 1024 f32 10
  bench_ours gpt2-350m 8 1024 bf16 5
  bench_torch gpt2-350m 8 1024 bf16 5
  bench_ours gpt2-350m 8 1024 f32 5
  bench_torch gpt2-350m 8 1024 f32 5
  # What the memory the fused attention frees buys: twice the batch.
  bench_ours gpt2-124m 16 1024 bf16 10
  bench_torch gpt2-124m 16 1024 bf16 10
fi
echo
echo "==== summary ($out)"
cat "$table"
exit $status
