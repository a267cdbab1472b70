"""The LiteRT attempt behind the runtime choice (docs/deployment.md): jax.export StableHLO at a
fixed [1, L] shape -> litert-converter 0.5.0's StableHLO -> TFL passes -> .tflite -> ai-edge-litert
2.3.0 (XNNPACK), for our float model and for squeezebert.quant's int8 model.

  python -m venv --system-site-packages /tmp/litert && /tmp/litert/bin/pip install \\
      ai-edge-litert==2.3.0 litert-converter==0.5.0     # (downgrades typing-extensions: xdsl)
  PYTHONPATH=. /tmp/litert/bin/python experiments/results/deploy_cpu/litert_attempt.py \\
      --variant squeezebert-base [--int8]

Measured (README.md here): float converts and matches (squeezebert-base [1, 128]: 85 s, 203 MB,
max abs diff 1.8e-7, ~89 ms/call on 1 thread); int8 fails in the converter: qwix's s8 x s8
dot_general is not a quantized type that tfl.fully_connected takes.
"""
import argparse
import collections
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
from ai_edge_litert.interpreter import Interpreter
from litert_converter import converter_api_ext as conv
from litert_converter.mlir import ir, passmanager

import squeezebert
from squeezebert import quant
from squeezebert.export import forward_fn
from squeezebert.quant import core

p = argparse.ArgumentParser()
p.add_argument("--variant", default="tiny")
p.add_argument("--seq", type=int, default=128)
p.add_argument("--int8", action="store_true")
a = p.parse_args()
cfg = squeezebert.get_config(a.variant, batch_chunk=0)
seq = min(a.seq, cfg.max_position_embeddings)
model = squeezebert.build_model(cfg, head="classification")
if a.int8:
  model = core.to_int8(model, quant.QuantConfig(mode="int8"))
fwd = forward_fn(model)
spec = [jax.ShapeDtypeStruct((1, seq), jnp.int32)] * 3
text = jax.export.export(jax.jit(lambda i, m, t: fwd(i, m, t)["logits"]))(*spec).mlir_module()
t0 = time.time()
with ir.Context() as ctx:
  conv.prepare_mlir_context(ctx)
  module = ir.Module.parse(text)
  conv.run_convert_to_tfl_passes(module, passmanager.PassManager(), conv.ConvertToTFLConfig())
  ops = collections.Counter(re.findall(r"tfl\.(\w+)", str(module)))
  flatbuffer = conv.export_flatbuffer_to_bytes(module.operation)
print(f"converted in {time.time() - t0:.1f} s: {len(flatbuffer) / 1e6:.1f} MB; ops {ops.most_common(8)}")
interp = Interpreter(model_content=flatbuffer, num_threads=1)
interp.allocate_tensors()
ids = np.random.default_rng(0).integers(1, min(cfg.vocab_size, 30522), (1, seq)).astype(np.int32)
for d, v in zip(interp.get_input_details(), (ids, np.ones_like(ids), np.zeros_like(ids))):
  interp.set_tensor(d["index"], v)
interp.invoke()
got = interp.get_tensor(interp.get_output_details()[0]["index"])
ref = np.asarray(fwd(ids, np.ones_like(ids), np.zeros_like(ids))["logits"])
t0 = time.perf_counter()
for _ in range(5):
  interp.invoke()
print(f"max abs diff vs JAX {np.max(np.abs(got - ref)):.3g}; "
      f"{(time.perf_counter() - t0) / 5 * 1e3:.1f} ms/call (1 thread)")
