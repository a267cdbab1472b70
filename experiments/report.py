"""Sweep workdirs -> markdown table + CSV (mean +/- std over seeds) + matplotlib figures.

  python experiments/report.py --root /tmp/lr_sst2 [--out DIR] [--title "..."]

Reads every `<root>/<cell>/seed<k>/cell.json` (experiments/common.py) and writes to --out
(default: the root):
  results.md    one row per cell: metric mean +/- std (n seeds), params, analytic GFLOPs/seq,
                latency ms/seq, size MB, train time, plus the sweep's own columns
  results.csv   the same rows; cells.csv: one row per (cell, seed)
  metric_vs_latency.png (with the Pareto front), metric_vs_params.png, and when the sweep
  varies them metric_vs_layers.png and qat_bits.png (bars by method and weight bits)
notebooks/results.ipynb uses the same functions.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil
import sys

import numpy as np

STAT_COLS = ("params", "flops_per_seq", "latency_ms_per_seq", "size_mb", "train_time_s")
SKIP_COLS = {"cell", "seed", "task", "metric_name", "metric", "metrics", "overrides", "workdir",
             "bench", *STAT_COLS}


def load_results(root: str) -> list[dict]:
  """Every finished (cell, seed) of a sweep, in cell order of sweep.json when present."""
  paths = sorted(glob.glob(os.path.join(root, "*", "seed*", "cell.json")))
  if not paths:
    raise FileNotFoundError(f"no finished cells (*/seed*/cell.json) under {root}")
  rows = []
  for p in paths:
    with open(p) as f:
      rows.append(json.load(f))
  order = {}
  sweep = os.path.join(root, "sweep.json")
  if os.path.exists(sweep):
    with open(sweep) as f:
      order = {c: i for i, c in enumerate(json.load(f)["cells"])}
  rows.sort(key=lambda r: (order.get(r["cell"], len(order)), r["cell"], r["seed"]))
  return rows


def aggregate(rows: list[dict]) -> list[dict]:
  """One dict per cell: metric mean/std/n over seeds, mean of the cost columns, and the
  cell's own columns (layers, init, distill, quant, groups, family...)."""
  cells: dict[str, list[dict]] = {}
  for r in rows:
    cells.setdefault(r["cell"], []).append(r)
  out = []
  for name, rs in cells.items():
    m = np.array([r["metric"] for r in rs], dtype=float)
    agg = dict(cell=name, task=rs[0]["task"], metric_name=rs[0]["metric_name"],
               metric_mean=float(m.mean()), metric_std=float(m.std(ddof=1)) if len(m) > 1 else 0.0,
               n_seeds=len(rs), seeds=",".join(str(r["seed"]) for r in rs))
    for c in STAT_COLS:
      vals = [r[c] for r in rs if r.get(c) is not None]
      agg[c] = float(np.mean(vals)) if vals else None
    for k, v in rs[0].items():
      if k not in SKIP_COLS and k not in agg:
        agg[k] = v
    out.append(agg)
  return out


def _fmt(v, nd=2):
  if v is None:
    return "-"
  if isinstance(v, float):
    return f"{v:.{nd}f}"
  return str(v)


def markdown(agg: list[dict], title: str = "") -> str:
  extra = [k for k in agg[0] if k not in ("cell", "task", "metric_name", "metric_mean",
                                          "metric_std", "n_seeds", "seeds", *STAT_COLS)]
  scale = 100.0 if all(0.0 <= a["metric_mean"] <= 1.0 for a in agg) else 1.0
  unit = " (%)" if scale == 100.0 else ""
  head = (["cell", f"{agg[0]['metric_name']}{unit} mean ± std", "seeds"] + extra
          + ["params (M)", "GFLOPs/seq", "latency ms/seq", "size MB", "train+eval s"])
  lines = []
  if title:
    lines += [f"### {title}", ""]
  lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for a in agg:
    row = [a["cell"], f"{scale * a['metric_mean']:.2f} ± {scale * a['metric_std']:.2f}",
           str(a["n_seeds"])]
    row += [_fmt(a.get(k)) for k in extra]
    row += [_fmt(None if a["params"] is None else a["params"] / 1e6, 3),
            _fmt(None if a["flops_per_seq"] is None else a["flops_per_seq"] / 1e9, 4),
            _fmt(a["latency_ms_per_seq"], 3), _fmt(a["size_mb"]), _fmt(a["train_time_s"], 0)]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: str):
  keys = []
  for r in rows:
    keys += [k for k in r if k not in keys and not isinstance(r[k], dict)]
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in rows:
      w.writerow({k: r.get(k) for k in keys})


def pareto(xs, ys) -> list[int]:
  """Indices on the front: lower x (cost) and higher y (metric) are better."""
  idx = sorted(range(len(xs)), key=lambda i: (xs[i], -ys[i]))
  front, best = [], -np.inf
  for i in idx:
    if ys[i] > best:
      front.append(i)
      best = ys[i]
  return front


def _pyplot():
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  return plt


def _finish(fig, ax, path, ylabel, title):
  """Shared ending of every figure: labels, grid, save, close; returns the path."""
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  _pyplot().close(fig)
  return path


def _scatter(agg, xkey, xlabel, path, logx=False, front=False, title=""):
  plt = _pyplot()
  pts = [a for a in agg if a.get(xkey) is not None]
  if not pts:
    return None
  xs = [a[xkey] for a in pts]
  ys = [a["metric_mean"] for a in pts]
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  ax.errorbar(xs, ys, yerr=[a["metric_std"] for a in pts], fmt="o", capsize=3)
  for a, x, y in zip(pts, xs, ys):
    ax.annotate(a["cell"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
  if front:
    f = pareto(xs, ys)
    ax.plot([xs[i] for i in f], [ys[i] for i in f], "--", color="gray", label="Pareto front")
    ax.legend(loc="lower right")
  if logx:
    ax.set_xscale("log")
  ax.set_xlabel(xlabel)
  ax.grid(alpha=0.3)
  return _finish(fig, ax, path, f"{pts[0]['task']} {pts[0]['metric_name']}", title)


def plot_layers(agg, path, title=""):
  plt = _pyplot()
  if len({a.get("layers") for a in agg}) < 2 or not any(a.get("init") for a in agg):
    return None  # not a layer-reduction sweep
  series: dict[str, list] = {}
  for a in agg:
    label = "full" if a.get("init") in ("pretrained", None) and a["cell"].endswith("full") else (
        f"{a.get('init', '')} {'+KD' if a.get('distill') else ''}".strip())
    series.setdefault(label, []).append(a)
  full = [a for a in agg if a["cell"].endswith("_full")]
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  for label, pts in series.items():
    if label == "full":
      continue
    pts = sorted(pts + full, key=lambda a: a["layers"])
    ax.errorbar([a["layers"] for a in pts], [a["metric_mean"] for a in pts],
                yerr=[a["metric_std"] for a in pts], marker="o", capsize=3, label=label)
  ax.set_xlabel("encoder layers")
  ax.grid(alpha=0.3)
  ax.legend()
  return _finish(fig, ax, path, f"{agg[0]['task']} {agg[0]['metric_name']}", title)


def plot_qat(agg, path, title=""):
  plt = _pyplot()
  pts = [a for a in agg if a.get("method")]
  if not pts:
    return None
  fig, ax = plt.subplots(figsize=(7.2, 4.4))
  labels = [f"{a['cell']}" for a in pts]
  colors = {"fp32": "gray", "ptq": "tab:orange", "ptq-static": "tab:red", "qat": "tab:blue",
            "qat-int8": "tab:green"}
  ax.bar(range(len(pts)), [a["metric_mean"] for a in pts],
         yerr=[a["metric_std"] for a in pts], capsize=3,
         color=[colors.get(a["method"], "tab:purple") for a in pts])
  ax.set_xticks(range(len(pts)), labels, rotation=35, ha="right", fontsize=8)
  lo = min(a["metric_mean"] for a in pts)
  ax.set_ylim(max(0.0, lo - 0.05), None)
  ax.grid(axis="y", alpha=0.3)
  return _finish(fig, ax, path, f"{pts[0]['task']} {pts[0]['metric_name']}",
                 title or "fp32 / PTQ / QAT by weight bits")


def build(root: str, out: str | None = None, title: str = "") -> dict:
  """Writes the table, CSVs and figures; returns their paths."""
  out = out or root
  os.makedirs(out, exist_ok=True)
  rows = load_results(root)
  if os.path.abspath(out) != os.path.abspath(root):
    # The output dir gets the cell.json files too, so it is itself a loadable sweep (the
    # committed experiments/results/<sweep> folders; notebooks/results.ipynb reads them).
    for r in rows:
      d = os.path.join(out, r["cell"], f"seed{r['seed']}")
      os.makedirs(d, exist_ok=True)
      with open(os.path.join(d, "cell.json"), "w") as f:
        json.dump(r, f, indent=2)
    sweep = os.path.join(root, "sweep.json")
    if os.path.exists(sweep):
      shutil.copy(sweep, os.path.join(out, "sweep.json"))
  agg = aggregate(rows)
  title = title or f"{os.path.basename(os.path.normpath(root))} ({agg[0]['task']})"
  paths = dict(md=os.path.join(out, "results.md"), csv=os.path.join(out, "results.csv"),
               cells_csv=os.path.join(out, "cells.csv"))
  with open(paths["md"], "w") as f:
    f.write(markdown(agg, title))
  write_csv(agg, paths["csv"])
  write_csv(rows, paths["cells_csv"])
  figs = dict(
      latency=_scatter(agg, "latency_ms_per_seq", "latency (ms/seq, CPU)",
                       os.path.join(out, "metric_vs_latency.png"), front=True, title=title),
      params=_scatter(agg, "params", "parameters", os.path.join(out, "metric_vs_params.png"),
                      logx=True, title=title),
      layers=plot_layers(agg, os.path.join(out, "metric_vs_layers.png"), title),
      qat=plot_qat(agg, os.path.join(out, "qat_bits.png"), title))
  paths.update({k: v for k, v in figs.items() if v})
  return paths


def main(argv=None):
  import argparse  # noqa: PLC0415
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--root", required=True, help="sweep directory")
  p.add_argument("--out", default=None, help="output directory (default: the root)")
  p.add_argument("--title", default="")
  a = p.parse_args(argv)
  paths = build(a.root, a.out, a.title)
  with open(paths["md"]) as f:
    print(f.read())
  for k, v in paths.items():
    print(f"{k}: {v}")


if __name__ == "__main__":
  sys.exit(main())
