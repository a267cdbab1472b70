"""Our model's deterministic forward as an ONNX graph, written node by node from its parameters.

Why by hand: jax2onnx lowers our einsums to broadcast Expand + Mul + ReduceSum (gigabytes per
layer at batch 8), and jax2tf -> TFLite cannot read jax 0.10's StableHLO (docs/deployment.md).
Here every projection is a real MatMul with a constant weight (float), or with an `Int8`
weight the dynamic-int8 pattern ONNX Runtime fuses into its int8 GEMM (DynamicQuantizeMatMul):

  grouped 1x1 conv (G > 1)   Split(x, G) -> G MatMul + Add -> Concat (G = 1: one MatMul)
  q, k, v with equal groups  one MatMul per group with the three kernels side by side; group
                             i holds exactly heads [i H/G, (i+1) H/G) (as the JAX split path)
  FFN with equal groups      group i of the intermediate feeds group i of the output: the
                             [B, L, 4D] intermediate is never concatenated and split again
  LayerNorm                  LayerNormalization (opset 17); GELU as x/2 (1 + erf(x/sqrt 2)),
                             which ORT fuses into its Gelu kernel
  hidden states              token-major [B*L, D] between the layers: plain 2-D GEMMs, and
                             ORT leaves residual Add + LayerNorm unfused (its
                             SkipLayerNormalization kernel measured ~4x slower here, 1.32)
Only standard ONNX ops (opset 17): ORT's fused Attention kernel (com.microsoft) per group was
measured only ~4% faster, not worth a graph that only ORT can run.
  1/sqrt(head dim)           folded into the query weights and bias

Inputs input_ids, attention_mask, token_type_ids: int64 [batch, sequence] (dynamic axes).
Outputs by head: base -> last_hidden_state [B, L, D], pooler_output [B, D];
classification / regression -> logits [B, N]; token -> logits [B, L, N]; qa -> start_logits,
end_logits [B, L].

int8 (params holding `Int8` values: squeezebert.quant's int8 model, onnx_export.int8_params):
  weights     our int8 model's integers and per-output-channel scales, unchanged (qwix's
              absmax / 127.5, range [-128, 127]); the 1/sqrt(head dim) goes into the q scales
  activations DynamicQuantizeLinear: uint8, one scale and zero point per call (per tensor, per
              group), computed on every call: nothing to calibrate, no range to carry
  matmul      MatMulInteger -> int32, times activation scale x weight scales, + bias: exactly
              what onnxruntime.quantization.quantize_dynamic writes, which ORT fuses at session
              start into DynamicQuantizeMatMul (MLAS u8 x s8, AVX-512 VNNI here)
  tables      word / position rows gathered as int8 and scaled per row (QuantizedTable)
The attention score / context matmuls (activation x activation) stay float32: quantizing
them too (ORT's MatMulConstBOnly=False) measured only ~3% faster.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from squeezebert.deploy.deps import require
from squeezebert.model.config import ModelConfig

OPSET = 17
HEADS = ("base", "classification", "regression", "token", "qa")
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclasses.dataclass
class Int8:
  """int8 values and the float32 scales that broadcast over them: a kernel [(G,) I, O] with
  scales [(G,) 1, O] (per output channel) or a table [V, D] with scales [V, 1] (per row)."""
  q: np.ndarray
  scale: np.ndarray

  def __post_init__(self):
    self.q = np.asarray(self.q, np.int8)
    self.scale = np.asarray(self.scale, np.float32)

  @property
  def shape(self):
    return self.q.shape

  def __getitem__(self, i):  # group i of a grouped kernel
    return Int8(self.q[i], self.scale[i])

  def __mul__(self, c: float):  # a constant factor goes into the scales
    return Int8(self.q, self.scale * np.float32(c))

  def dequantized(self) -> np.ndarray:
    return self.q.astype(np.float32) * self.scale


def _concat(kernels: list, axis: int = -1):
  """Float arrays or Int8 kernels side by side along the output axis."""
  if isinstance(kernels[0], Int8):
    return Int8(np.concatenate([k.q for k in kernels], axis),
                np.concatenate([k.scale for k in kernels], axis))
  return np.concatenate(kernels, axis)


def head_outputs(head: str) -> tuple[str, ...]:
  if head == "base":
    return ("last_hidden_state", "pooler_output")
  if head == "qa":
    return ("start_logits", "end_logits")
  return ("logits",)


def check_exportable(cfg: ModelConfig, head: str) -> None:
  """Clear errors for what the ONNX graph does not write."""
  if head not in HEADS:
    raise ValueError(f"the ONNX export supports heads {HEADS}, not {head!r} (use the jax.export "
                     "path, python -m squeezebert.export --format jax, for the others)")
  if cfg.separable_kernel or cfg.conv_layers:
    raise ValueError("the ONNX export does not write the depthwise sequence convolutions of "
                     "separable_kernel / conv_layers variants (use --format jax)")
  if cfg.hidden_act not in ("gelu", "gelu_new", "relu"):
    raise ValueError(f"unsupported hidden_act {cfg.hidden_act!r}")


class _Builder:
  """Accumulates nodes and initializers under unique names."""

  def __init__(self):
    self.onnx = require("onnx")
    self.nodes, self.inits, self._n = [], [], 0

  def name(self, hint: str) -> str:
    self._n += 1
    return f"{hint}_{self._n}"

  def const(self, value, hint: str) -> str:
    name = self.name(hint)
    self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(value), name))
    return name

  def op(self, op_type: str, inputs, hint: str | None = None, outputs: int = 1,
         out_names=None, **attrs):
    hint = hint or op_type.lower()
    outs = list(out_names) if out_names else [self.name(hint) for _ in range(outputs)]
    self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), outs,
                                                 name=self.name(f"{hint}/{op_type}"), **attrs))
    return outs[0] if outputs == 1 and not out_names else outs


class _Exporter:
  def __init__(self, cfg: ModelConfig, params: dict, head: str, num_labels: int):
    check_exportable(cfg, head)
    self.cfg, self.head, self.num_labels = cfg, head, num_labels
    self.p = {k: v if isinstance(v, Int8) else np.asarray(v, np.float32)
              for k, v in params.items()}
    self.b = _Builder()
    self._bl = None

  # ---------------------------------------------------------------- pieces
  def w(self, key: str, value=None, hint: str | None = None) -> str:
    return self.b.const(np.ascontiguousarray(self.p[key] if value is None else value,
                                             np.float32), hint or key.replace("/", "."))

  def dense(self, x: str, prefix: str, kernel=None, bias=None) -> str:
    kernel = self.p[f"{prefix}/kernel"] if kernel is None else kernel
    bias = self.p[f"{prefix}/bias"] if bias is None else bias
    if isinstance(kernel, Int8):
      y = self.int8_matmul(x, kernel, prefix)
    else:
      y = self.b.op("MatMul", [x, self.w(prefix, kernel, f"{prefix}/kernel")], prefix)
    return self.b.op("Add", [y, self.w(prefix, bias, f"{prefix}/bias")], prefix)

  def int8_matmul(self, x: str, kernel: Int8, prefix: str) -> str:
    """x @ kernel in ORT's dynamic-int8 form (quantize_dynamic's nodes, fused by ORT)."""
    b, out = self.b, kernel.shape[-1]
    xq, xs, xzp = b.op("DynamicQuantizeLinear", [x], prefix, outputs=3)
    scales = b.op("Mul", [xs, b.const(kernel.scale.reshape(out), f"{prefix}/kernel.scale")],
                  prefix)
    acc = b.op("MatMulInteger", [xq, b.const(kernel.q, f"{prefix}/kernel.int8"), xzp,
                                 b.const(np.zeros(out, np.int8), f"{prefix}/kernel.zero")], prefix)
    return b.op("Mul", [b.op("Cast", [acc], prefix, to=b.onnx.TensorProto.FLOAT), scales], prefix)

  def split(self, x: str, g: int, hint: str) -> list[str]:
    if g == 1:
      return [x]
    return self.b.op("Split", [x], hint, outputs=g, axis=-1)  # equal parts (opset < 18)

  def grouped(self, xs: list[str], prefix: str, kernel=None, bias=None) -> list[str]:
    """Group i's output from input slice i: [MatMul(x_i, K[i]) + b_i]."""
    kernel = self.p[f"{prefix}/kernel"] if kernel is None else kernel
    bias = self.p[f"{prefix}/bias"] if bias is None else bias
    g, co = kernel.shape[0], kernel.shape[2]
    return [self.dense(x, f"{prefix}/g{i}", kernel[i], bias[i * co:(i + 1) * co])
            for i, x in enumerate(xs)] if g > 1 else [self.dense(xs[0], prefix, kernel[0], bias)]

  def concat(self, ys: list[str], hint: str) -> str:
    return ys[0] if len(ys) == 1 else self.b.op("Concat", ys, hint, axis=-1)

  def layer_norm(self, x: str, prefix: str, eps: float) -> str:
    return self.b.op("LayerNormalization", [x, self.w(f"{prefix}/scale"), self.w(f"{prefix}/bias")],
                     prefix, axis=-1, epsilon=float(eps))

  def act(self, x: str, hint: str) -> str:
    b, name = self.b, self.cfg.hidden_act
    if name == "relu":
      return b.op("Relu", [x], hint)
    if name == "gelu":  # the Div -> Erf -> Add -> Mul -> Mul pattern ORT fuses into Gelu
      e = b.op("Erf", [b.op("Div", [x, b.const(np.float32(math.sqrt(2.0)), "sqrt2")], hint)], hint)
      h = b.op("Mul", [x, b.op("Add", [e, b.const(np.float32(1.0), "one")], hint)], hint)
      return b.op("Mul", [h, b.const(np.float32(0.5), "half")], hint)
    # gelu_new: x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    x3 = b.op("Mul", [b.op("Mul", [x, x], hint), x], hint)
    inner = b.op("Add", [x, b.op("Mul", [x3, b.const(np.float32(0.044715), "c")], hint)], hint)
    t = b.op("Tanh", [b.op("Mul", [inner, b.const(np.float32(math.sqrt(2 / math.pi)), "c")],
                           hint)], hint)
    h = b.op("Mul", [x, b.op("Add", [t, b.const(np.float32(1.0), "one")], hint)], hint)
    return b.op("Mul", [h, b.const(np.float32(0.5), "half")], hint)

  def table_rows(self, key: str, ids: str) -> str:
    """Gather of an embedding table: float, or int8 rows times their float scale."""
    table = self.p[key]
    if not isinstance(table, Int8):
      return self.b.op("Gather", [self.w(key), ids], key, axis=0)
    rows = self.b.op("Cast", [self.b.op("Gather", [self.b.const(table.q, f"{key}.int8"), ids],
                                        key, axis=0)], key, to=self.b.onnx.TensorProto.FLOAT)
    scales = self.b.op("Gather", [self.b.const(table.scale, f"{key}.scale"), ids], key, axis=0)
    return self.b.op("Mul", [rows, scales], key)

  # ---------------------------------------------------------------- model
  def embeddings(self) -> str:
    b, e = self.b, "transformer/embeddings"
    seq_len = b.op("Gather", [b.op("Shape", ["input_ids"], "shape"),
                              b.const(np.array([1], np.int64), "axis1")], "seq_len", axis=0)
    pos_ids = b.op("Range", [b.const(np.int64(0), "zero"), b.op("Squeeze", [seq_len], "len"),
                             b.const(np.int64(1), "one")], "positions")
    x = b.op("Add", [self.table_rows(f"{e}/word_embeddings", "input_ids"),
                     self.table_rows(f"{e}/position_embeddings", pos_ids)], e)
    types = b.op("Gather", [self.w(f"{e}/token_type_embeddings"), "token_type_ids"], e, axis=0)
    x = self.tokens_major(b.op("Add", [x, types], e), self.cfg.embedding_size)
    x = self.layer_norm(x, f"{e}/layer_norm", self.cfg.layer_norm_eps)
    if self.cfg.embedding_size != self.cfg.hidden_size:
      x = self.dense(x, "transformer/embedding_projection")
    return x

  def mask_bias(self) -> str:
    """[B, 1, 1, L]: 0 where attention_mask > 0, float32 min elsewhere (as the JAX model)."""
    b = self.b
    keep = b.op("Greater", ["attention_mask", b.const(np.int64(0), "zero")], "mask")
    bias = b.op("Where", [keep, b.const(np.float32(0.0), "zero"),
                          b.const(np.float32(np.finfo(np.float32).min), "fmin")], "mask")
    return b.op("Unsqueeze", [bias, b.const(np.array([1, 2], np.int64), "axes")], "mask")

  def tokens_major(self, x: str, d: int) -> str:
    """[B, L, d] -> [B*L, d]."""
    return self.b.op("Reshape", [x, self.b.const(np.array([-1, d], np.int64), "shape")], "tokens")

  def batch_major(self, x: str, *dims: int) -> str:
    """[B*L, ...] -> [B, L, *dims] (B and L read from input_ids' shape)."""
    b = self.b
    if self._bl is None:
      self._bl = b.op("Shape", ["input_ids"], "batch_seq")
    shape = b.op("Concat", [self._bl, b.const(np.array(dims, np.int64), "dims")], "shape", axis=0)
    return b.op("Reshape", [x, shape], "batch_major")

  def heads_major(self, t: str, heads: int, hint: str) -> str:
    """[B*L, h * dh] -> [B, h, L, dh]."""
    r = self.batch_major(t, heads, self.cfg.head_dim)
    return self.b.op("Transpose", [r], hint, perm=[0, 2, 1, 3])

  def attend(self, q: str, k: str, v: str, bias: str, hint: str) -> str:
    """softmax(q k^T + bias) v on heads-major q, k, v (q carries the 1/sqrt(dh) scale)."""
    b = self.b
    s = b.op("MatMul", [q, b.op("Transpose", [k], hint, perm=[0, 1, 3, 2])], hint)
    p = b.op("Softmax", [b.op("Add", [s, bias], hint)], hint, axis=-1)
    return b.op("MatMul", [p, v], hint)

  def attention(self, x: str, bias: str, pre: str) -> str:
    cfg, b = self.cfg, self.b
    d, h = cfg.hidden_size, cfg.num_attention_heads
    qs = 1.0 / math.sqrt(cfg.head_dim)
    kernels = {n: self.p[f"{pre}/attention/{n}/kernel"] for n in ("query", "key", "value")}
    biases = {n: self.p[f"{pre}/attention/{n}/bias"] for n in ("query", "key", "value")}
    kernels["query"], biases["query"] = kernels["query"] * qs, biases["query"] * qs
    groups = {n: k.shape[0] for n, k in kernels.items()}
    g = groups["query"]
    if len(set(groups.values())) == 1 and h % g == 0:
      # One [D/G, 3 D/G] MatMul per group; its q, k, v blocks are heads [i h/g, (i+1) h/g).
      co = d // g
      ks = _concat([kernels[n] for n in ("query", "key", "value")])
      bs = np.concatenate([biases[n].reshape(g, co) for n in ("query", "key", "value")], -1)
      ys = self.grouped(self.split(x, g, f"{pre}/attention"), f"{pre}/attention/qkv", ks,
                        bs.reshape(-1))
      ctx = []
      for i, y in enumerate(ys):
        q, k, v = (self.heads_major(t, h // g, f"{pre}/attention/g{i}")
                   for t in b.op("Split", [y], f"{pre}/attention", outputs=3, axis=-1))
        ctx.append(self.attend(q, k, v, bias, f"{pre}/attention/g{i}"))
      c = ctx[0] if g == 1 else b.op("Concat", ctx, f"{pre}/attention", axis=1)
    else:
      q, k, v = (self.heads_major(self.concat(self.grouped(
          self.split(x, groups[n], f"{pre}/attention/{n}"), f"{pre}/attention/{n}", kernels[n],
          biases[n]), f"{pre}/attention/{n}"), h, f"{pre}/attention/{n}")
          for n in ("query", "key", "value"))
      c = self.attend(q, k, v, bias, f"{pre}/attention")
    c = b.op("Transpose", [c], f"{pre}/attention", perm=[0, 2, 1, 3])
    return self.tokens_major(c, d)

  def block(self, x: str, bias: str, pre: str) -> str:
    cfg = self.cfg
    eps = cfg.layer_ln_eps
    att = self.attention(x, bias, pre)
    pa = f"{pre}/post_attention"
    y = self.concat(self.grouped(self.split(att, cfg.post_attention_groups, pa), f"{pa}/proj"), pa)
    h1 = self.layer_norm(self.b.op("Add", [y, x], pa), f"{pa}/layer_norm", eps)
    gi, go = cfg.intermediate_groups, cfg.output_groups
    inter = [self.act(t, f"{pre}/intermediate") for t in self.grouped(
        self.split(h1, gi, f"{pre}/intermediate"), f"{pre}/intermediate/proj")]
    if gi != go:  # group i of the intermediate feeds group i of the output only if gi == go
      inter = self.split(self.concat(inter, f"{pre}/intermediate"), go, f"{pre}/output")
    y = self.concat(self.grouped(inter, f"{pre}/output/proj"), f"{pre}/output")
    return self.layer_norm(self.b.op("Add", [y, h1], f"{pre}/output"),
                           f"{pre}/output/layer_norm", eps)

  def build(self):
    onnx, b, cfg = self.b.onnx, self.b, self.cfg
    x, bias = self.embeddings(), self.mask_bias()
    for i in range(cfg.num_hidden_layers):
      x = self.block(x, bias, f"transformer/layers/{0 if cfg.share_layers else i}")
    x = self.batch_major(x, cfg.hidden_size)
    outs = head_outputs(self.head)
    if self.head in ("base", "classification", "regression"):
      first = b.op("Gather", [x, b.const(np.int64(0), "zero")], "cls", axis=1)
      pooled = b.op("Tanh", [self.dense(first, "transformer/pooler")], "pooler")
    if self.head == "base":
      b.op("Identity", [x], out_names=["last_hidden_state"])
      b.op("Identity", [pooled], out_names=["pooler_output"])
    elif self.head in ("classification", "regression"):
      b.op("Identity", [self.dense(pooled, "classifier")], out_names=["logits"])
    elif self.head == "token":
      b.op("Identity", [self.dense(x, "classifier")], out_names=["logits"])
    else:  # qa: [B, L, 2] -> start, end [B, L]
      se = self.dense(x, "qa_outputs")
      b.op("Split", [se], "qa", axis=-1, out_names=["start", "end"])
      for src, name in (("start", "start_logits"), ("end", "end_logits")):
        b.op("Squeeze", [src, b.const(np.array([-1], np.int64), "axes")], out_names=[name])
    H = onnx.TensorProto
    ins = [onnx.helper.make_tensor_value_info(n, H.INT64, ["batch", "sequence"]) for n in INPUTS]
    shapes = dict(last_hidden_state=["batch", "sequence", cfg.hidden_size],
                  pooler_output=["batch", cfg.hidden_size],
                  logits=(["batch", "sequence", self.num_labels] if self.head == "token"
                          else ["batch", self.num_labels]),
                  start_logits=["batch", "sequence"], end_logits=["batch", "sequence"])
    outs = [onnx.helper.make_tensor_value_info(n, H.FLOAT, shapes[n]) for n in outs]
    graph = onnx.helper.make_graph(b.nodes, f"squeezebert_{self.head}", ins, outs, b.inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                   producer_name="squeezebert-jax")
    model.ir_version = min(model.ir_version, 9)  # readable by older runtimes too
    onnx.checker.check_model(model)
    return model


def build_onnx(cfg: ModelConfig, params: dict, head: str, num_labels: int = 2):
  """onnx.ModelProto of the deterministic forward; `params` is our flat '/'-joined dict
  (squeezebert.model.params.flat_params: float32 whatever the model's dtype), with `Int8`
  values for int8 kernels and tables (onnx_export.int8_params)."""
  return _Exporter(cfg, params, head, num_labels).build()
