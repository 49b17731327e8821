#!/usr/bin/env bash
# Tunes the peak learning rate of the growth benchmark's two wide arms with the same budget:
# three values each, at full length, on a seed the benchmark does not report (11 by default),
# from one shared small run and expansion. Prints, per arm and learning rate, the final val loss
# and (cloned arm) the FLOPs and device-hours at which the cloned run first reached the best
# baseline's final val loss.
#
#   scripts/bench/tune_growth_lr.sh [CONFIG] [OUT]
#     CONFIG  default configs/growth-benchmark.toml
#     OUT     default runs/growth-tune
#   env: HC (the hyperclone binary, default target/release/hyperclone), SEED (default 11),
#        CLONED_LRS (default "1e-3 2e-3 3e-3"), BASELINE_LRS (default "2e-3 3e-3 5e-3")
#
# Resumable: finished stages are skipped on a re-run.
set -euo pipefail
cd "$(dirname "$0")/../.."
CONFIG=${1:-configs/growth-benchmark.toml}
OUT=${2:-runs/growth-tune}
HC=${HC:-target/release/hyperclone}
SEED=${SEED:-11}
CLONED_LRS=${CLONED_LRS:-"1e-3 2e-3 3e-3"}
BASELINE_LRS=${BASELINE_LRS:-"2e-3 3e-3 5e-3"}

run() { "$HC" run "$CONFIG" --set "experiment.seeds=[$SEED]" --set experiment.baseline=true \
  --set control.enabled=false "$@"; }

# The shared small run and expansion.
base="$OUT/base"
run --set "experiment.out=\"$base\"" --stage small
run --set "experiment.out=\"$base\"" --stage expand

# Each learning rate in its own experiment folder that starts from copies of the shared stages.
arm() { # arm NAME STAGE KEY LR
  local dir="$OUT/$1-lr$4"
  mkdir -p "$dir/seed-$SEED"
  for stage in small expand; do
    [ -d "$dir/seed-$SEED/$stage" ] || cp -r "$base/seed-$SEED/$stage" "$dir/seed-$SEED/$stage"
  done
  run --set "experiment.out=\"$dir\"" --set "$3=$4" --stage "$2"
}
for lr in $BASELINE_LRS; do arm baseline baseline large.optimizer.lr "$lr"; done
for lr in $CLONED_LRS; do arm cloned large large.cloned.optimizer.lr "$lr"; done

python3 - "$OUT" "$SEED" <<'PY'
import glob, json, os, sys
out, seed = sys.argv[1], sys.argv[2]

def evals(run):
    path = os.path.join(run, "metrics.jsonl")
    lines = [json.loads(l) for l in open(path) if l.strip()]
    by_step = {}
    for l in lines:
        if l.get("kind") == "eval":
            by_step[l["step"]] = l
    return [by_step[s] for s in sorted(by_step)]

def crossing(points, target, key):
    prev = None
    for p in points:
        if p["val_loss"] <= target:
            if p["step"] == 0:
                return 0.0
            if prev is None:
                return p[key]
            x0, y0, x1, y1 = prev[key], prev["val_loss"], p[key], p["val_loss"]
            return x0 + (x1 - x0) * (y0 - target) / (y0 - y1)
        prev = p
    return None

runs = {}
for d in sorted(glob.glob(os.path.join(out, "*-lr*"))):
    name = os.path.basename(d)
    stage = "baseline" if name.startswith("baseline") else "large"
    path = os.path.join(d, f"seed-{seed}", stage)
    if os.path.exists(os.path.join(path, "metrics.jsonl")):
        runs[name] = evals(path)
base = {k: v for k, v in runs.items() if k.startswith("baseline")}
best = min(base, key=lambda k: base[k][-1]["val_loss"])
target = base[best][-1]["val_loss"]
print(f"best baseline: {best}, final val loss {target:.4f} (the target below)")
print(f"{'run':<20} {'final val loss':>14} {'FLOPs to target':>16} {'device-hours to target':>23}")
for name, pts in runs.items():
    f = crossing(pts, target, "flops") if name.startswith("cloned") else None
    h = crossing(pts, target, "device_hours") if name.startswith("cloned") else None
    fs = "n/a" if not name.startswith("cloned") else ("not reached" if f is None else f"{f:.3e}")
    hs = "n/a" if not name.startswith("cloned") else ("not reached" if h is None else f"{h:.5f}")
    print(f"{name:<20} {pts[-1]['val_loss']:>14.4f} {fs:>16} {hs:>23}")
PY
