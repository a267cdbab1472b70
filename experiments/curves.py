"""Training curves of one or more workdirs (their metrics.jsonl) as a PNG and a CSV.

  python experiments/curves.py --out experiments/results/pretrain_sst2 \
      --workdir kd=/runs/pretrain_kd --workdir mlm=/runs/pretrain \
      --metric eval/mlm_loss --metric train/mlm_loss --metric train/hidden_loss

A metric is SPLIT/NAME (split train or eval, as logged by the trainer). Each metric gets
one panel with one line per workdir; curves.csv holds every plotted point.
"""

from __future__ import annotations

import csv
import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments.report import _pyplot  # noqa: E402


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir}: no metrics.jsonl (not a training workdir?)")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def series(rows: list[dict], metric: str) -> list[tuple[int, float]]:
  split, _, name = metric.partition("/")
  if split not in ("train", "eval") or not name:
    raise ValueError(f"metric {metric!r}: expected train/NAME or eval/NAME")
  # A resumed run logs some steps twice: the last value of a step wins.
  points = {r["step"]: float(r[name]) for r in rows if r.get("split") == split and name in r}
  return sorted(points.items())


def plot(runs: dict[str, str], metrics: list[str], out_dir: str) -> dict:
  os.makedirs(out_dir, exist_ok=True)
  data = {(label, m): series(read_metrics(wd), m) for label, wd in runs.items() for m in metrics}
  if not any(data.values()):
    raise ValueError(f"none of {metrics} was logged in {list(runs.values())}")
  with open(os.path.join(out_dir, "curves.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["run", "metric", "step", "value"])
    for (label, m), pts in data.items():
      w.writerows([label, m, s, v] for s, v in pts)
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.4), squeeze=False)
  for ax, m in zip(axes[0], metrics):
    for label in runs:
      pts = data[(label, m)]
      if pts:
        ax.plot(*zip(*pts), marker="o" if m.startswith("eval/") else None, label=label)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.set_title(m)
  axes[0][0].legend()
  png = os.path.join(out_dir, "curves.png")
  fig.tight_layout()
  fig.savefig(png, dpi=120)
  plt.close(fig)
  return {f"{label}:{m}": pts for (label, m), pts in data.items()}


FLAGS = flags.FLAGS
flags.DEFINE_multi_string("workdir", [], "LABEL=WORKDIR (repeatable)")
flags.DEFINE_multi_string("metric", ["eval/mlm_loss"], "SPLIT/NAME (repeatable)")
flags.DEFINE_string("out", None, "output directory (curves.png, curves.csv)")


def main(argv):
  del argv
  if not FLAGS.workdir or not FLAGS.out:
    raise app.UsageError("give --workdir LABEL=DIR (one or more) and --out DIR")
  runs = {}
  for spec in FLAGS.workdir:
    label, sep, wd = spec.partition("=")
    if not sep:
      label, wd = os.path.basename(os.path.normpath(spec)), spec
    runs[label] = wd
  out = plot(runs, FLAGS.metric, FLAGS.out)
  for k, pts in out.items():
    if pts:
      print(f"{k}: " + ", ".join(f"{s}:{v:.4g}" for s, v in pts))
  print(f"wrote {FLAGS.out}/curves.png and curves.csv")


if __name__ == "__main__":
  app.run(main)
