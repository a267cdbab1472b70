"""Sweep machinery shared by experiments/*.py: every cell is one run of the one trainer.

A sweep is a list of `Cell`s (a name, config overrides, report columns) x seeds. Each
(cell, seed) runs in its own workdir `<root>/<cell>/seed<k>` through
`squeezebert.train.trainer.train_and_evaluate`, so an interrupted cell resumes from its
checkpoint and a finished one (`cell.json` present) is skipped; if it ran other settings
(steps, --set values, ...), the rerun stops first with an error naming them. After training, a
cell is measured and `cell.json` records: the task metric (and every eval metric), params,
analytic FLOPs per sequence, latency (squeezebert.bench on the trained model's config), model
size on disk, train time and seed. `experiments/report.py` turns the cell.json files into tables and
plots.

Post-training cells (PTQ) have `source=<cell>`: they quantize that cell's finished workdir
instead of training (squeezebert.quant.cli.run) and measure the int8 model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from typing import Any, Callable

from absl import flags, logging

from squeezebert import bench, configlib, convert, load
from squeezebert.model import ModelConfig
from squeezebert import workdir as workdir_lib
from squeezebert.quant import QuantConfig
from squeezebert.quant import cli as quant_cli
from squeezebert.train import trainer

RESULT = "cell.json"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCALES = ("tiny", "cpu")


def define_flags(default_task: str = "sst2", default_seeds: str = "0,1"):
  """Flags every sweep script takes."""
  flags.DEFINE_string("root", None, "sweep directory: one workdir per cell and seed", required=True)
  flags.DEFINE_string("task", default_task, "GLUE task (configs/glue.py)")
  flags.DEFINE_string("seeds", default_seeds, "comma-separated seeds")
  flags.DEFINE_string("only", "", "comma-separated cell names to run (default: all)")
  flags.DEFINE_enum("scale", "cpu", SCALES, "tiny: smoke test (tiny model, 64 examples, a "
                    "few steps); cpu: the sizes of experiments/results (2-core CPU)")
  flags.DEFINE_integer("steps", 0, ">0: override the number of training steps of every cell")
  flags.DEFINE_integer("bench_batch", 8, "latency measurement: batch size")
  flags.DEFINE_integer("bench_seq", 64, "latency measurement: sequence length")
  flags.DEFINE_integer("bench_iters", 3, "latency measurement: timed calls (after 1 warm-up)")
  flags.DEFINE_bool("list", False, "print the cells and exit")
  flags.DEFINE_multi_string("set", [], "extra config override for every cell, KEY=VALUE "
                            "(e.g. --set data.tfds_data_dir=/data/tfds)")


@dataclasses.dataclass
class Cell:
  name: str
  overrides: dict = dataclasses.field(default_factory=dict)  # dotted config key -> value
  info: dict = dataclasses.field(default_factory=dict)       # report columns (layers, ...)
  source: str | None = None        # post-training cell: quantize this cell's workdir
  quant: dict | None = None        # for post-training cells: squeezebert.quant.cli overrides
  # Called with (seed) before the run: returns more overrides that depend on other cells'
  # finished workdirs (a teacher, a deeper checkpoint).
  late_overrides: Callable[[int], dict] | None = None


def seeds_from_flag(s: str) -> list[int]:
  try:
    out = [int(x) for x in s.split(",") if x.strip()]
  except ValueError:
    raise ValueError(f"--seeds must be comma-separated ints, got {s!r}") from None
  if not out:
    raise ValueError("--seeds is empty")
  return out


def int_list(s: str, name: str) -> list[int]:
  try:
    out = [int(x) for x in s.split(",") if x.strip()]
  except ValueError:
    raise ValueError(f"--{name} must be comma-separated ints, got {s!r}") from None
  if not out:
    raise ValueError(f"--{name} is empty")
  return out


def workdir(root: str, cell: str, seed: int) -> str:
  return os.path.join(root, cell, f"seed{seed}")


def load_glue_config(arg: str):
  """configs/glue.py:get_config(arg), loaded from the repo (experiments run from anywhere)."""
  return configlib.load_config(f"{os.path.join(REPO, 'configs', 'glue.py')}:{arg}")


def apply_overrides(config, overrides: dict):
  """Set dotted keys ('model.num_hidden_layers', 'quant.mode') on a ConfigDict; an unknown
  key is an error (a typo must not silently run the baseline)."""
  for key, value in overrides.items():
    node, parts = config, key.split(".")
    for p in parts[:-1]:
      if p not in node:
        raise KeyError(f"unknown config key {key!r}")
      node = node[p]
    if parts[-1] not in node:
      raise KeyError(f"unknown config key {key!r}")
    node[parts[-1]] = value
  return config


def parse_set(items: list[str]) -> dict:
  out = {}
  for item in items:
    key, eq, value = item.partition("=")
    if not eq:
      raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
    try:
      v = json.loads(value)
    except json.JSONDecodeError:
      v = value
    out[key] = tuple(v) if isinstance(v, list) else v  # ConfigDict tuples (bucket boundaries)
  return out


def scale_overrides(scale: str) -> dict:
  """tiny: what the tests run (the trainer's runlocal sizes)."""
  if scale == "tiny":
    return {"model.variant": "tiny", "model.vocab_size": 30522, "batch_size": 8,
            "num_train_steps": 4, "eval_every_steps": 4, "log_every_steps": 2,
            "data.train_limit": 64, "data.eval_limit": 32, "data.max_len": 32,
            "data.bucket_boundaries": (32,), "progress_bar": False}
  if scale != "cpu":
    raise ValueError(f"unknown scale {scale!r}; known: {SCALES}")
  return {"progress_bar": False}


def cell_config(task: str, cell: Cell, seed: int, base: dict):
  config = load_glue_config(f"task={task}")
  apply_overrides(config, base)
  apply_overrides(config, cell.overrides)
  if cell.late_overrides is not None:
    apply_overrides(config, cell.late_overrides(seed))
  config.seed = seed
  return config


def _bench(model_cfg, quant: str | None, batch: int, seq: int, iters: int) -> dict:
  seq = min(seq, model_cfg.max_position_embeddings)
  r = bench.run_benchmark(cfg=model_cfg.replace(dtype="float32"), batch=batch, seq=seq,
                          warmup=1, iters=iters, quant=quant)
  return dict(latency_ms_per_seq=r["ms_per_seq"], flops_per_seq=r["flops_analytic"]["per_seq"],
              bench=dict(batch=batch, seq=seq, iters=iters, quant=r["quant"],
                         cpu_per_wall=r["cpu_per_wall"], backend=r["backend"],
                         load_avg=r["load_avg"]))


def _main_metric(metrics: dict, name: str):
  if name in metrics:
    return float(metrics[name])
  for k, v in metrics.items():  # tasks with several eval splits: the first one's
    if k.endswith("/" + name):
      return float(v)
  return None


# A finished cell is reused only when these match: what the trainer checks on resume, plus the
# schedule (a rerun with other --steps or --set values is another experiment).
FINISHED_FIELDS = workdir_lib.RESUME_FIELDS + ("num_train_steps", "num_epochs", "warmup_steps",
                                               "warmup_ratio", "data.eval_limit")


def check_finished(task: str, cell: Cell, seed: int, root: str, base: dict) -> None:
  """A finished training cell is reused only if it ran these settings; else a ValueError
  naming what differs (nothing is rerun or overwritten)."""
  wd = workdir(root, cell.name, seed)
  if cell.source is not None or not os.path.exists(os.path.join(wd, RESULT)):
    return
  config = cell_config(task, cell, seed, base)
  config.data.shards = trainer.data_shards(config)  # 0 (auto) as the trainer resolves it
  changes = workdir_lib.resume_config_changes(wd, config, FINISHED_FIELDS)
  if changes:
    raise ValueError(f"{cell.name} seed {seed} finished in {wd} with other settings: "
                     f"{'; '.join(changes)}. Use a new --root (or remove that cell's "
                     "directory to rerun it).")


def run_cell(task: str, cell: Cell, seed: int, root: str, base: dict, bench_cfg: dict,
             cells: dict[str, Cell]) -> dict:
  """Train (or resume) one cell and measure it; returns (and writes) its cell.json."""
  wd = workdir(root, cell.name, seed)
  path = os.path.join(wd, RESULT)
  if os.path.exists(path):
    logging.info("%s seed %d: finished (%s), skipped", cell.name, seed, path)
    with open(path) as f:
      return json.load(f)
  os.makedirs(wd, exist_ok=True)
  t0 = time.time()
  if cell.source is None:
    config = cell_config(task, cell, seed, base)
    logging.info("=== %s seed %d -> %s", cell.name, seed, wd)
    metrics = trainer.train_and_evaluate(config, wd)
    train_s = time.time() - t0
    run = workdir_lib.read_run_file(wd)
    model = load.from_pretrained(wd)
    params = sum(v.size for v in convert.flat_params(model).values())
    with tempfile.TemporaryDirectory() as tmp:
      size = _dir_bytes(convert.save_pretrained(model, tmp))
    qtag = None
    if run.get("quant"):
      qtag = "qat-" + QuantConfig.from_dict(run["quant"]).tag
    bench_quant = None
  else:
    src = cells[cell.source]
    src_wd = workdir(root, src.name, seed)
    if not os.path.exists(os.path.join(src_wd, RESULT)):
      raise FileNotFoundError(f"cell {cell.name} quantizes cell {src.name}, which has not "
                              f"finished for seed {seed} ({src_wd}): run it first")
    config = workdir_lib.read_train_config(src_wd)
    logging.info("=== %s seed %d: quantize %s -> %s", cell.name, seed, src_wd, wd)
    q = dict(cell.quant or {})
    mode = q.pop("mode", "ptq")
    res = quant_cli.run(src_wd, mode, os.path.join(wd, "int8"), overrides=q, config=config,
                        eval_source=False)
    metrics, train_s = res["int8"], time.time() - t0  # quantization + eval (no training)
    run = workdir_lib.read_run_file(src_wd)
    params = None
    size = res["int8_bytes"]
    qtag = res["tag"]
    bench_quant = {8: "int8", 4: "w4a8"}[res["quant"]["weight_bits"]]
    if res["quant"]["act_bits"] == 0:
      bench_quant = "w8"
  model_cfg = ModelConfig(**run["model"])
  if params is None:
    with open(os.path.join(workdir(root, cell.source, seed), RESULT)) as f:
      params = json.load(f)["params"]
  b = _bench(model_cfg, bench_quant, **bench_cfg)
  result = dict(
      cell=cell.name, seed=seed, task=task, metric_name=run["best_metric"],
      metric=_main_metric(metrics, run["best_metric"]),
      metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
      params=int(params), size_mb=size / 1e6, train_time_s=train_s,
      layers=model_cfg.num_hidden_layers, quant=qtag, **b, **cell.info,
      overrides={k: _jsonable(v) for k, v in cell.overrides.items()}, workdir=wd)
  with open(path + ".tmp", "w") as f:
    json.dump(result, f, indent=2)
  os.replace(path + ".tmp", path)  # written last: its presence marks the cell finished
  logging.info("=== %s seed %d: %s=%.4f (%.0fs)", cell.name, seed, result["metric_name"],
               result["metric"], train_s)
  return result


def _jsonable(v: Any):
  return list(v) if isinstance(v, tuple) else v


def _dir_bytes(d: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))


def run_sweep(cells: list[Cell], flag_values) -> list[dict]:
  """Runs every (cell, seed) in order (cells that others depend on come first)."""
  names = [c.name for c in cells]
  if len(set(names)) != len(names):
    raise ValueError(f"duplicate cell names in {names}")
  by_name = {c.name: c for c in cells}
  only = [x for x in flag_values.only.split(",") if x]
  unknown = sorted(set(only) - set(by_name))
  if unknown:
    raise ValueError(f"--only: unknown cells {unknown}; this sweep has {names}")
  if flag_values.list:
    for c in cells:
      print(c.name, json.dumps({k: _jsonable(v) for k, v in c.overrides.items()}),
            f"source={c.source}" if c.source else "")
    return []
  seeds = seeds_from_flag(flag_values.seeds)
  base = scale_overrides(flag_values.scale)
  if flag_values.scale == "tiny":  # the tiny preset stands in for every cell's preset
    for c in cells:
      c.overrides.pop("model.variant", None)
  if flag_values.steps:
    base["num_train_steps"] = flag_values.steps
  base.update(parse_set(flag_values.set))
  bench_cfg = dict(batch=flag_values.bench_batch, seq=flag_values.bench_seq,
                   iters=flag_values.bench_iters)
  todo = [(seed, c) for seed in seeds for c in cells if not only or c.name in only]
  for seed, c in todo:  # before anything is written
    check_finished(flag_values.task, c, seed, flag_values.root, base)
  os.makedirs(flag_values.root, exist_ok=True)
  with open(os.path.join(flag_values.root, "sweep.json"), "w") as f:
    json.dump(dict(task=flag_values.task, seeds=seeds, scale=flag_values.scale,
                   base={k: _jsonable(v) for k, v in base.items()},
                   cells=[c.name for c in cells]), f, indent=2)
  return [run_cell(flag_values.task, c, seed, flag_values.root, base, bench_cfg, by_name)
          for seed, c in todo]
