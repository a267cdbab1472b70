"""Robustness of several trained models side by side: noise curves and HotFlip success.

  python experiments/robustness.py --root /tmp/robust_sst2 \
      --model squeezebert=RUNS/variants_sst2/squeezebert/seed0 \
      --model bert_like=RUNS/variants_sst2/bert_like/seed0 \
      --model squeezebert_int8=RUNS/qat_sst2/fp32/seed0@RUNS/qat_sst2/ptq_w8a8/seed0/int8 \
      --rates 0.05,0.1,0.2 --budget 3

Each --model is NAME=WORKDIR or NAME=WORKDIR@MODEL_DIR (evaluate MODEL_DIR, e.g. the run's
int8 model, with the workdir's data config; the attack transfers the float model's
gradients). Every model's result is kept in ROOT/NAME.json (a finished one is not rerun);
ROOT gets robustness.md / robustness.csv and robustness.png (dev accuracy vs noise rate, one
panel per noise type, plus HotFlip success rates).
"""

from __future__ import annotations

import csv
import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from squeezebert.robustness import evaluate  # noqa: E402


def define_flags():
  flags.DEFINE_string("root", None, "output directory", required=True)
  flags.DEFINE_multi_string("model", [], "NAME=WORKDIR[@MODEL_DIR]")
  flags.DEFINE_string("attack", ",".join(evaluate.ATTACKS), "noise types and/or hotflip")
  flags.DEFINE_string("rates", "0.05,0.1,0.2", "noise rates")
  flags.DEFINE_integer("budget", 3, "HotFlip substitutions per example")
  flags.DEFINE_integer("seed", 0, "noise seed")
  flags.DEFINE_integer("limit", 0, ">0: first N dev examples only")


FLAGS = flags.FLAGS


def parse_models(items: list[str]) -> dict[str, tuple[str, str | None]]:
  out = {}
  for item in items:
    name, eq, spec = item.partition("=")
    if not eq or not name or not spec:
      raise ValueError(f"--model expects NAME=WORKDIR[@MODEL_DIR], got {item!r}")
    if name in out:
      raise ValueError(f"--model name {name!r} given twice")
    wd, _, model_dir = spec.partition("@")
    out[name] = (wd, model_dir or None)
  if not out:
    raise ValueError("give at least one --model NAME=WORKDIR")
  return out


def run_all(root, models, attacks, rates, seed=0, budget=3, limit=0) -> dict[str, dict]:
  os.makedirs(root, exist_ok=True)
  results = {}
  for name, (wd, model_dir) in models.items():
    path = os.path.join(root, f"{name}.json")
    if os.path.exists(path):
      with open(path) as f:
        results[name] = json.load(f)
      continue
    res = evaluate.run(wd, attacks, rates, seed=seed, budget=budget, limit=limit,
                       model_dir=model_dir)
    evaluate.write(res, path)
    results[name] = res
  return results


def table(results: dict[str, dict]) -> tuple[str, list[dict]]:
  rows = []
  for name, r in results.items():
    row = dict(model=name, kind=r["model_kind"], examples=r["examples"], clean=r["clean_accuracy"])
    for kind, by_rate in r["noise"].items():
      for rate, acc in by_rate.items():
        row[f"{kind}@{rate}"] = acc
    if "hotflip" in r:
      row["hotflip_success"] = r["hotflip"]["attack_success_rate"]
      row["hotflip_accuracy"] = r["hotflip"]["accuracy_under_attack"]
    rows.append(row)
  cols = list(rows[0])
  for row in rows[1:]:
    cols += [c for c in row if c not in cols]
  pct = lambda v: f"{100 * v:.1f}" if isinstance(v, float) else str(v)  # noqa: E731
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(pct(row.get(c, "-")) for c in cols) + " |" for row in rows]
  return "\n".join(lines) + "\n", rows


def plot(results: dict[str, dict], path: str) -> str:
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  kinds = list(next(iter(results.values()))["noise"])
  has_attack = any("hotflip" in r for r in results.values())
  n = len(kinds) + has_attack
  cols = 4
  rows = (n + cols - 1) // cols
  fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
  for ax, kind in zip(axes.flat, kinds):
    for name, r in results.items():
      rates = [0.0] + [float(x) for x in r["noise"][kind]]
      accs = [r["clean_accuracy"]] + list(r["noise"][kind].values())
      ax.plot(rates, [100 * a for a in accs], marker="o", label=name)
    ax.set_title(kind)
    ax.set_xlabel("noise rate")
    ax.set_ylabel("dev accuracy (%)")
    ax.grid(alpha=0.3)
  if has_attack:
    ax = axes.flat[len(kinds)]
    names = [k for k, r in results.items() if "hotflip" in r]
    ax.bar(range(len(names)), [100 * results[k]["hotflip"]["attack_success_rate"] for k in names])
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_title(f"HotFlip success (budget {results[names[0]]['hotflip']['budget']})")
    ax.set_ylabel("% of correct examples flipped")
  for ax in list(axes.flat)[n:]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def main(argv):
  del argv
  models = parse_models(FLAGS.model)
  rates = [float(x) for x in FLAGS.rates.split(",") if x]
  results = run_all(FLAGS.root, models, [a for a in FLAGS.attack.split(",") if a], rates,
                    FLAGS.seed, FLAGS.budget, FLAGS.limit)
  md, rows = table(results)
  with open(os.path.join(FLAGS.root, "robustness.md"), "w") as f:
    f.write(md)
  with open(os.path.join(FLAGS.root, "robustness.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    w.writeheader()
    w.writerows(rows)
  print(md)
  print(plot(results, os.path.join(FLAGS.root, "robustness.png")))


if __name__ == "__main__":
  define_flags()
  app.run(main)
