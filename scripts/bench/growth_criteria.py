#!/usr/bin/env python3
"""Checks an experiment folder of the growth benchmark against the bars it was sized for
(issue #14): for every seed
  (a) the baseline's final val loss is at least 0.05 nats below the continued-small control's
      val loss at the same total FLOPs (the wide model is the right model at that budget), and
      at least 0.1 below the small run's final val loss;
  (b) the small run costs less than the baseline (FLOPs and device-hours);
  (c) the whole experiment (every stage of every seed) takes at most about 150 minutes.
Prints a Markdown table and exits 1 when a bar is missed.

    python3 scripts/bench/growth_criteria.py runs/growth-benchmark
"""
import glob
import json
import os
import sys


def last(run, kind="eval"):
    """The last line of `kind` per step (re-logged steps: the last one wins)."""
    by_step = {}
    with open(os.path.join(run, "metrics.jsonl")) as f:
        for line in f:
            if not line.strip():
                continue
            v = json.loads(line)
            if v.get("kind") == kind:
                by_step[v["step"]] = v
    return by_step[max(by_step)]


def main():
    exp = sys.argv[1] if len(sys.argv) > 1 else "runs/growth-benchmark"
    seeds = sorted(glob.glob(os.path.join(exp, "seed-*")), key=lambda p: int(p.rsplit("-", 1)[1]))
    if not seeds:
        seeds = [exp]
    ok = True
    total_wall = 0.0
    print("| seed | baseline final | control at baseline FLOPs | control − baseline (≥ 0.05) "
          "| small final | small − baseline (≥ 0.1) | small / baseline FLOPs | "
          "small / baseline device-hours |")
    print("|---|---|---|---|---|---|---|---|")
    for root in seeds:
        base = last(os.path.join(root, "baseline"))
        small = last(os.path.join(root, "small"))
        control = last(os.path.join(root, "control"))
        gap_control = control["val_loss"] - base["val_loss"]
        gap_small = small["val_loss"] - base["val_loss"]
        flops_ratio = small["flops"] / base["flops"]
        hours_ratio = small["device_hours"] / base["device_hours"]
        spent = (small["flops"] + control["flops"]) / base["flops"]
        bars = [gap_control >= 0.05, gap_small >= 0.1, flops_ratio < 1.0, hours_ratio < 1.0]
        ok &= all(bars)
        mark = lambda good: "" if good else " **missed**"
        print(f"| {os.path.basename(root)} | {base['val_loss']:.4f} | {control['val_loss']:.4f} "
              f"(small + control = {spent:.3f} × baseline FLOPs) | {gap_control:+.4f}{mark(bars[0])} "
              f"| {small['val_loss']:.4f} | {gap_small:+.4f}{mark(bars[1])} "
              f"| {flops_ratio:.3f}{mark(bars[2])} | {hours_ratio:.3f}{mark(bars[3])} |")
        for stage in ("small", "large", "baseline", "control"):
            total_wall += last(os.path.join(root, stage), "eval")["wall_s"]
        expand = os.path.join(root, "expand", "expand.json")
        if os.path.exists(expand):
            with open(expand) as f:
                total_wall += json.load(f).get("wall_s", 0.0)
    minutes = total_wall / 60
    within = minutes <= 150
    ok &= within
    print()
    print(f"Training wall time of every stage of every seed: {minutes:.1f} min "
          f"(bar: about 150){'' if within else ' **missed**'}; evaluations included, warm-up "
          f"steps and data preparation not.")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
