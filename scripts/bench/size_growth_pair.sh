#!/usr/bin/env bash
# Sizing a growth benchmark: trains a GPT of the given width on the shipped Gutenberg corpus for
# a given number of steps (cosine schedule, 100 warm-up steps, batch 32 × 128 tokens, 4 layers)
# and prints its final val loss, FLOPs and step time. Run the small and the wide model of a pair
# for the same FLOPs (steps ∝ 1 / FLOPs per token): the wide model is the right model at that
# budget when it ends clearly below the small one.
#
#   scripts/bench/size_growth_pair.sh NAME VOCAB D_MODEL N_HEAD D_FF LR STEPS [OUT]
#   e.g. the pair of configs/growth-benchmark.toml at 2.4e13 FLOPs:
#     scripts/bench/size_growth_pair.sh w64 1024 64 4 256 3e-3 2872
#     scripts/bench/size_growth_pair.sh s32 1024 32 2 128 4e-3 8104
#   env: HC (the hyperclone binary, default target/release/hyperclone)
set -euo pipefail
cd "$(dirname "$0")/../.."
name=$1 vocab=$2 d=$3 nh=$4 ff=$5 lr=$6 steps=$7 out=${8:-runs/sizing}
HC=${HC:-target/release/hyperclone}
mkdir -p "$out"
cfg="$out/$name.toml"
cat > "$cfg" <<EOT
[model]
preset = "cpu-small"
vocab_size = $vocab
d_model = $d
n_head = $nh
d_ff = $ff
[data]
train = ["datasets/gutenberg/train"]
val = ["datasets/gutenberg/val"]
tokenizer = { train_bpe = { vocab_size = $vocab } }
out = "runs/data/gutenberg-bpe$vocab"
[optimizer]
lr = $lr
weight_decay = 0.1
[schedule]
warmup_steps = 100
decay = "cosine"
min_lr_ratio = 0.1
[run]
seed = 1
batch_size = 32
seq_len = 128
max_steps = $steps
eval_every = $(( steps / 10 > 0 ? steps / 10 : 1 ))
eval_batches = 16
checkpoint_every = 0
log_every = 100
EOT
"$HC" train --config "$cfg" --run-dir "$out/$name" > "$out/$name.log" 2>&1
python3 - "$out/$name" <<'PY'
import json, statistics, sys
run = sys.argv[1]
lines = [json.loads(l) for l in open(run + "/metrics.jsonl") if l.strip()]
ev = [l for l in lines if l.get("kind") == "eval"]
tr = [l for l in lines if l.get("kind") == "train"]
step = statistics.median(t["step_time_s"] for t in tr)
print(f"{run.rsplit('/', 1)[-1]}: final val loss {ev[-1]['val_loss']:.4f}, {ev[-1]['flops']:.3e} FLOPs, "
      f"{tr[-1]['step']} steps, median step {step * 1e3:.1f} ms")
PY
