"""The device check: training and inference speed on a GPU/TPU, and a short real fine-tune.

  python experiments/accelerator_check.py --out DIR [--budget_s 420] [--glue_dir GLUE]

Runs, in priority order, until the time budget is spent (an item that fails is recorded and
the next one runs):
  1. matmul ceiling: a large bf16 dot, the device's measured FLOP/s;
  2. train step (python -m squeezebert.bench --mode train) of squeezebert-base and bert-base,
     bf16, batch 256 x 128, AdamW, attention dropout off and cuDNN flash attention;
  3. a 200-step SST-2 fine-tune of squeezebert-base through the trainer (bf16; GLUE TSVs
     from --glue_dir / $GLUE_DIR, or TFDS);
  4. inference bench (fp32 / bf16 / int8) of squeezebert-base, batch 128 x 128;
  5. more train steps: the default attention dropout 0.1 (auto keeps the manual path), the
     memory and bandwidth levers (fused q/k/v, unsafe_rbg dropout, remat) and the LAMB
     pretraining step.
Writes DIR/accelerator_check.json (every result) and DIR/accelerator_check.md (tables).
experiments/accelerator_check.sh wraps it for a bare machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

import jax.numpy as jnp

from squeezebert.bench import device as device_lib
from squeezebert.bench import inference, train
from squeezebert.model.layers import resolve_attention_impl

TRAIN = dict(batch=256, seq=128, dtype="bfloat16", warmup=3, iters=10)
# "flash": attention dropout off and attention_impl=cudnn asked for explicitly (on a TPU, or
# where cuDNN refuses, the row records the error); "default": dropout 0.1, where auto keeps
# the manual attention path.
FLASH = dict(attention_dropout=0.0, attention_impl="cudnn")
TRAIN_ITEMS = [
    ("sqb/flash", dict(variant="squeezebert-base", **FLASH)),
    ("bert/flash", dict(variant="bert-base", **FLASH)),
    ("sqb/default", dict(variant="squeezebert-base")),
    ("bert/default", dict(variant="bert-base")),
    ("sqb/flash+fused_qkv+rbg", dict(variant="squeezebert-base", fused_qkv=True,
                                     rng_impl="unsafe_rbg", **FLASH)),
    ("bert/flash+fused_qkv+rbg", dict(variant="bert-base", fused_qkv=True,
                                      rng_impl="unsafe_rbg", **FLASH)),
    ("sqb/default+rbg", dict(variant="squeezebert-base", rng_impl="unsafe_rbg")),
    ("sqb/flash+remat_dots", dict(variant="squeezebert-base", remat="dots_saveable", **FLASH)),
    ("sqb/flash+remat_full", dict(variant="squeezebert-base", remat="full", **FLASH)),
    ("sqb/pretrain_lamb", dict(variant="squeezebert-base", head="pretraining",
                               optimizer="lamb", **FLASH)),
]
# --smoke (a CPU dry run of this script): tiny shapes, the same code paths (no cuDNN).
SMOKE_TRAIN = dict(batch=8, seq=32, dtype="bfloat16", warmup=1, iters=2, layers=1)
SMOKE_VARIANT = {"squeezebert-base": "squeezebert-small", "bert-base": "bert-small"}


def matmul_ceiling(n: int = 8192) -> dict:
  out = {}
  for dt in ("bfloat16", "float32"):
    out[dt] = device_lib.measure_matmul_peak(dt, n=n, repeats=10)
  return out


def finetune(glue_dir: str | None, steps: int = 200, extra=()) -> dict:
  """The real trainer on SST-2 (subprocess: its own process, its own console output)."""
  workdir = tempfile.mkdtemp(prefix="accel_sst2_")  # a fresh run, never a finished one
  cmd = [sys.executable, "-m", "squeezebert.main",
         "--config=configs/glue.py:task=sst2,variant=squeezebert-base,dtype=bfloat16",
         f"--config.num_train_steps={steps}", f"--config.eval_every_steps={steps}",
         "--config.log_every_steps=50", "--config.progress_bar=False", f"--workdir={workdir}",
         *extra]
  if glue_dir:
    cmd += ["--config.data.source=tsv", f"--config.data.tsv_dir={glue_dir}"]
  t0 = time.time()
  p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  wall = time.time() - t0
  tail = (p.stdout + p.stderr)[-3000:]
  if p.returncode:
    raise RuntimeError(f"fine-tune exited {p.returncode}:\n{tail}")
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    final = json.load(f)
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  train_rows = [r for r in rows if r["split"] == "train"]
  return dict(command=" ".join(cmd), wall_s=wall, final=final,
              steps_per_sec=[r.get("steps_per_sec") for r in train_rows],
              train_loss=[r.get("loss") for r in train_rows])


def table(results: dict) -> str:
  lines = ["| train step (bf16, 256 x 128) | attention | ms/step | seq/s | model TFLOP/s | MFU "
           "| compiled temp GiB | compile s |", "|---|---|---|---|---|---|---|---|"]
  for name, r in results.items():
    if not name.startswith("train/") or "error" in r or not isinstance(r, dict):
      continue
    mem = r["memory"].get("compiled", {})
    lines.append(f"| {name[6:]} | {r['attention']['train']} | {1e3 * r['step_s']['median']:.1f} "
                 f"| {r['seq_per_s']:.0f} | {r['tflops_per_s']:.0f} | "
                 f"{100 * (r['mfu'] or 0):.1f}% | {mem.get('temp', 0) / 2**30:.2f} | "
                 f"{r['compile_s']:.0f} |")
  sq, bt = results.get("train/sqb/flash", {}), results.get("train/bert/flash", {})
  if "step_s" in sq and "step_s" in bt:
    lines.append(f"\nsqueezebert-base step is {bt['step_s']['median'] / sq['step_s']['median']:.2f}x "
                 "faster than bert-base's (flash rows)")
  q = results.get("inference/quant", {})
  if "table" in q:
    lines.append("\n| inference squeezebert-base (128 x 128) | ms/batch | ms/seq | vs fp32 |\n"
                 "|---|---|---|---|")
    for k, t in q["table"].items():
      lines.append(f"| {k} | {t['latency_ms']:.2f} | {t['ms_per_seq']:.3f} | "
                   f"{t['speedup_vs_fp32']:.2f}x |")
  ft = results.get("finetune/sst2", {})
  if "final" in ft:
    lines.append(f"\nSST-2 fine-tune, squeezebert-base from scratch, bf16, 200 steps x 32: dev "
                 f"accuracy {ft['final'].get('accuracy', float('nan')):.4f}, wall "
                 f"{ft['wall_s']:.0f} s (incl. start-up, tokenization, compile), steps/s "
                 f"{ft['steps_per_sec']}")
  errors = {k: r["error"].strip().splitlines()[-1] for k, r in results.items()
            if isinstance(r, dict) and "error" in r}
  if errors:
    lines.append("\nfailed: " + json.dumps(errors, indent=1))
  return "\n".join(lines)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--budget_s", type=float, default=420.0)
  ap.add_argument("--glue_dir", default=os.environ.get("GLUE_DIR"))
  ap.add_argument("--only", default="", help="comma-separated item names (default: all)")
  ap.add_argument("--smoke", action="store_true", help="tiny shapes: a CPU dry run")
  args = ap.parse_args()
  os.makedirs(args.out, exist_ok=True)
  t_start = time.time()
  results = {"environment": device_lib.environment()}
  print(json.dumps(results["environment"]), flush=True)

  def save():
    with open(os.path.join(args.out, "accelerator_check.json"), "w") as f:
      json.dump(results, f, indent=2, default=str)
    try:
      text = table(results)
    except Exception:  # the JSON above holds everything; a table bug must not stop the run
      text = "table failed:\n" + traceback.format_exc()
    with open(os.path.join(args.out, "accelerator_check.md"), "w") as f:
      f.write(text + "\n")

  results["attention_auto_bf16"] = resolve_attention_impl(
      "auto", dropout_active=False, dtype=jnp.bfloat16)
  sizes, variant = TRAIN, (lambda v: v)
  ft = dict(steps=200)
  inf = dict(variant="squeezebert-base", batch=128, seq=128, warmup=2, iters=10)
  if args.smoke:
    sizes, variant = SMOKE_TRAIN, SMOKE_VARIANT.get
    ft = dict(steps=4, extra=("--config.data.train_limit=256", "--config.data.eval_limit=64",
                              "--config.model.num_hidden_layers=1"))
    inf = dict(variant="tiny", batch=4, seq=32, warmup=0, iters=1)

  def train_item(kw):
    kw = dict(kw, variant=variant(kw["variant"]))
    if args.smoke and kw.get("attention_impl") == "cudnn":
      kw["attention_impl"] = "xla"
    return lambda: train.run_train_benchmark(**{**sizes, **kw})

  items = [("ceiling/matmul", lambda: matmul_ceiling(512 if args.smoke else 8192))]
  items += [(f"train/{n}", train_item(kw)) for n, kw in TRAIN_ITEMS[:2]]
  items += [("finetune/sst2", lambda: finetune(args.glue_dir, **ft))]
  items += [("inference/quant", lambda: inference.compare_quant(
      inf["variant"], inf["batch"], inf["seq"], "int8", warmup=inf["warmup"],
      iters=inf["iters"]))]
  items += [(f"train/{n}", train_item(kw)) for n, kw in TRAIN_ITEMS[2:]]
  only = set(filter(None, args.only.split(",")))
  for name, fn in items:
    if only and name not in only:
      continue
    elapsed = time.time() - t_start
    if elapsed > args.budget_s:
      results[name] = {"error": f"skipped: budget {args.budget_s:.0f}s spent"}
      continue
    t0 = time.time()
    try:
      r = fn()
      results[name] = dict(r, item_wall_s=time.time() - t0)
      if name.startswith("train/"):
        print(train.summary(r), flush=True)
      else:
        print(name, json.dumps(r, default=str)[:600], flush=True)
    except Exception:  # recorded; the next item still runs
      results[name] = {"error": traceback.format_exc()}
      print(name, "FAILED\n", results[name]["error"][-2000:], flush=True)
    save()
  save()
  print(table(results), flush=True)
  print(f"total {time.time() - t_start:.0f}s", flush=True)


if __name__ == "__main__":
  main()
