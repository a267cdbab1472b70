"""Deploy bench: our JAX model vs its ONNX Runtime exports vs HF PyTorch BERT-base, on the CPU.

    python -m squeezebert.bench --runtime onnx [--variant squeezebert-base --seq 128
        --deploy_batches 1,8 --deploy_threads 1,2 --rounds 10 --wait_idle_s 1200 --json OUT]

Rows (classification head, 2 labels, random weights: latency does not depend on values):
  jax_fp32     our model, jax.jit (XLA:CPU), float32
  jax_int8     squeezebert.quant's int8 model (w8a8, qwix), jax.jit
  onnx_float   the ONNX export on onnxruntime, float32
  onnx_int8    the int8 ONNX export (--quant int8) on onnxruntime
  torch_fp32   HF BertForSequenceClassification, bert-base (dev extra: torch, transformers)
  torch_int8   the same after torch.ao.quantization.quantize_dynamic on its Linear layers
Each thread count runs in its own process pinned to that many cores (sched_setaffinity before
JAX starts its CPU client, so XLA sizes its pool to them; ORT intra-op threads and
torch.set_num_threads likewise). Within it every row is timed interleaved, round by round (each round calls every
row once), so drift on a shared host hits all rows alike; ms/seq is the median over rounds.
ORT's and torch's worker threads are told not to spin after a call (they would take the cores
from the next row).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from squeezebert.bench import inference
from squeezebert.bench.device import environment
from squeezebert.deploy import onnx_export, onnx_graph
from squeezebert.deploy.deps import require
from squeezebert.model.params import flat_params

ROWS = ("jax_fp32", "jax_int8", "onnx_float", "onnx_int8", "torch_fp32", "torch_int8")


def wait_idle(max_s: float, below: float = 1.0, poll_s: float = 30.0) -> dict:
  """Waits (up to max_s) for the 1-minute load average to drop below `below`."""
  t0 = time.time()
  while os.getloadavg()[0] >= below and time.time() - t0 < max_s:
    time.sleep(poll_s)
  load = os.getloadavg()[0]
  return dict(load_1min=load, waited_s=time.time() - t0, idle=load < below)


def _onnx_rows(cfg, models: dict, threads: int, tmp: str) -> dict:
  """ORT sessions of the float model and of the int8 model (the jax_int8 row's weights)."""
  onnx = require("onnx")
  params = {"onnx_float": flat_params(nnx.merge(*models["jax_fp32"])),
            "onnx_int8": onnx_export.int8_params(nnx.merge(*models["jax_int8"]))}
  paths = {}
  for name, p in params.items():
    paths[name] = os.path.join(tmp, f"{name}.onnx")
    onnx.save(onnx_graph.build_onnx(cfg, p, "classification", 2), paths[name])
  out = {}
  for name, path in paths.items():
    sess = onnx_export.session(path, threads, spin=False)
    out[name] = lambda ids, s=sess: onnx_export.run(s, ids)["logits"]
  return out


def _torch_rows(threads: int, seq: int) -> tuple[dict, dict]:
  """HF BERT-base fp32 and dynamic-int8 callables ({} and the reason when torch is absent)."""
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: no spinning
  try:
    import torch
    import transformers
  except ImportError as e:  # dev-only references, never a runtime dependency
    return {}, dict(torch_rows=f"skipped: {e} (pip install -e '.[dev]')")
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  cfg = transformers.BertConfig(max_position_embeddings=max(512, seq))
  fp32 = transformers.BertForSequenceClassification(cfg).eval()
  int8 = torch.ao.quantization.quantize_dynamic(fp32, {torch.nn.Linear}, dtype=torch.qint8)

  def call(model):
    def fn(ids):
      with torch.inference_mode():
        return model(input_ids=torch.as_tensor(ids, dtype=torch.long)).logits.numpy()
    return fn

  return ({"torch_fp32": call(fp32), "torch_int8": call(int8)},
          dict(torch_version=torch.__version__, transformers_version=transformers.__version__,
               torch_threads=torch.get_num_threads()))


def _jax_rows(models: dict, batches, seq: int) -> dict:
  """Compiled jax_fp32 / jax_int8 forwards per batch size, as fn(ids) -> logits."""
  out = {}
  for name, (gd, st) in models.items():
    fwd = inference.make_forward(gd)
    comp = {}
    for b in batches:
      ids = np.ones((b, seq), np.int32)
      comp[b] = fwd.lower(st, ids, ids, np.zeros_like(ids)).compile()

    def fn(ids, comp=comp, st=st):
      ids = np.asarray(ids, np.int32)
      return np.asarray(jax.block_until_ready(
          comp[ids.shape[0]](st, ids, np.ones_like(ids), np.zeros_like(ids)).logits))
    out[name] = fn
  return out


def worker(variant: str, threads: int, batches, seq: int, rounds: int, warmup: int,
           rows=ROWS) -> dict:
  """All rows at one thread count, in this process (already pinned to `threads` cores)."""
  cfg = inference.make_config(variant)
  graphdef, state, n_params = inference.model_state(cfg, "classification")
  models = {"jax_fp32": (graphdef, state),  # the int8 rows share squeezebert.quant's weights
            "jax_int8": inference.int8_state(graphdef, state, inference.quant_config("int8"))}
  fns, info = {}, {}
  with tempfile.TemporaryDirectory() as tmp:
    if any(r.startswith("jax") for r in rows):
      fns.update(_jax_rows(models, batches, seq))
    if any(r.startswith("onnx") for r in rows):
      fns.update(_onnx_rows(cfg, models, threads, tmp))
    if any(r.startswith("torch") for r in rows):
      torch_fns, info = _torch_rows(threads, seq)
      fns.update(torch_fns)
    fns = {k: v for k, v in fns.items() if k in rows}
    rng = np.random.default_rng(0)
    results = []
    for b in batches:
      ids = rng.integers(1, min(cfg.vocab_size, 30522), (b, seq))
      for fn in fns.values():
        for _ in range(warmup):
          fn(ids)
      calls = max(1, 8 // b)  # batch 1: several calls per round (short calls are noisier)
      times = {k: [] for k in fns}
      for _ in range(rounds):
        for k, fn in fns.items():
          t0 = time.perf_counter()
          for _ in range(calls):
            fn(ids)
          times[k].append(1e3 * (time.perf_counter() - t0) / (calls * b))
      for k, ts in times.items():
        results.append(dict(row=k, threads=threads, batch=b, seq=seq,
                            ms_per_seq=float(np.median(ts)), ms_per_seq_min=float(min(ts)),
                            ms_per_seq_p90=float(np.percentile(ts, 90)), rounds=rounds,
                            model="bert-base" if k.startswith("torch") else variant))
  return dict(results=results, params=int(n_params), **info)


def _speedups(results: list) -> list:
  """Each row's speed vs jax_fp32 and vs torch_int8 at the same threads and batch."""
  key = lambda r: (r["threads"], r["batch"])  # noqa: E731
  ref = {(key(r), r["row"]): r["ms_per_seq"] for r in results}
  for r in results:
    for base in ("jax_fp32", "torch_int8"):
      b = ref.get((key(r), base))
      r[f"speedup_vs_{base}"] = b / r["ms_per_seq"] if b else None
  return results


def targets(results: list) -> dict:
  """The issue's targets per (threads, batch): onnx_int8 >= 2x jax_fp32, faster than
  torch_int8."""
  out = {}
  for r in results:
    if r["row"] == "onnx_int8":
      k = f"threads{r['threads']}/batch{r['batch']}"
      vt = r.get("speedup_vs_torch_int8")
      out[k] = dict(vs_jax_fp32=r["speedup_vs_jax_fp32"], vs_torch_int8=vt,
                    ge_2x_jax_fp32=r["speedup_vs_jax_fp32"] >= 2.0,
                    faster_than_torch_int8=None if vt is None else vt > 1.0)
  return out


def _worker_env() -> dict:
  """This process's environment, with this checkout of the package first on the path."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  path = os.environ.get("PYTHONPATH", "")
  return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def run(variant: str = "squeezebert-base", batches=(1, 8), threads=(1, 2), seq: int = 128,
        rounds: int = 10, warmup: int = 2, rows=ROWS, wait_idle_s: float = 0) -> dict:
  """Every thread count in its own pinned subprocess; the joined table."""
  require("onnxruntime")
  idle = wait_idle(wait_idle_s) if wait_idle_s else None
  load_before = list(os.getloadavg())
  results, info = [], {}
  cpus = sorted(os.sched_getaffinity(0))
  for n in threads:
    if n > len(cpus):
      raise ValueError(f"{n} threads asked, this process may use {len(cpus)} cores")
    spec = dict(variant=variant, threads=n, batches=list(batches), seq=seq, rounds=rounds,
                warmup=warmup, rows=list(rows), cpus=cpus[:n])
    with tempfile.TemporaryDirectory() as tmp:
      out_file = os.path.join(tmp, "out.json")
      cmd = [sys.executable, "-m", "squeezebert.deploy.bench", json.dumps(spec), out_file]
      p = subprocess.run(cmd, capture_output=True, text=True, env=_worker_env())
      if p.returncode:
        raise RuntimeError(f"bench worker ({n} threads) failed:\n{p.stderr[-3000:]}")
      with open(out_file) as f:
        w = json.load(f)
    results += w.pop("results")
    info.update(w)
  results = _speedups(results)
  env = environment()
  return dict(variant=variant, seq=seq, rows=list(rows), results=results,
              targets=targets(results), load_before=load_before,
              load_after=list(os.getloadavg()), wait_idle=idle, **info,
              onnxruntime_version=require("onnxruntime").__version__, **env)


def table(out: dict) -> str:
  lines = [f"{'row':<11} {'model':<17} {'thr':>3} {'batch':>5} {'ms/seq':>8} {'vs jax fp32':>11} "
           f"{'vs torch int8':>13}"]
  for r in sorted(out["results"], key=lambda r: (r["threads"], r["batch"], ROWS.index(r["row"]))):
    vj, vt = r["speedup_vs_jax_fp32"], r["speedup_vs_torch_int8"]
    lines.append(f"{r['row']:<11} {r['model']:<17} {r['threads']:>3} {r['batch']:>5} "
                 f"{r['ms_per_seq']:>8.2f} {'' if vj is None else f'{vj:.2f}x':>11} "
                 f"{'' if vt is None else f'{vt:.2f}x':>13}")
  lines.append(f"load average before {out['load_before']}, after {out['load_after']}")
  return "\n".join(lines)


if __name__ == "__main__":  # the worker: python -m squeezebert.deploy.bench SPEC_JSON OUT_FILE
  spec = json.loads(sys.argv[1])
  # Before JAX starts its CPU client, which sizes its thread pool to the schedulable cores.
  os.sched_setaffinity(0, spec["cpus"])
  res = worker(spec["variant"], spec["threads"], spec["batches"], spec["seq"], spec["rounds"],
               spec["warmup"], tuple(spec["rows"]))
  with open(sys.argv[2], "w") as f:
    json.dump(res, f)
