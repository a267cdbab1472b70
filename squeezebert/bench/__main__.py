"""python -m squeezebert.bench: inference or training benchmarks, JSON out (--json FILE).

  --variant squeezebert-base --batch 32 --seq 128 [--dtype bf16]  inference latency
  --compare --rounds 16 | --quant int8        vs bert-base | fp32 / bf16 / int8
  --mode train --dtype bf16 --batch 256       the trainer's step: MFU, memory
  --mode train --compare_hf --batch 8         ours vs HF PyTorch, interleaved (CPU)
  --runtime onnx [--wait_idle_s 1200]         deploy: JAX fp32/int8 vs the ONNX Runtime float
                                              and int8 exports vs HF PyTorch fp32/int8 BERT-base,
                                              1 and 2 threads, batch 1 and 8 (squeezebert.deploy)
CPU code paths (layouts, batch chunks): squeezebert.bench.compare_paths, docs/performance.md.
"""

import json
import os

from absl import app, flags

from squeezebert import cli
from squeezebert.bench import inference, train
from squeezebert.deploy import bench as deploy_bench
from squeezebert.model.config import ATTENTION_IMPLS, REMAT_POLICIES

flags.DEFINE_enum("mode", "inference", ["inference", "train"], "what to time")
flags.DEFINE_string("variant", "squeezebert-base", "model preset")
flags.DEFINE_integer("batch", 32, "global batch size")
flags.DEFINE_integer("seq", 128, "sequence length")
flags.DEFINE_string("dtype", "float32", "compute dtype: float32 | bfloat16 (bf16)")
flags.DEFINE_integer("layers", None, "override num_hidden_layers")
flags.DEFINE_string("head", None, "head (inference: base; train: classification|pretraining)")
flags.DEFINE_integer("warmup", 2, "untimed calls after compilation")
flags.DEFINE_integer("iters", 5, "timed calls")
flags.DEFINE_string("json", None, "write the result here")
flags.DEFINE_bool("compare", False, "inference: squeezebert-base vs bert-base, latency ratio")
flags.DEFINE_integer("rounds", 0, "--compare/--compare_hf: interleaved timing rounds")
flags.DEFINE_enum("quant", "none", sorted(inference.QUANT),
                  "inference: fp32, bf16 and this quantized model side by side")
flags.DEFINE_enum("optimizer", "adamw", ["adamw", "lamb"], "train: optimizer")
flags.DEFINE_enum("remat", "none", list(REMAT_POLICIES), "train: layer rematerialization")
flags.DEFINE_enum("attention_impl", "auto", list(ATTENTION_IMPLS), "attention kernel")
flags.DEFINE_bool("fused_qkv", False, "train: one fused q/k/v projection")
flags.DEFINE_enum("rng_impl", "threefry", ["threefry", "rbg", "unsafe_rbg"], "train: PRNG")
flags.DEFINE_float("attention_dropout", None, "train: attention_probs_dropout_prob override")
flags.DEFINE_bool("compare_hf", False, "train: time HF PyTorch's steps interleaved (CPU)")
flags.DEFINE_enum("runtime", "jax", ["jax", "onnx"],
                  "inference: onnx = the deploy rows (squeezebert.deploy.bench)")
flags.DEFINE_list("deploy_batches", ["1", "8"], "--runtime onnx: batch sizes")
flags.DEFINE_list("deploy_threads", ["1", "2"], "--runtime onnx: thread counts (pinned cores)")
flags.DEFINE_integer("wait_idle_s", 0, "--runtime onnx: first wait up to this long for the "
                     "1-minute load average to fall below 1")
F = flags.FLAGS


def _train():
  if F.compare_hf:
    out = train.compare_hf(F.batch, F.seq, rounds=F.rounds or 5, warmup=F.warmup)
    print(train.compare_hf_table(out))
    return out
  out = train.run_train_benchmark(
      F.variant, F.batch, F.seq, F.dtype, head=F.head or "classification",
      optimizer=F.optimizer, remat=F.remat, attention_impl=F.attention_impl,
      fused_qkv=F.fused_qkv, rng_impl=F.rng_impl, attention_dropout=F.attention_dropout,
      warmup=F.warmup, iters=F.iters, layers=F.layers)
  print(train.summary(out))
  return out


def _inference():
  kw = dict(head=F.head or "base", layers=F.layers, warmup=F.warmup, iters=F.iters)
  if F.quant != "none" and F.compare:
    raise app.UsageError("--quant and --compare are separate comparisons: give one")
  if F.quant != "none":
    out = inference.compare_quant(F.variant, F.batch, F.seq, F.quant, **kw)
    for r in out["results"].values():
      print(inference.summary(r))
    print(inference.quant_table(out))
  elif F.compare:
    out = inference.compare(F.batch, F.seq, F.dtype, rounds=F.rounds, **kw)
    for r in out["results"].values():
      print(inference.summary(r))
    print(f"latency ratio {out['latency_ratio']:.3f} ({out['timing']}); analytic FLOPs ratio "
          f"{out['flops_ratio']:.3f}")
  else:
    out = inference.run_benchmark(F.variant, F.batch, F.seq, F.dtype,
                                  attention_impl=F.attention_impl, **kw)
    print(inference.summary(out))
  return out


def _deploy():
  if F.mode != "inference" or F.quant != "none" or F.compare:
    raise app.UsageError("--runtime onnx is its own comparison (inference; no --quant/--compare)")
  out = deploy_bench.run(F.variant, [int(b) for b in F.deploy_batches],
                         [int(t) for t in F.deploy_threads], F.seq, rounds=F.rounds or 10,
                         warmup=F.warmup, wait_idle_s=F.wait_idle_s)
  print(deploy_bench.table(out))
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if F.mode == "inference" and (F.compare_hf or F.remat != "none" or F.fused_qkv):
    raise app.UsageError("--compare_hf, --remat and --fused_qkv are --mode train options")
  if F.runtime == "onnx":
    out = _deploy()
  else:
    out = _train() if F.mode == "train" else _inference()
  if F.json:
    os.makedirs(os.path.dirname(os.path.abspath(F.json)), exist_ok=True)
    with open(F.json, "w") as fh:
      json.dump(out, fh, indent=2)
    print(f"wrote {F.json}")


if __name__ == "__main__":
  cli.run(main)
