"""An ONNX deploy directory: model.onnx (float32 or int8) + deploy.json + the tokenizer files.

    DIR/model.onnx             the graph (squeezebert.deploy.onnx_graph), int8 with --quant int8
    DIR/deploy.json            inputs, outputs, head, labels, max_len, quantization, source
    DIR/tokenizer.json, vocab.txt, tokenizer_config.json, special_tokens_map.json
The labels also sit in model.onnx's metadata (key "labels", a JSON list), so the graph alone
still names its classes. A device needs only onnxruntime + tokenizers (README: "Deploy on a
device").
"""

from __future__ import annotations

import json
import os

import numpy as np

from squeezebert import assets as assets_lib
from squeezebert.deploy import onnx_graph
from squeezebert.deploy.deps import require
from squeezebert.model.params import flat_params, float_model, write_files
from squeezebert.quant import core as quant_core
from squeezebert.quant.config import QuantConfig

MODEL = "model.onnx"
META = "deploy.json"
QUANTS = ("none", "int8")


def export_onnx(model, out_dir: str, quant: str = "none",
                assets: assets_lib.Assets | None = None, source: str = "") -> dict:
  """Writes the deploy directory of `model` (a float or QAT SqueezeBert) to out_dir; returns
  the deploy.json contents."""
  if quant not in QUANTS:
    raise ValueError(f"quant must be one of {QUANTS}, got {quant!r}")
  onnx = require("onnx")
  if not quant_core.is_int8_model(model):
    model = float_model(model)  # a QAT model's parameters without its quantizers
    if quant == "int8":  # squeezebert.quant's int8 model: its integers go into the graph
      model = quant_core.to_int8(model, QuantConfig(mode="int8"))
  if quant_core.is_int8_model(model):
    params = int8_params(model)
    if quant == "none":  # an int8 directory exported float: its weights dequantized
      params = {k: v.dequantized() if isinstance(v, onnx_graph.Int8) else v
                for k, v in params.items()}
  else:
    params = flat_params(model)
  cfg = model.config
  proto = onnx_graph.build_onnx(cfg, params, model.head, model.num_labels)
  labels = list(assets.labels) if assets is not None and assets.labels else None
  meta = dict(format="onnx", runtime="onnxruntime", opset=onnx_graph.OPSET, quant=quant,
              head=model.head, num_labels=model.num_labels, labels=labels,
              max_len=assets.max_len if assets is not None else cfg.max_position_embeddings,
              lowercase=assets.lowercase if assets is not None else True,
              inputs=list(onnx_graph.INPUTS), input_dtype="int64",
              outputs=list(onnx_graph.head_outputs(model.head)),
              max_position_embeddings=cfg.max_position_embeddings,
              model=cfg.architecture_dict(), source=source)
  for key in ("labels", "head", "quant"):
    entry = proto.metadata_props.add()
    entry.key, entry.value = key, json.dumps(meta[key])
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, MODEL)
  onnx.save(proto, path)
  meta["bytes"] = os.path.getsize(path)
  if assets is not None:
    write_files(out_dir, assets.files())
  with open(os.path.join(out_dir, META), "w") as f:
    json.dump(meta, f, indent=2)
  return meta


def int8_params(int8_model) -> dict:
  """squeezebert.quant's int8 model as the graph builder's params: its int8 kernels and
  tables as onnx_graph.Int8 (integers and scales unchanged), everything else float. Works for
  an int8 directory too, e.g. one converted from a QAT run (`--mode int8`)."""
  flat = quant_core.flat_state(int8_model)
  out, pairs = {}, set()
  for k, v in flat.items():
    if k.endswith("/qvalue"):  # qwix kernels (.../kernel/array/qvalue), QuantizedTable rows
      scale = k[: -len("qvalue")] + "scale"
      out[k[: -len("/qvalue")].removesuffix("/array")] = onnx_graph.Int8(v, flat[scale])
      pairs |= {k, scale}
  out.update({k: v for k, v in flat.items() if k not in pairs})
  return out


def session(out_dir_or_file: str, threads: int = 0, spin: bool = True):
  """An onnxruntime CPU InferenceSession (all graph optimizations; threads 0: ORT's default;
  spin=False: idle worker threads sleep instead of spinning, for benchmarks that interleave
  runtimes)."""
  ort = require("onnxruntime")
  path = out_dir_or_file
  if os.path.isdir(path):
    path = os.path.join(path, MODEL)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: not a `python -m squeezebert.export --format "
                            "onnx` output")
  so = ort.SessionOptions()
  so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
  if threads:
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
  if not spin:
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
  so.log_severity_level = 3
  return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def run(sess, input_ids, attention_mask=None, token_type_ids=None) -> dict:
  """{output name: numpy array} of one batch ([B, L] inputs, any integer dtype)."""
  ids = np.asarray(input_ids, np.int64)
  if ids.ndim != 2:
    raise ValueError(f"expected [B, L] input_ids, got shape {ids.shape}")
  mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, np.int64)
  types = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids, np.int64)
  names = [o.name for o in sess.get_outputs()]
  outs = sess.run(names, dict(input_ids=ids, attention_mask=mask, token_type_ids=types))
  return dict(zip(names, outs))
