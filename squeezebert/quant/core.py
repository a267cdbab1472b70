"""QAT models, static-range calibration, conversion to a real int8 model, and its save/load.

- `quantize_for_training(model, qcfg)`: the QAT model (qwix QtProvider; our fake-quant provider
  for 16-bit activations or as the oracle). Same parameters and checkpoint layout as the float
  model (plus qwix QuantStat variables with static ranges); straight-through gradients.
- `calibrate(qat_model, batches, n)`: static activation ranges from n forward passes.
- `to_int8(model, qcfg)`: a float or QAT model -> the int8 model (qwix PtqProvider +
  quantize_params): int8 (or int4) kernels with float32 per-output-channel scales, int8 x int8
  -> int32 matmuls (qwix's fast path), word/position embedding tables int8 with per-row scales
  (our `QuantizedTable`). It is a `SqueezeBert` called exactly like the float model and
  returning the same `ModelOutput`.
- `save_int8(model, dir, qcfg)` / `load_int8(dir)`: safetensors + squeezebert_int8.json; also
  reached through `squeezebert.from_pretrained(dir)`.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import qwix
from absl import logging
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict
from qwix._src.core import dot_general, dot_general_qt, einsum, einsum_info, qarray
from safetensors import safe_open
from safetensors.numpy import save_file

from squeezebert.model import ModelConfig, SqueezeBert
from squeezebert.model.params import (CheckpointMismatchError, join_path, read_json,
                                      read_safetensors)
from squeezebert.model.model import with_execution
from squeezebert.quant import fake
from squeezebert.quant.config import QuantConfig, act_batch_axes, rule_specs

INT8_CONFIG = "squeezebert_int8.json"
WEIGHTS = "model.safetensors"
FORMAT_VERSION = 1
_INT4_SUFFIX = "::int4"  # packed two-per-byte in the safetensors file


def ordered_einsum(einsum_str, lhs, rhs, dot_general_fn=None, preferred_element_type=None):
  """A two-operand einsum as ONE dot_general(lhs, rhs) in the caller's operand order (qwix's
  core einsum, or the given dot_general, e.g. a QT one); ellipses expanded first.

  qwix's own einsum follows opt_einsum's contraction list, which names the operands last
  first: our `x, kernel` einsums became dot(kernel, x) plus an output transpose, and XLA:CPU
  cannot fold that transpose past the int32 -> float rescaling, so the int8 dots ran on its
  slow generic path (squeezebert-base, 2 layers, batch 8 x 128, 2-core CPU: int8 3x slower
  than fp32; in this order every dot is s8 x s8 -> s32 on XLA's fast GEMM and int8 runs about
  as fast as fp32). The model keeps `x, kernel` order: qwix's PtqProvider looks for the
  weight in the second operand."""
  info = einsum_info.EinsumInfo.parse(einsum_str, ndims=(lhs.ndim, rhs.ndim))
  if preferred_element_type is None:
    _, preferred_element_type = qarray.get_accumulator_and_result_type(
        lhs, rhs, preferred_element_type=None)
  return einsum._perform_binary_einsum(  # noqa: SLF001 (qwix pinned to 0.1.8)
      lhs, rhs, f"{info.lhs},{info.rhs}->{info.out}", dot_general_fn or dot_general.dot_general,
      preferred_element_type=preferred_element_type)


def _ptq_provider(rules):
  return qwix.PtqProvider(rules, _einsum_fn=ordered_einsum)


def _qt_provider(rules):
  """qwix's QtProvider with its two-operand einsums as one dot_general in operand order (see
  `ordered_einsum`): the same numerics, and the same activation-range names as the
  PtqProvider (its lhs = the first operand), which static-range conversion relies on."""
  return _ordered_qt_provider_class()(rules)


@functools.cache
def _ordered_qt_provider_class():

  class OrderedQtProvider(qwix.QtProvider):
    def einsum(self, einsum_str, *operands, precision=None, preferred_element_type=None,
               _dot_general=jax.lax.dot_general, out_sharding=None):
      rule, op_id = self._get_current_rule_and_op_id("einsum")
      if rule is None or rule.weight_qtype is None or len(operands) != 2:
        return jnp.einsum(einsum_str, *operands, precision=precision,
                          preferred_element_type=preferred_element_type,
                          _dot_general=_dot_general, out_sharding=out_sharding)

      def qt_dot(lhs, rhs, dimension_numbers, preferred_element_type=None):
        del preferred_element_type  # as QtProvider: the result follows the inputs
        return dot_general_qt.dot_general_qt(
            lhs, rhs, dimension_numbers,
            self._create_dot_general_qt_config(rule, op_id, lhs, rhs))

      lhs, rhs = operands
      return ordered_einsum(einsum_str, lhs, rhs, qt_dot,
                            preferred_element_type=jnp.result_type(lhs, rhs))

  return OrderedQtProvider


def _qtype(bits: int):
  return {8: jnp.int8, 4: jnp.int4}[bits]


def dummy_inputs(head: str):
  """Inputs for qwix's initialising forward pass (values irrelevant; static ranges are shaped
  independently of batch size and length)."""
  ids = jnp.ones((2, 2, 8) if head == "multiple_choice" else (2, 8), jnp.int32)
  return ids, jnp.ones_like(ids), jnp.zeros_like(ids)


# ------------------------------------------------------------------ rules
def qat_rules(qcfg: QuantConfig, model_cfg: ModelConfig, head: str, oracle: bool = False):
  """qwix rules for QAT: QtRules (qwix numerics), or FakeQuantRules for 16-bit activations
  and for the oracle."""
  specs = rule_specs(qcfg, model_cfg, head)
  if oracle or qcfg.act_bits == 16:
    if qcfg.static:
      raise ValueError("the fake-quant provider has dynamic ranges only (act_mode=dynamic)")
    return [fake.make_rule(module_path=path, weight_bits=qcfg.weight_bits,
                           act_bits=qcfg.act_bits) for _, path, _ in specs]
  return [qwix.QtRule(module_path=path, weight_qtype=_qtype(qcfg.weight_bits),
                      act_qtype=jnp.int8 if qcfg.act_bits else None,
                      act_static_scale=True if qcfg.static else None,
                      act_batch_axes=act_batch_axes(layout))
          for _, path, layout in specs]


def ptq_rules(qcfg: QuantConfig, model_cfg: ModelConfig, head: str):
  """qwix rules of the int8 model. 16-bit activations are simulated in QAT only: the int8
  model keeps them float (weight-only int8)."""
  act = jnp.int8 if qcfg.act_bits == 8 else None
  return [qwix.QuantizationRule(module_path=path, weight_qtype=_qtype(qcfg.weight_bits),
                                act_qtype=act, act_static_scale=True if qcfg.static else None,
                                act_batch_axes=act_batch_axes(layout))
          for name, path, layout in rule_specs(qcfg, model_cfg, head)
          if act is not None or name != "attention_matmuls"]


def _embeddings_bits(qcfg: QuantConfig) -> int:
  return qcfg.act_bits if "embeddings" in qcfg.modules else 0


# What qwix needs: one grouped einsum per projection (the CPU default splits it into G sliced
# dots, which qwix would not see as weight dots) and no batch chunking (a lax.map body would
# hide the layers from qwix's interception and its statistics).
PLAIN = dict(grouped_layout="einsum", batch_chunk=0, fused_qkv=False)


def plain_compute(model):
  """`model` on the PLAIN execution plan (a new module sharing its parameter arrays)."""
  return with_execution(model, **PLAIN)


def _quantize(model, provider, head):
  """`model` must be on the PLAIN plan (`plain_compute`); so is the quantized copy."""
  out = qwix.quantize_model(model, provider, *dummy_inputs(head), deterministic=True)
  unused = provider.get_unused_rules()
  if unused:
    logging.warning("quantization rules that matched no module (nothing quantized there): %s",
                    [r.module_path for r in unused])
  return out


# ------------------------------------------------------------------ QAT
def quantize_for_training(model: SqueezeBert, qcfg: QuantConfig, *, oracle: bool = False):
  """The QAT model of `model` (a copy; `model` is left as it is). Its parameters are the float
  parameters (checkpoints interchangeable with the float model's, except for QuantStat
  variables under static ranges). oracle=True uses the hand-written fake-quant numerics."""
  rules = qat_rules(qcfg, model.config, model.head, oracle=oracle)
  provider = (fake.provider(rules) if oracle or qcfg.act_bits == 16
              else _qt_provider(rules))
  # qwix's initialising forward pass, traced abstractly (eagerly it compiles every op of
  # the model one by one); then the float model's arrays go back in and the static-range
  # statistics (qwix QuantStat: count + sums) start at zero, as qwix initialises them.
  plain = plain_compute(model)
  qmodel = nnx.eval_shape(lambda: _quantize(plain, provider, model.head))
  qmodel.transformer.embeddings.output_quant_bits = _embeddings_bits(qcfg)
  src = dict(nnx.to_flat_state(nnx.state(model)))
  state = nnx.state(qmodel)
  for path, var in nnx.to_flat_state(state):
    var.set_value(src[path].get_value() if path in src else
                  jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), var.get_value()))
  nnx.update(qmodel, state)
  return qmodel


def has_quant_stats(model) -> bool:
  return bool(jax.tree.leaves(nnx.state(model, qwix.QuantStat)))


def calibrate(qat_model, batches, num_batches: int) -> int:
  """Static activation ranges: runs up to `num_batches` batches (dicts with input_ids,
  attention_mask, token_type_ids) through a static-range QAT model, deterministic, updating
  its running averages. Returns the number of batches used."""
  if not has_quant_stats(qat_model):
    raise ValueError("calibrate() needs a QAT model with static ranges "
                     "(QuantConfig(act_mode='static'))")
  graphdef, stats, rest = nnx.split(qat_model, qwix.QuantStat, ...)

  @jax.jit
  def step(stats, rest, ids, mask, types):
    m = nnx.merge(graphdef, stats, rest)
    m(ids, mask, types, deterministic=True)
    return nnx.state(m, qwix.QuantStat)

  n = 0
  for batch in batches:
    if n >= num_batches:
      break
    stats = step(stats, rest, *(jnp.asarray(batch[k]) for k in
                                 ("input_ids", "attention_mask", "token_type_ids")))
    n += 1
  if n == 0:
    raise ValueError("calibrate(): no batches")
  nnx.update(qat_model, stats)
  return n


# ------------------------------------------------------------------ int8 model
class QuantizedTable(nnx.Module):
  """An int8 embedding table with one float32 scale per row; rows are gathered as int8 and
  dequantized after the gather (the layers' `embedding_rows` calls `lookup_rows`)."""

  def __init__(self, qvalue: jax.Array, scale: jax.Array):
    self.qvalue = nnx.Param(qvalue)   # [V, D] int8
    self.scale = nnx.Param(scale)     # [V, 1] float32

  @classmethod
  def from_float(cls, table) -> "QuantizedTable":
    q, scale = fake.quantize(jnp.asarray(table, jnp.float32), 8, axes=(1,))
    return cls(q.astype(jnp.int8), scale)

  @classmethod
  def abstract(cls, rows: int, dim: int) -> "QuantizedTable":
    return cls(jnp.zeros((rows, dim), jnp.int8), jnp.ones((rows, 1), jnp.float32))

  def lookup_rows(self, ids):
    rows = jnp.take(self.qvalue[...], ids, axis=0).astype(jnp.float32)
    return rows * jnp.take(self.scale[...], ids, axis=0)

  def dequantized(self):
    return self.qvalue[...].astype(jnp.float32) * self.scale[...]

  def __getitem__(self, idx):
    return self.dequantized()[idx]


_TABLES = ("word_embeddings", "position_embeddings")


def _int8_skeleton(cfg: ModelConfig, head: str, num_labels: int, qcfg: QuantConfig):
  cfg = cfg.replace(dtype="float32", param_dtype="float32", **PLAIN)
  model = SqueezeBert(cfg, head=head, num_labels=num_labels, rngs=nnx.Rngs(params=0))
  emb = model.transformer.embeddings
  for name in _TABLES:
    rows, dim = getattr(emb, name).shape
    setattr(emb, name, QuantizedTable.abstract(rows, dim))
  emb.output_quant_bits = _embeddings_bits(qcfg)
  return _quantize(model, _ptq_provider(ptq_rules(qcfg, cfg, head)), head)


def abstract_int8_model(cfg: ModelConfig, head: str, num_labels: int, qcfg: QuantConfig):
  """The int8 model's structure, every leaf a ShapeDtypeStruct (nothing computed)."""
  return nnx.eval_shape(lambda: _int8_skeleton(cfg, head, num_labels, qcfg))


def _fill(abstract_model, flat: dict, source: str):
  """Put '/'-joined arrays into an abstract model; every leaf must be given, none extra."""
  state = nnx.state(abstract_model)
  want = flatten_dict(nnx.to_pure_dict(state))
  names = {join_path(p): p for p in want}
  missing = sorted(set(names) - set(flat))
  unexpected = sorted(set(flat) - set(names))
  wrong = [f"{k}: {tuple(np.shape(flat[k]))} {np.asarray(flat[k]).dtype} -> needs "
           f"{tuple(want[names[k]].shape)} {want[names[k]].dtype}"
           for k in sorted(set(names) & set(flat))
           if (tuple(np.shape(flat[k])) != tuple(want[names[k]].shape)
               or jnp.dtype(np.asarray(flat[k]).dtype) != jnp.dtype(want[names[k]].dtype))]
  if missing or unexpected or wrong:
    raise CheckpointMismatchError(
        f"{source}: int8 weights do not fit the model:\n  missing: {missing}\n  "
        f"unexpected: {unexpected}\n  mis-shaped/typed: {wrong}")
  pure = unflatten_dict({names[k]: jnp.asarray(v) for k, v in flat.items()})
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(abstract_model, state)
  return abstract_model


def to_int8(model, qcfg: QuantConfig):
  """The int8 model of a float or QAT model. With static ranges the model must carry them
  (a static QAT model, trained or calibrated); dynamic ranges need nothing more."""
  stats = nnx.to_pure_dict(nnx.state(model, qwix.QuantStat))
  if qcfg.static and not jax.tree.leaves(stats):
    raise ValueError("act_mode=static: the model has no activation ranges; quantize_for_training"
                     "(model, qcfg) and calibrate() it first (or convert a static QAT model)")
  if not qcfg.static:
    stats = {}
  cfg = model.config
  params = flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  params = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
  tables = {name: params.pop(("transformer", "embeddings", name)) for name in _TABLES}
  abstract = abstract_int8_model(cfg, model.head, model.num_labels, qcfg)
  # Weights in one jitted call (eagerly, every parameter would compile its own small ops);
  # the static ranges eagerly (quantize_params checks their counts in Python).
  qparams = flatten_dict(jax.jit(lambda p: qwix.quantize_params(p, abstract))(
      unflatten_dict(params)))
  if stats:
    qparams.update(flatten_dict(qwix.quantize_params({}, abstract, stats)))
  flat = {join_path(k): v for k, v in qparams.items()}
  for name, table in tables.items():
    qt = QuantizedTable.from_float(table)
    flat[f"transformer/embeddings/{name}/qvalue"] = qt.qvalue[...]
    flat[f"transformer/embeddings/{name}/scale"] = qt.scale[...]
  return _fill(abstract, flat, source="to_int8")


def is_int8_model(model) -> bool:
  return isinstance(getattr(model.transformer.embeddings, "word_embeddings", None),
                    QuantizedTable)


def flat_state(model) -> dict[str, np.ndarray]:
  flat = flatten_dict(nnx.to_pure_dict(nnx.state(model)))
  return {join_path(k): np.asarray(v) for k, v in flat.items()}


def _pack_int4(x: np.ndarray) -> np.ndarray:
  v = (x.astype(np.int8).reshape(-1).astype(np.uint8)) & 0x0F
  if v.size % 2:
    v = np.concatenate([v, np.zeros(1, np.uint8)])
  return (v[0::2] | (v[1::2] << 4)).astype(np.uint8)


def _unpack_int4(packed: np.ndarray, shape) -> np.ndarray:
  lo, hi = packed & 0x0F, packed >> 4
  v = np.stack([lo, hi], axis=1).reshape(-1)[: int(np.prod(shape))].astype(np.int8)
  v = np.where(v > 7, v - 16, v).astype(np.int8)
  return v.reshape(shape).astype(ml_dtypes.int4)


def save_int8(model, out_dir: str, qcfg: QuantConfig, extra: dict | None = None,
              files: dict | None = None) -> str:
  """squeezebert_int8.json + model.safetensors (int4 values packed two per byte) + `files`
  ({name: text}, e.g. the tokenizer)."""
  if not is_int8_model(model):
    raise ValueError("save_int8 needs an int8 model (to_int8 / load_int8)")
  os.makedirs(out_dir, exist_ok=True)
  for name, text in (files or {}).items():
    with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
      f.write(text)
  arrays, int4_shapes = {}, {}
  for k, v in flat_state(model).items():
    if v.dtype.name == "int4":
      arrays[k + _INT4_SUFFIX] = _pack_int4(v)
      int4_shapes[k] = list(v.shape)
    else:
      arrays[k] = np.ascontiguousarray(v)
  save_file(arrays, os.path.join(out_dir, WEIGHTS),
            metadata={"int4_shapes": json.dumps(int4_shapes)})
  meta = dict(format="squeezebert-int8", version=FORMAT_VERSION,
              model=model.config.architecture_dict(), head=model.head, num_labels=model.num_labels,
              quant=qcfg.to_dict(), **(extra or {}))
  with open(os.path.join(out_dir, INT8_CONFIG), "w") as f:
    json.dump(meta, f, indent=2)
  return out_dir


def read_int8_meta(path: str) -> dict:
  return read_json(os.path.join(path, INT8_CONFIG))


def load_int8(path: str, head: str | None = None, num_labels: int | None = None):
  """The int8 model saved by `save_int8` (called like the float model)."""
  meta = read_int8_meta(path)
  if meta.get("version") != FORMAT_VERSION:
    raise ValueError(f"{path}: int8 format version {meta.get('version')!r}, this code reads "
                     f"{FORMAT_VERSION}")
  for name, want in (("head", head), ("num_labels", num_labels)):
    if want is not None and want != meta[name]:
      raise ValueError(f"{path}: the int8 model has {name}={meta[name]!r}, asked for {want!r} "
                       "(an int8 model cannot get a fresh head: convert the float one)")
  cfg = ModelConfig(**meta["model"])
  qcfg = QuantConfig.from_dict(meta["quant"])
  file = os.path.join(path, WEIGHTS)
  with safe_open(file, framework="numpy") as f:
    int4_shapes = json.loads((f.metadata() or {}).get("int4_shapes", "{}"))
  flat = {}
  for k, v in read_safetensors(file).items():
    if k.endswith(_INT4_SUFFIX):
      k = k[: -len(_INT4_SUFFIX)]
      v = _unpack_int4(v, int4_shapes[k])
    flat[k] = v
  model = abstract_int8_model(cfg, meta["head"], meta["num_labels"], qcfg)
  return _fill(model, flat, source=path)


def dir_bytes(path: str) -> int:
  """Bytes of the weight file(s) of a model directory."""
  return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
             if f.endswith(".safetensors"))
