"""PTQ / int8 conversion of a training workdir, evaluated through the trainer's eval code path.

  python -m squeezebert.quant --workdir RUN --mode ptq --out DIR [--weight_bits 8 --act_bits 8
      --act_mode static --calib_batches 32 --modules qkv,ffn,...]
  python -m squeezebert.quant --workdir QAT_RUN --mode int8 --out DIR

--mode ptq   post-training quantization of the run's best checkpoint with the settings given
             here (defaults: w8a8, dynamic per-token activations); act_mode=static calibrates
             activation ranges on `calib_batches` training batches first.
--mode int8  converts the run as it was trained: a QAT run with its own quantization settings
             (and, for static ranges, the ranges it learned), a float run with the settings
             given here. Flags given explicitly override the run's settings.
Both write the int8 model to DIR (squeezebert_int8.json + model.safetensors; reload with
squeezebert.from_pretrained(DIR) or squeezebert.quant.load_int8) and DIR/quant_metrics.json:
dev metrics of the int8 model and of the source model (float, or QAT fake-quant), and the
on-disk sizes of the fp32 and int8 models.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import jax
from absl import logging

from squeezebert import assets as assets_lib
from squeezebert import load, tasks as tasks_lib
from squeezebert import workdir as workdir_lib
from squeezebert.convert import ours
from squeezebert.data import batching
from squeezebert.model.params import float_model
from squeezebert.quant import core
from squeezebert.quant.config import QuantConfig
from squeezebert.train.evaluate import evaluate_model

RESULT_FILE = "quant_metrics.json"


def load_workdir_model(workdir: str):
  """(model, QuantConfig or None) of a workdir's best (else latest) checkpoint: the float
  model, or for a QAT run its QAT model (with its activation ranges if static)."""
  run = workdir_lib.read_run_file(workdir)
  qcfg = QuantConfig.from_dict(run["quant"]) if run.get("quant") else None
  return load.load_workdir(workdir, as_trained=qcfg is not None), qcfg


def calibration_batches(task, config):
  """Training batches in the trainer's order (seed, epoch 0)."""
  enc = task.load(task.train_split)
  return batching.batches(enc, config.batch_size, shuffle=True, seed=config.seed, epoch=0,
                          bucket_boundaries=tuple(config.data.bucket_boundaries),
                          drop_remainder=True)


def run(workdir: str, mode: str, out_dir: str, overrides: dict | None = None, config=None,
        eval_source: bool = True) -> dict:
  """Quantizes a workdir's model (see the module docstring); returns what it writes to
  out_dir/quant_metrics.json."""
  if mode not in ("ptq", "int8"):
    raise ValueError(f"--mode must be ptq or int8, got {mode!r}")
  overrides = dict(overrides or {})
  config = config if config is not None else workdir_lib.read_train_config(workdir)
  t0 = time.time()
  source, run_q = load_workdir_model(workdir)
  if mode == "int8" and run_q is not None:
    base = run_q
  else:
    base = QuantConfig()
    if mode == "ptq" and run_q is not None:
      logging.warning("%s is a QAT run (%s): PTQ quantizes its parameters afresh with %s",
                      workdir, run_q.tag, overrides or "the defaults")
  qcfg = base.replace(mode=mode, **overrides)  # validates
  task = tasks_lib.get_task(config)
  if task.head != source.head or task.num_labels != source.num_labels:
    raise ValueError(f"config task {task.name} ({task.head}, {task.num_labels} labels) does "
                     f"not match the workdir's model ({source.head}, {source.num_labels})")

  # What to convert: the QAT model itself when it carries the right ranges, else the
  # parameters (float or QAT-trained) with ranges calibrated here.
  convert_from, calibrated = source, 0
  rules = lambda q: (q.weight_bits, q.act_bits, q.act_mode, q.modules)  # noqa: E731
  reuse_ranges = (run_q is not None and rules(qcfg) == rules(run_q)
                  and core.has_quant_stats(source))
  if qcfg.static and not reuse_ranges:
    float_params = float_model(source)
    convert_from = core.quantize_for_training(float_params, qcfg.replace(mode="qat"))
    calibrated = core.calibrate(convert_from, calibration_batches(task, config),
                                qcfg.calib_batches)
    logging.info("calibrated static activation ranges on %d training batches", calibrated)
  int8 = core.to_int8(convert_from, qcfg)
  extras = assets_lib.of(workdir)
  core.save_int8(int8, out_dir, qcfg, extra=dict(source=os.path.abspath(workdir), mode=mode,
                                                 calibration_batches=calibrated,
                                                 labels=list(extras.labels or []) or None),
                 files=extras.files())
  convert_s = time.time() - t0

  with tempfile.TemporaryDirectory() as tmp:
    fp32_bytes = core.dir_bytes(ours.save_pretrained(float_model(source), tmp))
  int8_bytes = core.dir_bytes(out_dir)
  encs = {s: task.load(s) for s in task.eval_splits}
  result = dict(workdir=os.path.abspath(workdir), mode=mode, quant=qcfg.to_dict(),
                tag=qcfg.tag, source_quant=run_q.to_dict() if run_q else None,
                calibration_batches=calibrated, convert_s=convert_s,
                int8=evaluate_model(int8, task, config, encs),
                fp32_bytes=fp32_bytes, int8_bytes=int8_bytes,
                size_ratio=int8_bytes / fp32_bytes)
  if qcfg.act_bits == 16:
    result["note"] = ("16-bit activations are simulated in QAT only: the int8 model keeps "
                      "activations float (weight-only int8)")
  if eval_source:
    result["source"] = evaluate_model(source, task, config, encs)
    result["source_kind"] = f"qat-{run_q.tag}" if run_q else "float"
  result = jax.tree.map(lambda x: x.item() if hasattr(x, "item") else x, result)
  with open(os.path.join(out_dir, RESULT_FILE), "w") as f:
    json.dump(result, f, indent=2)
  return result
