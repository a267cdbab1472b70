"""Where a train step's device time goes: a jax.profiler trace of a few steps, summed by kernel.

  python experiments/profile_step.py --out DIR --variant squeezebert-base [--batch 256 --seq 128
      --dtype bfloat16 --attention_impl cudnn --attention_dropout 0 --steps 3]

Writes DIR/profile_<variant>.json: device time per kernel name (top 40) and per category
(GEMM, flash attention, fusions, copies/transposes, RNG...), over `steps` steps after warm-up.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile

import jax

from squeezebert.bench import train

CATEGORIES = (  # first match wins, on the lower-cased kernel name
    ("flash attention (cuDNN)", r"fmha|flash|cudnn|sdpa"),
    ("GEMM", r"gemm|nvjet|cutlass|cublas|xmma|matmul|dot"),
    ("RNG", r"rng|threefry|philox|random"),
    ("copy/transpose", r"copy|transpose|memcpy|memset"),
    ("reduction fusion", r"reduce|reduction"),
    ("loop/input fusion", r"fusion|loop|input"),
)


def category(name: str) -> str:
  low = name.lower()
  for cat, pattern in CATEGORIES:
    if re.search(pattern, low):
      return cat
  return "other"


def device_events(trace: dict):
  """('X' events on device tracks): GPU/TPU pids by their process_name; on CPU every pid."""
  names = {e["pid"]: e.get("args", {}).get("name", "") for e in trace["traceEvents"]
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  dev = {p for p, n in names.items() if re.search(r"/device:(gpu|tpu)", n.lower())}
  for e in trace["traceEvents"]:
    if e.get("ph") == "X" and (not dev or e.get("pid") in dev):
      yield e


def summarize(trace: dict, steps: int) -> dict:
  by_name, by_cat = collections.Counter(), collections.Counter()
  for e in device_events(trace):
    us = float(e.get("dur", 0))
    by_name[e["name"]] += us
    by_cat[category(e["name"])] += us
  total = sum(by_cat.values())
  return dict(steps=steps, device_ms_per_step=total / 1e3 / steps,
              categories={k: dict(ms_per_step=v / 1e3 / steps, share=v / max(total, 1e-9))
                          for k, v in by_cat.most_common()},
              top_kernels=[dict(name=k[:160], ms_per_step=v / 1e3 / steps,
                                share=v / max(total, 1e-9), category=category(k))
                           for k, v in by_name.most_common(40)])


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--variant", default="squeezebert-base")
  ap.add_argument("--batch", type=int, default=256)
  ap.add_argument("--seq", type=int, default=128)
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--attention_impl", default="auto")
  ap.add_argument("--attention_dropout", type=float, default=None)
  ap.add_argument("--layers", type=int, default=None)
  ap.add_argument("--steps", type=int, default=3)
  a = ap.parse_args()
  config = train.bench_config(a.variant, "classification", a.batch, a.seq, a.dtype,
                              attention_impl=a.attention_impl,
                              attention_dropout=a.attention_dropout, layers=a.layers)
  compiled, args, _, _, _ = train.train_step_call(config)
  _, _, state = train.time_steps(compiled, args, warmup=2, iters=1)
  _, batch, rng = args
  tmp = tempfile.mkdtemp(prefix="trace_")
  with jax.profiler.trace(tmp, create_perfetto_trace=True):
    for i in range(a.steps):
      state, metrics = compiled(state, batch, rng, 10 + i)
    jax.block_until_ready((state, metrics))
  path = glob.glob(os.path.join(tmp, "**", "perfetto_trace.json.gz"), recursive=True)[0]
  with gzip.open(path) as f:
    trace = json.load(f)
  out = dict(variant=a.variant, batch=a.batch, seq=a.seq, dtype=a.dtype,
             attention_impl=a.attention_impl, attention_dropout=a.attention_dropout,
             **summarize(trace, a.steps))
  os.makedirs(a.out, exist_ok=True)
  with open(os.path.join(a.out, f"profile_{a.variant}.json"), "w") as f:
    json.dump(out, f, indent=2)
  print(f"{a.variant}: {out['device_ms_per_step']:.1f} ms device time per step")
  for k, v in out["categories"].items():
    print(f"  {k:<26} {v['ms_per_step']:7.2f} ms  {100 * v['share']:5.1f}%")
  for k in out["top_kernels"][:12]:
    print(f"  {k['ms_per_step']:7.2f} ms {100 * k['share']:5.1f}% [{k['category']}] {k['name'][:90]}")


if __name__ == "__main__":
  main()
