"""int8 in ONNX Runtime's own kernels: `quantize_dynamic` of the float graph.

What it makes (measured in experiments/results/deploy_cpu): every MatMul with a constant weight
becomes DynamicQuantizeLinear + MatMulInteger + scale, which ORT fuses at session start into
DynamicQuantizeMatMul (its MLAS u8 x s8 GEMM, AVX-512 VNNI here):
  weights     int8, symmetric, one scale per output channel = absmax / 127: the same integers
              and scales as squeezebert.quant's int8 model (qwix, per output channel)
  activations uint8, asymmetric, one scale per call (per tensor and per group of a grouped
              projection), computed on every call: nothing to calibrate, no QAT range to carry
  tables      the word and position embeddings int8 with one scale per row (built into the
              graph by onnx_graph, table_bits=8), as squeezebert.quant's QuantizedTable
The attention score and context matmuls (activation x activation) stay float32
(MatMulConstBOnly): quantizing them too was measured only ~3% faster.
"""

from __future__ import annotations

import logging
import os

from squeezebert.deploy.deps import require


def quantize_int8(float_path: str, out_path: str) -> str:
  """Writes the int8 model of the float ONNX model at float_path (from build_onnx with
  table_bits=8) to out_path."""
  q = require("onnxruntime.quantization")
  root = logging.getLogger()
  level = root.level
  root.setLevel(logging.ERROR)  # ORT's advice to pre-process (shape inference) is noise here
  try:
    q.quantize_dynamic(float_path, out_path, op_types_to_quantize=["MatMul"], per_channel=True,
                       weight_type=q.QuantType.QInt8,
                       extra_options={"MatMulConstBOnly": True, "WeightSymmetric": True})
  finally:
    root.setLevel(level)
  if not os.path.exists(out_path):
    raise RuntimeError(f"onnxruntime.quantization wrote no model to {out_path}")
  return out_path
