"""Training benchmark: the trainer's own jitted train step, timed.

`run_train_benchmark` builds the step exactly as `squeezebert.train.trainer` does
(`steps.make_train_step` on the split (model, optimizer), state donated, batch through the
trainer's `Mesh`), on a synthetic full-length batch of the task's shape (classification:
SST-2's; pretraining: MLM + SOP with in-step masking), and times forward + backward +
optimizer update. Reported: step time, tokens/s, sequences/s, model FLOPs/step
(`flops.train_flops`: 6 x forward matmul MACs), MFU against the device's peak
(`device.peak_flops`), XLA's FLOPs and bytes accessed of the compiled step, compile time,
and peak memory.

`compare_hf` times HF PyTorch's SqueezeBERT / BERT sequence-classification training steps
(AdamW, fp32, same shapes) interleaved with ours in one process (torch and transformers
are test-only: `pip install -e .[dev]`).
"""

from __future__ import annotations

import math
import os
import time

import jax
import numpy as np
from flax import nnx

from squeezebert import configlib
from squeezebert.bench import device as device_lib
from squeezebert.bench import inference
from squeezebert.bench.flops import train_flops, xla_cost
from squeezebert.convert import config_to_hf
from squeezebert.model import SqueezeBert, get_config, param_count
from squeezebert.model.layers import resolve_attention_impl
from squeezebert import tasks as tasks_lib
from squeezebert.train import optim, steps as steps_lib, trainer
from squeezebert.train.mesh import Mesh

HEADS = {"classification": "sst2", "pretraining": "pretrain"}


def bench_config(variant: str = "squeezebert-base", head: str = "classification",
                 batch: int = 32, seq: int = 128, dtype: str = "bfloat16",
                 optimizer: str = "adamw", remat: str = "none", attention_impl: str = "auto",
                 fused_qkv: bool = False, rng_impl: str = "threefry",
                 finite_check: str = "cheap", grad_accum: int = 1,
                 attention_dropout: float | None = None, seed: int = 0,
                 layers: int | None = None):
  """The trainer config of one benchmark point (the fields a real run would set)."""
  if head not in HEADS:
    raise ValueError(f"head must be one of {sorted(HEADS)}, got {head!r}")
  c = configlib.base_train_config()
  c.task = HEADS[head]
  if head == "pretraining":
    c.pretrain = configlib.pretrain_section()
    c.data.eval_split = "validation"
  c.seed = seed
  c.model.variant = variant
  c.dtype = {"bf16": "bfloat16", "fp32": "float32", "f32": "float32"}.get(dtype, dtype)
  c.batch_size, c.grad_accum_steps, c.data.max_len = batch, grad_accum, seq
  c.optimizer = optimizer
  c.model.remat, c.model.attention_impl, c.model.fused_qkv = remat, attention_impl, fused_qkv
  if attention_dropout is not None:
    c.model.attention_probs_dropout_prob = attention_dropout
  if layers is not None:
    c.model.num_hidden_layers = layers
  c.rng_impl, c.finite_check = rng_impl, finite_check
  return c


def synthetic_batch(task, vocab_size: int, batch: int, seq: int, seed: int = 0) -> dict:
  """A full-length numpy batch with the keys the task's loss reads."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(min(1000, vocab_size // 2), vocab_size, size=(batch, seq)).astype(np.int32)
  ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
  out = dict(input_ids=ids, attention_mask=np.ones_like(ids),
             token_type_ids=np.zeros_like(ids),
             labels=rng.integers(0, task.num_labels, size=(batch,)).astype(np.int32),
             example_weight=np.ones((batch,), np.float32),
             idx=np.arange(batch, dtype=np.int32))
  if task.head == "pretraining":
    out["word_start"] = np.ones((batch, seq), np.int8)
  return out


def build(config, seed: int = 0, init: str = "fast"):
  """(task, model, optimizer) as the trainer builds them (fast init: numpy weights)."""
  task = tasks_lib.get_task(config)
  overrides = dict(configlib.model_overrides(config.model), dtype=config.dtype)
  cfg = get_config(config.model.variant, **overrides)
  graphdef, state, _ = inference.model_state(cfg, task.head, seed, init)
  model = nnx.merge(graphdef, state)
  if task.head == "pretraining" and cfg.vocab_size < task.tokenizer.get_vocab_size():
    raise ValueError(f"pretraining masks with the {task.tokenizer.get_vocab_size()}-token "
                     f"vocab; {config.model.variant} has vocab_size {cfg.vocab_size}")
  return task, model


def abstract_train_step(config):
  """(jitted train step, abstract arguments) with no weights allocated (nnx.eval_shape): what
  `jax.export` lowers for a platform this machine does not have (tests/test_lowering.py)."""
  task = tasks_lib.get_task(config)
  cfg = get_config(config.model.variant,
                   **dict(configlib.model_overrides(config.model), dtype=config.dtype))
  tx, lr = optim.make_tx(config, 10_000, 100)

  def build():
    model = SqueezeBert(cfg, head=task.head, num_labels=task.num_labels,
                        rngs=nnx.Rngs(params=config.seed))
    return model, optim.make_optimizer(model, tx)

  graphdef, state = nnx.split(nnx.eval_shape(build))
  step = steps_lib.make_train_step(graphdef, task, lr, config.grad_accum_steps,
                                   finite_check=config.finite_check)
  batch = synthetic_batch(task, cfg.vocab_size, config.batch_size, config.data.max_len)
  spec = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)
  args = (state, {k: spec(v) for k, v in batch.items()},
          jax.ShapeDtypeStruct((), trainer.train_rng(config).dtype),
          jax.ShapeDtypeStruct((), np.int32))
  return step, args


def train_step_call(config, seed: int = 0, init: str = "fast"):
  """(compiled step, its initial arguments, lower+compile seconds, task, model)."""
  task, model = build(config, seed, init)
  tx, lr = optim.make_tx(config, 10_000, 100)
  optimizer = optim.make_optimizer(model, tx)
  graphdef, state = nnx.split((model, optimizer))
  mesh = Mesh()
  state = jax.device_put(state, mesh.replicated)
  step = steps_lib.make_train_step(graphdef, task, lr, config.grad_accum_steps,
                                   finite_check=config.finite_check)
  batch = mesh.put_batch(synthetic_batch(task, model.config.vocab_size, config.batch_size,
                                         config.data.max_len, seed))
  rng = trainer.train_rng(config)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch, rng, 0).compile()
  return compiled, (state, batch, rng), time.perf_counter() - t0, task, model


def time_steps(compiled, args, warmup: int, iters: int):
  """Per-step wall seconds (block_until_ready each), the donated state carried along; the
  last metrics fetched."""
  state, batch, rng = args
  step_no = 0
  for _ in range(warmup):
    state, metrics = compiled(state, batch, rng, step_no)
    step_no += 1
  jax.block_until_ready(state)
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch, rng, step_no)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
    step_no += 1
  return times, jax.tree.map(float, jax.device_get(metrics)), state


def run_train_benchmark(variant: str = "squeezebert-base", batch: int = 32, seq: int = 128,
                        dtype: str = "bfloat16", *, head: str = "classification",
                        optimizer: str = "adamw", remat: str = "none",
                        attention_impl: str = "auto", fused_qkv: bool = False,
                        rng_impl: str = "threefry", finite_check: str = "cheap",
                        grad_accum: int = 1, attention_dropout: float | None = None,
                        warmup: int = 2, iters: int = 5, seed: int = 0,
                        init: str = "fast", layers: int | None = None) -> dict:
  """Compile and time the train step of one configuration; a JSON-able dict."""
  if warmup < 0 or iters < 1:
    raise ValueError(f"need warmup >= 0 and iters >= 1, got {warmup}, {iters}")
  config = bench_config(variant, head, batch, seq, dtype, optimizer, remat, attention_impl,
                        fused_qkv, rng_impl, finite_check, grad_accum, attention_dropout, seed,
                        layers)
  trainer.validate(config)
  env = device_lib.environment()
  compiled, args, compile_s, task, model = train_step_call(config, seed, init)
  cfg, n_params = model.config, param_count(model)
  xla = xla_cost(compiled)
  times, metrics, _ = time_steps(compiled, args, warmup, iters)
  if not math.isfinite(metrics["loss"]):
    raise FloatingPointError(f"train step gave loss {metrics['loss']}")
  med = float(np.median(times))
  masked = getattr(task, "_max_pred", 0)
  fl = train_flops(cfg, task.head, seq, task.num_labels, masked)
  step_flops = fl["train_per_seq"] * batch
  peak = device_lib.peak_flops(config.dtype)
  achieved = step_flops / med
  return dict(
      mode="train", variant=variant, head=head, task=task.name, batch=batch, seq=seq,
      dtype=config.dtype, param_dtype="float32", optimizer=optimizer, remat=remat,
      attention_impl=attention_impl,
      attention=dict(train=resolve_attention_impl(
          cfg.attention_impl, dropout_active=cfg.attention_probs_dropout_prob > 0,
          dtype=cfg.dtype), eval=resolve_attention_impl(
          cfg.attention_impl, dropout_active=False, dtype=cfg.dtype)),
      attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
      fused_qkv=fused_qkv, rng_impl=rng_impl, finite_check=finite_check,
      grad_accum=grad_accum, num_layers=cfg.num_hidden_layers, params=n_params,
      masked_positions=masked or None,
      flops=dict(per_step=step_flops, per_seq=fl["train_per_seq"],
                 forward_per_seq=fl["forward_per_seq"], rule=fl["rule"],
                 xla_per_step=xla.get("flops"), xla_bytes_accessed=xla.get("bytes_accessed")),
      compile_s=compile_s, warmup=warmup, iters=iters, times_s=times,
      step_s=dict(median=med, min=float(min(times)), max=float(max(times))),
      seq_per_s=batch / med, tokens_per_s=batch * seq / med,
      tflops_per_s=achieved / 1e12,
      peak_flops=peak["flops"], peak_source=peak["source"],
      mfu=None if not peak["flops"] else achieved / peak["flops"],
      final_loss=metrics["loss"],
      memory=device_lib.memory_report(compiled, jax.devices()[0]),
      **env)


def summary(r: dict) -> str:
  mem = r["memory"]
  mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
  return (f"train {r['variant']} [{r['head']}] {r['backend']}:{r['device_kind']} {r['dtype']} "
          f"batch {r['batch']} seq {r['seq']} {r['optimizer']} remat {r['remat']} attention "
          f"{r['attention']['train']} fused_qkv {r['fused_qkv']} rng {r['rng_impl']}\n"
          f"  step {1e3 * r['step_s']['median']:.1f} ms (min {1e3 * r['step_s']['min']:.1f}) "
          f"{r['seq_per_s']:.1f} seq/s {r['tokens_per_s']:.0f} tok/s  "
          f"{r['tflops_per_s']:.2f} TFLOP/s model, MFU {mfu} of {r['peak_flops'] or 0:.3g} "
          f"({r['peak_source']})\n"
          f"  compile {r['compile_s']:.1f}s  peak memory {mem['peak_bytes'] / 2**30:.2f} GiB "
          f"({mem['peak_source']})  XLA bytes accessed "
          f"{(r['flops']['xla_bytes_accessed'] or 0) / 1e9:.1f} GB/step")


def _hf_step(cfg, batch: dict, seed: int):
  """One HF PyTorch training step (forward, backward, clip 1.0, AdamW) on `batch`, as a
  closure; the model is HF's *ForSequenceClassification of the same configuration."""
  # PyTorch's OpenMP threads spin-wait after each parallel region by default, taking the cores
  # from whatever runs next (here: our interleaved step). Set before torch loads.
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  try:
    import torch
    import transformers
  except ImportError as e:  # test-only references (the dev extra)
    raise ImportError("--compare_hf needs torch and transformers: pip install -e .[dev]") from e
  d = config_to_hf(cfg.replace(dtype="float32"), "classification", 2)
  family = d.pop("model_type")
  d.pop("architectures")
  if family == "squeezebert":
    hf_cfg, cls = transformers.SqueezeBertConfig(**d), transformers.SqueezeBertForSequenceClassification
  else:
    hf_cfg, cls = transformers.BertConfig(**d), transformers.BertForSequenceClassification
  torch.manual_seed(seed)
  model = cls(hf_cfg).train()
  opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01, eps=1e-6)
  t = {k: torch.as_tensor(np.asarray(batch[k]), dtype=torch.long)
       for k in ("input_ids", "attention_mask", "token_type_ids", "labels")}

  def step():
    opt.zero_grad(set_to_none=True)
    loss = model(**t).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return float(loss.detach())

  return step, torch.get_num_threads(), torch.__version__


def compare_hf(batch: int = 8, seq: int = 128, rounds: int = 5,
               variants=("squeezebert-base", "bert-base"), warmup: int = 1,
               seed: int = 0) -> dict:
  """Ours vs HF PyTorch training steps, fp32, AdamW, classification head, same shapes,
  timed interleaved (each round runs every step once, so host drift hits all alike).
  speedup = HF median step time / ours."""
  if rounds < 1:
    raise ValueError(f"rounds must be >= 1, got {rounds}")
  calls, info = {}, {}
  for v in variants:
    config = bench_config(v, "classification", batch, seq, "float32", "adamw", seed=seed)
    compiled, args, compile_s, task, model = train_step_call(config, seed)
    np_batch = synthetic_batch(task, model.config.vocab_size, batch, seq, seed)
    holder = {"args": args, "step": 0}

    def ours(compiled=compiled, holder=holder):
      state, b, rng = holder["args"]
      state, metrics = compiled(state, b, rng, holder["step"])
      jax.block_until_ready((state, metrics))
      holder["args"], holder["step"] = (state, b, rng), holder["step"] + 1

    hf, threads, torch_version = _hf_step(model.config, np_batch, seed)
    calls[f"ours/{v}"], calls[f"hf/{v}"] = ours, hf
    info[v] = dict(compile_s=compile_s, params=param_count(model))
  for fn in calls.values():
    for _ in range(warmup):
      fn()
  times = {k: [] for k in calls}
  for _ in range(rounds):
    for k, fn in calls.items():
      t0 = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t0)
  med = {k: float(np.median(v)) for k, v in times.items()}
  return dict(mode="train_compare_hf", batch=batch, seq=seq, dtype="float32", optimizer="adamw",
              rounds=rounds, times_s=times, median_s=med, models=info,
              speedup={v: med[f"hf/{v}"] / med[f"ours/{v}"] for v in variants},
              torch_threads=threads, torch_version=torch_version, **device_lib.environment())


def compare_hf_table(out: dict) -> str:
  lines = [f"train step, fp32 AdamW, batch {out['batch']} x seq {out['seq']}, "
           f"{out['rounds']} interleaved rounds (median s/step)"]
  for v, s in out["speedup"].items():
    lines.append(f"  {v:<18} ours {out['median_s'][f'ours/{v}']:.3f}  HF PyTorch "
                 f"{out['median_s'][f'hf/{v}']:.3f}  ours is {s:.2f}x faster")
  return "\n".join(lines)
