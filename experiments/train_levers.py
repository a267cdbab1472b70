"""XLA's own accounting of the training levers: compiled memory and bytes accessed per step.

  python experiments/train_levers.py --out experiments/results/train_levers_cpu \
      [--variants squeezebert-base,bert-base --batch 32 --seq 128 --dtype bfloat16]

Compiles (does not run) the trainer's train step for each lever on the default backend, with
no weights allocated, and records `compiled.memory_analysis()` (temp = activations and
scratch; arguments = parameters + optimizer state + batch) and `compiled.cost_analysis()`
(FLOPs, bytes accessed). Each row changes one switch from the default (attention dropout 0.1
on the manual path, threefry dropout bits, separate q/k/v, cheap finite check, no remat).
Writes levers.json and README-ready table rows (levers.md).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax

from squeezebert.bench import train as train_bench
from squeezebert.bench.flops import xla_cost

LEVERS = [
    ("default", {}),
    ("attention xla, no attn dropout", dict(attention_impl="xla", attention_dropout=0.0)),
    ("fused q/k/v", dict(fused_qkv=True)),
    ("dropout bits unsafe_rbg", dict(rng_impl="unsafe_rbg")),
    ("dropout bits rbg", dict(rng_impl="rbg")),
    ("finite check on every param", dict(finite_check="params")),
    ("remat dots_saveable", dict(remat="dots_saveable")),
    ("remat full", dict(remat="full")),
]


def lever_stats(variant: str, batch: int, seq: int, dtype: str, **kw) -> dict:
  config = train_bench.bench_config(variant, batch=batch, seq=seq, dtype=dtype, **kw)
  step, args = train_bench.abstract_train_step(config)
  t0 = time.perf_counter()
  compiled = step.lower(*args).compile()
  ma = compiled.memory_analysis()
  cost = xla_cost(compiled)
  return dict(compile_s=time.perf_counter() - t0,
              temp_bytes=int(ma.temp_size_in_bytes),
              argument_bytes=int(ma.argument_size_in_bytes),
              flops=cost.get("flops"), bytes_accessed=cost.get("bytes_accessed"))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--variants", default="squeezebert-base,bert-base")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--seq", type=int, default=128)
  ap.add_argument("--dtype", default="bfloat16")
  a = ap.parse_args()
  os.makedirs(a.out, exist_ok=True)
  rows = {}
  for variant in a.variants.split(","):
    for name, kw in LEVERS:
      rows[f"{variant}/{name}"] = r = lever_stats(variant, a.batch, a.seq, a.dtype, **kw)
      print(variant, name, json.dumps(r), flush=True)
  meta = dict(backend=jax.default_backend(), jax_version=jax.__version__, batch=a.batch,
              seq=a.seq, dtype=a.dtype)
  with open(os.path.join(a.out, "levers.json"), "w") as f:
    json.dump(dict(meta, rows=rows), f, indent=2)
  lines = ["| model | lever | temp MB | vs default | bytes accessed GB | vs default | XLA GFLOP |",
           "|---|---|---|---|---|---|---|"]
  for key, r in rows.items():
    variant, name = key.split("/", 1)
    d = rows[f"{variant}/default"]
    lines.append(f"| {variant} | {name} | {r['temp_bytes'] / 1e6:.0f} | "
                 f"{r['temp_bytes'] / d['temp_bytes']:.2f}x | {r['bytes_accessed'] / 1e9:.2f} | "
                 f"{r['bytes_accessed'] / d['bytes_accessed']:.2f}x | {r['flops'] / 1e9:.0f} |")
  with open(os.path.join(a.out, "levers.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
