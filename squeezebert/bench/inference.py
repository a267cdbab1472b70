"""Inference benchmark: latency, throughput, FLOPs and memory of the deterministic forward.

What is timed: `jax.jit` of `nnx.merge(graphdef, state)(ids, mask, types, deterministic=True)`
with the graphdef static and the whole nnx state passed as arguments (weights are runtime
buffers, not folded constants), through the AOT-compiled executable, `block_until_ready`
on every call. Inputs: random token ids, full mask, token type 0. Weights: `init="fast"`
fills the model's shapes with numpy random values (the model's own initializers compile op
by op and are slow on a small CPU). Each call's process CPU time is recorded too:
`cpu_per_wall` near the core count means the run had the cores to itself. `--dtype bf16`
sets bf16 compute and, by default, bf16 parameters (`param_dtype` overrides). CPU code-path
findings behind the defaults: docs/performance.md.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from squeezebert import quant as quant_lib
from squeezebert.bench.device import environment, memory_report
from squeezebert.convert import save_pretrained
from squeezebert.bench.flops import analytic_flops, xla_cost
from squeezebert.model import build_model, get_config, param_count, with_execution
from squeezebert.model.config import ModelConfig, resolve_dtype
from squeezebert.model.layers import GroupedProjection, resolve_attention_impl

def make_config(variant: str, dtype: str = "float32", param_dtype: str | None = None,
                layers: int | None = None, attention_impl: str = "auto") -> ModelConfig:
  """Preset + benchmark dtype policy (param_dtype defaults to the compute dtype)."""
  alias = {"f32": "float32", "f16": "float16"}
  dtype = alias.get(dtype, dtype)
  over: dict[str, Any] = dict(dtype=dtype, param_dtype=alias.get(param_dtype, param_dtype) or dtype,
                              attention_impl=attention_impl)
  if layers is not None:
    over["num_hidden_layers"] = layers
  return get_config(variant, **over)


def model_state(cfg: ModelConfig, head: str = "base", seed: int = 0, init: str = "fast"):
  """(graphdef, state, param count) of `SqueezeBert(cfg, head)`.

  init="model" runs the model's own initializers (eager: one small XLA compile per random
  op, which costs tens of seconds on a busy 2-core machine); init="fast" (default) traces
  the constructor abstractly and fills the same shapes/dtypes with numpy: N(0,
  initializer_range) for kernels/embeddings, LayerNorm scale 1, biases 0. Latency does not
  depend on the weight values.
  """
  if init == "model":
    model = build_model(cfg, head=head, seed=seed)
    return (*nnx.split(model), param_count(model))
  if init != "fast":
    raise ValueError(f"init must be 'fast' or 'model', got {init!r}")
  abstract = nnx.eval_shape(lambda: build_model(cfg, head=head, seed=seed))
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  graphdef, abstract_state = nnx.split(abstract)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = getattr(path[-2] if len(path) > 1 else path[-1], "key", "")
    if name == "scale":
      x = np.ones(leaf.shape, np.float32)
    elif name == "bias":
      x = np.zeros(leaf.shape, np.float32)
    else:
      x = rng.standard_normal(leaf.shape, np.float32) * np.float32(cfg.initializer_range)
    return jnp.asarray(x.astype(leaf.dtype))

  return graphdef, jax.tree_util.tree_map_with_path(fill, abstract_state), n_params


def make_forward(graphdef):
  """jitted fn(state, ids, mask, types) -> ModelOutput; the graphdef is static (closed over)."""

  @jax.jit
  def forward(state, ids, mask, types):
    return nnx.merge(graphdef, state)(ids, mask, types, deterministic=True)

  return forward


def make_inputs(cfg: ModelConfig, batch: int, seq: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  ids = jnp.asarray(rng.integers(1, cfg.vocab_size, size=(batch, seq)), jnp.int32)
  return ids, jnp.ones_like(ids), jnp.zeros_like(ids)


def time_calls(fn, args, warmup: int, iters: int) -> tuple[list[float], list[float]]:
  """Wall-clock and process-CPU seconds of each timed call (block_until_ready each)."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  wall, cpu = [], []
  for _ in range(iters):
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    wall.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  return wall, cpu


QUANT = {"none": None, "int8": dict(weight_bits=8, act_bits=8),
         "w4a8": dict(weight_bits=4, act_bits=8), "w8": dict(weight_bits=8, act_bits=0)}


def quant_config(quant: str | None):
  """--quant name -> squeezebert.quant.QuantConfig (None for 'none'): int8 = w8a8 with dynamic
  per-token activations on every matmul module, int8 embedding tables."""
  if quant in (None, "none"):
    return None
  if quant not in QUANT:
    raise ValueError(f"quant must be one of {sorted(QUANT)}, got {quant!r}")
  return quant_lib.QuantConfig(mode="int8", **QUANT[quant])


def int8_state(graphdef, state, qcfg):
  """(graphdef, state) of the int8 model converted from a float (graphdef, state)."""
  return nnx.split(quant_lib.to_int8(nnx.merge(graphdef, state), qcfg))


def run_benchmark(variant: str = "squeezebert-base", batch: int = 32, seq: int = 128,
                  dtype: str = "float32", *, param_dtype: str | None = None,
                  layers: int | None = None, head: str = "base", warmup: int = 2,
                  iters: int = 5, seed: int = 0, init: str = "fast",
                  quant: str | None = None, cfg: ModelConfig | None = None,
                  layout: str = "auto", batch_chunk: str | int = "auto",
                  chunk_streams: int | None = None, attention_impl: str = "auto") -> dict:
  """Build, compile and time one model; returns a JSON-able dict. quant='int8' (or 'w4a8',
  'w8'): the int8 model converted from the float one (float32 activations between matmuls).
  layout, batch_chunk, chunk_streams: the CPU execution plan (ModelConfig.grouped_layout,
  batch_chunk, chunk_streams; None: the config's)."""
  if warmup < 0 or iters < 1:
    raise ValueError(f"need warmup >= 0 and iters >= 1, got {warmup}, {iters}")
  qcfg = quant_config(quant)
  if cfg is None:  # else: an explicit ModelConfig (experiments/ bench their variants with it)
    cfg = make_config(variant, dtype, param_dtype, layers, attention_impl)
  if qcfg is not None and (cfg.dtype, cfg.param_dtype) != ("float32", "float32"):
    raise ValueError(f"--quant {quant} converts a float32 model (int8 weights, float32 scales); "
                     f"got dtype {cfg.dtype}/{cfg.param_dtype}")
  if seq > cfg.max_position_embeddings:
    raise ValueError(f"seq {seq} > max_position_embeddings {cfg.max_position_embeddings}")
  env = environment()
  graphdef, state, n_params = model_state(cfg, head, seed, init)
  if layout != "auto" or batch_chunk != "auto" or chunk_streams is not None:
    graphdef, state = with_code_paths(graphdef, state, layout, batch_chunk, chunk_streams)
  if qcfg is not None:
    graphdef, state = int8_state(graphdef, state, qcfg)
  forward = make_forward(graphdef)
  args = (state, *make_inputs(cfg, batch, seq, seed))

  t0 = time.perf_counter()
  lowered = forward.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()

  times, cpu_times = time_calls(compiled, args, warmup, iters)
  med = float(np.median(times))
  p10, p90 = (float(x) for x in np.percentile(times, [10, 90]))
  fl = analytic_flops(cfg, seq)
  chunk = nnx.merge(graphdef, state).transformer.chunk_size(batch)
  if chunk:
    # XLA's cost analysis counts a while-loop body (the lax.map over chunks) once: take the
    # FLOPs of the same model compiled without chunking.
    whole_graphdef, whole_state = nnx.split(with_execution(nnx.merge(graphdef, state),
                                                           batch_chunk=0))
    xla = xla_cost(make_forward(whole_graphdef).lower(whole_state, *args[1:]).compile())
  else:
    xla = xla_cost(compiled)
  batch_flops = fl["total"] * batch
  res = dict(
      variant=variant, head=head, batch=batch, seq=seq,
      grouped_layout=grouped_layouts(graphdef, state),
      attention=resolve_attention_impl(cfg.attention_impl, dropout_active=False,
                                       dtype=resolve_dtype(cfg.dtype)),
      batch_chunk=chunk,
      chunk_streams=nnx.merge(graphdef, state).transformer.chunk_streams if chunk else None,
      quant=qcfg.tag if qcfg is not None else None,
      dtype=cfg.to_dict()["dtype"], param_dtype=cfg.to_dict()["param_dtype"],
      num_layers=cfg.num_hidden_layers, params=int(n_params), init=init,
      flops_analytic=dict(per_seq=fl["total"], per_batch=batch_flops,
                          encoder_per_seq=fl["encoder"], pooler_per_seq=fl["pooler"],
                          per_layer_per_seq=fl["per_layer"], embeddings=fl["embeddings"],
                          rule=fl["rule"]),
      flops_xla=dict(per_batch=xla.get("flops"),
                     per_seq=None if xla.get("flops") is None else xla["flops"] / batch,
                     transcendentals=xla.get("transcendentals"),
                     bytes_accessed=xla.get("bytes_accessed"), error=xla.get("error")),
      lower_s=t1 - t0, compile_s=t2 - t1,
      warmup=warmup, iters=iters, times_s=times, cpu_times_s=cpu_times,
      # process CPU seconds per call / wall seconds: ~cores used; well below the core count
      # on an idle machine means the timing was squeezed by other load.
      cpu_per_wall=float(np.median(cpu_times)) / med,
      latency_s=dict(median=med, p10=p10, p90=p90, min=float(min(times))),
      seq_per_s=batch / med, ms_per_seq=1e3 * med / batch,
      gflops_per_s=batch_flops / med / 1e9,
      gflops_per_s_xla=None if xla.get("flops") is None else xla["flops"] / med / 1e9,
      memory=memory_report(compiled, jax.devices()[0]),
      load_avg_after=list(os.getloadavg()),
      **env)
  return res


def with_code_paths(graphdef, state, layout: str = "auto", batch_chunk: str | int = "auto",
                    chunk_streams: int | None = None):
  """(graphdef, state) of the model on these CPU code paths (chunk_streams None: the
  model's own)."""
  fields = dict(grouped_layout=layout, batch_chunk=batch_chunk)
  if chunk_streams is not None:
    fields["chunk_streams"] = chunk_streams
  return nnx.split(with_execution(nnx.merge(graphdef, state), **fields))


def grouped_layouts(graphdef, state) -> list[str]:
  """The layouts the grouped (G > 1) projections of a model run with ([] if it has none)."""
  return sorted({m.resolved_layout() for _, m in nnx.iter_graph(nnx.merge(graphdef, state))
                 if isinstance(m, GroupedProjection) and m.groups > 1})


# (grouped layout, batch chunk, chunk streams)
PATHS = (("einsum", 0, 1), ("split", 0, 1), ("split", 8, 1), ("split", 8, 4), ("split", 4, 4))


def compare_paths(variant: str = "squeezebert-base", batch: int = 32, seq: int = 128,
                  rounds: int = 10, paths=PATHS, seed: int = 0) -> dict:
  """CPU code paths (grouped layout, batch chunk, chunk streams) of one model, timed
  interleaved (keys layout/chunkC/streamsS): each round
  calls every compiled path once, so drift of a shared host hits all of them alike."""
  if rounds < 1:
    raise ValueError(f"rounds must be >= 1, got {rounds}")
  cfg = make_config(variant)
  graphdef, state, _ = model_state(cfg, "base", seed)
  inputs = make_inputs(cfg, batch, seq, seed)
  compiled = {}
  for layout, chunk, streams in paths:
    gd, st = with_code_paths(graphdef, state, layout, chunk, streams)
    fn = make_forward(gd).lower(st, *inputs).compile()
    jax.block_until_ready(fn(st, *inputs))  # warm-up
    compiled[f"{layout}/chunk{chunk}/streams{streams}"] = (fn, (st, *inputs))
  return dict(variant=variant, batch=batch, seq=seq, **interleaved(compiled, rounds, batch),
              **environment())


def interleaved(calls: dict, rounds: int, batch: int) -> dict:
  """ms per sequence of each compiled call, timed round-robin: every round calls each once, so
  drift of a shared host (tens of percent within minutes on these machines) hits all alike."""
  if rounds < 1:
    raise ValueError(f"rounds must be >= 1, got {rounds}")
  times = {k: [] for k in calls}
  for _ in range(rounds):
    for k, (fn, args) in calls.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[k].append(1e3 * (time.perf_counter() - t0) / batch)
  return dict(unit="ms per sequence", rounds=rounds, times=times,
              median={k: float(np.median(v)) for k, v in times.items()},
              min={k: float(min(v)) for k, v in times.items()})


def compiled_call(variant: str, batch: int, seq: int, dtype: str = "float32", seed: int = 0,
                  layout: str = "auto", batch_chunk: str | int = "auto",
                  chunk_streams: int | None = None, param_dtype: str | None = None,
                  layers: int | None = None, **_):
  """(compiled forward, its arguments) of a preset (base head, fast init) on these code paths."""
  cfg = make_config(variant, dtype, param_dtype, layers)
  graphdef, state = with_code_paths(*model_state(cfg, "base", seed)[:2], layout, batch_chunk,
                                    chunk_streams)
  args = (state, *make_inputs(cfg, batch, seq, seed))
  fn = make_forward(graphdef).lower(*args).compile()
  jax.block_until_ready(fn(*args))  # warm-up
  return fn, args


def compare(batch: int = 32, seq: int = 128, dtype: str = "float32",
            variants=("squeezebert-base", "bert-base"), rounds: int = 0, **kw) -> dict:
  """Runs both variants back to back; ratio = latency(variants[0]) / latency(variants[1]).
  rounds > 0 (float models, base head): afterwards both are also timed interleaved for this
  many rounds, and the ratio and ms/seq use those medians (a drifting host skews
  two back-to-back timings, not an interleaved pair)."""
  a = run_benchmark(variants[0], batch, seq, dtype, **kw)
  b = run_benchmark(variants[1], batch, seq, dtype, **kw)
  ms_a, ms_b = a["ms_per_seq"], b["ms_per_seq"]
  out = dict(results={variants[0]: a, variants[1]: b})
  if rounds:
    calls = {v: compiled_call(v, batch, seq, dtype, **kw) for v in variants}
    inter = interleaved(calls, rounds, batch)
    ms_a, ms_b = inter["median"][variants[0]], inter["median"][variants[1]]
    out["interleaved"] = inter
  out.update(latency_ratio=ms_a / ms_b, ms_per_seq=ms_a, timing="interleaved" if rounds else
             "back to back",
             flops_ratio=a["flops_analytic"]["per_seq"] / b["flops_analytic"]["per_seq"])
  return out


def saved_sizes(variant: str, head: str = "base", layers: int | None = None, seed: int = 0,
                init: str = "fast", quant: str = "int8") -> dict:
  """Bytes on disk (model.safetensors) of the fp32, bf16 and quantized model directories:
  save_pretrained of the float model in float32 and in bfloat16, save_int8 of the int8 one."""
  qcfg = quant_config(quant)
  cfg = make_config(variant, "float32", None, layers)
  graphdef, state, _ = model_state(cfg, head, seed, init)
  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    out["float32"] = quant_lib.dir_bytes(save_pretrained(nnx.merge(graphdef, state),
                                                         os.path.join(tmp, "fp32")))
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), state)
    out["bfloat16"] = quant_lib.dir_bytes(save_pretrained(nnx.merge(graphdef, bf16),
                                                          os.path.join(tmp, "bf16")))
    int8 = quant_lib.to_int8(nnx.merge(graphdef, state), qcfg)
    out[qcfg.tag] = quant_lib.dir_bytes(quant_lib.save_int8(int8, os.path.join(tmp, "int8"),
                                                            qcfg))
  return out


def compare_quant(variant: str = "squeezebert-base", batch: int = 32, seq: int = 128,
                  quant: str = "int8", **kw) -> dict:
  """fp32, bf16 (bf16 params) and the quantized model of one variant, back to back on this
  machine: latency (as run_benchmark) and on-disk size."""
  qcfg = quant_config(quant)
  results = {"float32": run_benchmark(variant, batch, seq, "float32", **kw),
             "bfloat16": run_benchmark(variant, batch, seq, "bfloat16", **kw),
             qcfg.tag: run_benchmark(variant, batch, seq, "float32", quant=quant, **kw)}
  size_kw = {k: kw[k] for k in ("head", "layers", "seed", "init") if k in kw}
  sizes = saved_sizes(variant, quant=quant, **size_kw)
  base_lat = results["float32"]["latency_s"]["median"]
  table = {name: dict(latency_ms=1e3 * r["latency_s"]["median"], ms_per_seq=r["ms_per_seq"],
                      speedup_vs_fp32=base_lat / r["latency_s"]["median"],
                      disk_bytes=sizes[name], size_vs_fp32=sizes[name] / sizes["float32"])
           for name, r in results.items()}
  return dict(results=results, table=table, quant=qcfg.tag)


def quant_table(out: dict) -> str:
  lines = [f"{'model':<10} {'latency ms':>11} {'ms/seq':>8} {'vs fp32':>8} {'disk MB':>9} "
           f"{'size/fp32':>9}"]
  for name, t in out["table"].items():
    lines.append(f"{name:<10} {t['latency_ms']:>11.1f} {t['ms_per_seq']:>8.2f} "
                 f"{t['speedup_vs_fp32']:>7.2f}x {t['disk_bytes'] / 1e6:>9.2f} "
                 f"{t['size_vs_fp32']:>9.3f}")
  return "\n".join(lines)


def summary(r: dict) -> str:
  lat = r["latency_s"]
  xf = r["flops_xla"]["per_seq"]
  mem = r["memory"]
  q = f" quant {r['quant']}" if r.get("quant") else ""
  return (f"{r['variant']} [{r['head']}] {r['backend']}:{r['device_kind']} jax {r['jax_version']} "
          f"{r['dtype']}/{r['param_dtype']}{q} batch {r['batch']} seq {r['seq']} "
          f"layers {r['num_layers']}"
          + (f" grouped layout {'/'.join(r['grouped_layout'])}" if r.get("grouped_layout")
             else "")
          + (f" batch chunks of {r['batch_chunk']} ({r['chunk_streams']} chains per step)"
             if r.get("batch_chunk") else "") + "\n"
          f"  params {r['params']:,}  analytic {r['flops_analytic']['per_seq'] / 1e9:.3f} "
          f"GFLOPs/seq ({r['flops_analytic']['per_batch'] / 1e9:.1f}/batch)"
          + (f"  XLA {xf / 1e9:.3f} GFLOPs/seq" if xf is not None else "") + "\n"
          f"  lower {r['lower_s']:.2f}s compile {r['compile_s']:.2f}s  latency median "
          f"{lat['median'] * 1e3:.1f} ms (p10 {lat['p10'] * 1e3:.1f}, p90 {lat['p90'] * 1e3:.1f}) "
          f"over {r['iters']} iters\n"
          f"  {r['seq_per_s']:.1f} seq/s  {r['ms_per_seq']:.2f} ms/seq  "
          f"{r['gflops_per_s']:.1f} GFLOP/s (analytic)  cpu/wall {r['cpu_per_wall']:.2f}\n"
          f"  peak memory {mem['peak_bytes'] / 2**20:.1f} MiB ({mem['peak_source']}); "
          f"process max RSS {mem['process_max_rss_bytes'] / 2**20:.0f} MiB; "
          f"load avg {r['load_avg']}")


