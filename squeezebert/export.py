"""Exports: `jax.export` StableHLO for servers (default), ONNX for devices.

    python -m squeezebert.export --model RUN_OR_MODEL_DIR --out DIR [--batch 0 --seq 0]
    fn = squeezebert.export.load(DIR)              # in any process; needs only jax
    outputs = fn(input_ids, attention_mask, token_type_ids)   # dict of numpy arrays

    python -m squeezebert.export --format onnx [--quant int8] --model RUN --out DIR
    # DIR/model.onnx + deploy.json + tokenizer files: runs on onnxruntime alone (no JAX);
    # squeezebert.deploy, docs/deployment.md. Needs pip install -e ".[export]".

--model takes anything `squeezebert.from_pretrained` loads: a training workdir (best
checkpoint), our model dir, an int8 model dir (squeezebert.quant) or an HF dir. Batch and
sequence length are symbolic by default (0), so one artifact serves every shape up to the
model's max_position_embeddings; give --batch/--seq to fix them. DIR gets model.jaxexport (the
serialized jax.export.Exported: StableHLO + calling convention), export.json (input and output
names, shapes, platforms, the source) and, with --check, check.npz (inputs and the outputs of
the in-process model, which `load` reproduces exactly).

The StableHLO artifact is what IREE / XLA serving take. TFLite is not produced: jax2tf's
SavedModel holds an XlaCallModule whose StableHLO TF's converter cannot read (measured,
docs/deployment.md); the on-device format is ONNX (--format onnx), int8 in ONNX Runtime's
own kernels with --quant int8.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from squeezebert import cli
from squeezebert import assets as assets_lib
from squeezebert.deploy import onnx_export
from squeezebert.load import from_pretrained as load_model
from squeezebert.model.params import write_files
from squeezebert.quant import core as quant_core

ARTIFACT = "model.jaxexport"
META = "export.json"
OUTPUT_NAMES = ("last_hidden_state", "pooler_output", "logits", "start_logits", "end_logits",
                "sop_logits")


def _outputs(out) -> dict:
  return {k: getattr(out, k) for k in OUTPUT_NAMES if getattr(out, k, None) is not None}


def forward_fn(model):
  """fn(ids, mask, types) -> dict of outputs, the weights closed over (constants): what is
  exported; `jax.jit` of it is the in-process reference."""
  graphdef, state = nnx.split(model)

  def forward(ids, mask, types):
    return _outputs(nnx.merge(graphdef, state)(ids, mask, types, deterministic=True))

  return forward


def export_model(model, out_dir: str, batch: int = 0, seq: int = 0,
                 platforms: tuple[str, ...] | None = None, source: str = "",
                 assets: assets_lib.Assets | None = None) -> dict:
  """Exports the deterministic forward of `model` (weights as constants) to out_dir, with the
  tokenizer files and label names of `assets` (the source's, see squeezebert.assets)."""
  cfg = model.config
  if seq > cfg.max_position_embeddings:
    raise ValueError(f"seq {seq} > max_position_embeddings {cfg.max_position_embeddings}")
  if model.head == "multiple_choice":
    raise ValueError("export of the multiple_choice head ([B, C, L] inputs) is not supported")
  forward = forward_fn(model)
  if batch and seq:
    shape = (batch, seq)
  else:
    b = str(batch) if batch else "b"
    l = str(seq) if seq else "l"
    # The model checks L <= max_position_embeddings: the constraint lets that check pass.
    shape = jax.export.symbolic_shape(
        f"{b}, {l}", constraints=() if seq else (f"{l} <= {cfg.max_position_embeddings}",))
  args = [jax.ShapeDtypeStruct(shape, jnp.int32) for _ in range(3)]
  kw = {"platforms": platforms} if platforms else {}
  exp = jax.export.export(jax.jit(forward), **kw)(*args)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, ARTIFACT), "wb") as f:
    f.write(exp.serialize())
  meta = dict(inputs=["input_ids", "attention_mask", "token_type_ids"],
              input_shape=[str(d) for d in shape], input_dtype="int32",
              outputs=sorted(exp.out_tree.unflatten(range(len(exp.out_avals))).keys()),
              platforms=list(exp.platforms), head=model.head, num_labels=model.num_labels,
              max_position_embeddings=cfg.max_position_embeddings, source=source,
              jax_version=jax.__version__)
  if assets is not None:
    meta.update(labels=list(assets.labels) if assets.labels else None, max_len=assets.max_len)
    write_files(out_dir, assets.files())
  with open(os.path.join(out_dir, META), "w") as f:
    json.dump(meta, f, indent=2)
  return meta


def load(out_dir: str):
  """The exported forward as fn(input_ids, attention_mask=None, token_type_ids=None) -> dict
  of numpy arrays; needs no squeezebert model code."""
  path = os.path.join(out_dir, ARTIFACT)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: not a `python -m squeezebert.export` output")
  with open(path, "rb") as f:
    exp = jax.export.deserialize(bytearray(f.read()))

  def fn(input_ids, attention_mask=None, token_type_ids=None):
    ids = np.asarray(input_ids, np.int32)
    if ids.ndim != 2:
      raise ValueError(f"expected [B, L] input_ids, got shape {ids.shape}")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, np.int32)
    types = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids, np.int32)
    return jax.tree.map(np.asarray, exp.call(ids, mask, types))

  return fn


def check_onnx(model, out_dir: str, batch: int, seq: int) -> dict:
  """ONNX Runtime vs the in-process JAX model on a random batch (one padded row): max abs
  difference per output and, for logits, how often the argmax agrees."""
  rng = np.random.default_rng(0)
  ids = rng.integers(1, min(model.config.vocab_size, 30522), (batch, seq)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[0, seq // 2:] = 0
  types = np.zeros_like(ids)
  ref = jax.tree.map(np.asarray, jax.jit(forward_fn(model))(ids, mask, types))
  got = onnx_export.run(onnx_export.session(out_dir), ids, mask, types)
  out = {f"max_abs_diff/{k}": float(np.max(np.abs(ref[k] - got[k]))) for k in got}
  if "logits" in got:
    out["argmax_agreement"] = float(np.mean(ref["logits"].argmax(-1) == got["logits"].argmax(-1)))
  return out


def main_onnx(f, model):
  if f.batch or f.seq:
    raise ValueError("--batch/--seq fix jax.export shapes; the ONNX graph takes any batch and "
                     "length (dynamic axes)")
  meta = onnx_export.export_onnx(model, f.out, f.quant, assets=assets_lib.of(f.model),
                                 source=os.path.abspath(f.model))
  if f.check:
    res = check_onnx(model, f.out, 4, min(32, model.config.max_position_embeddings))
    what = (f"{'int8 ' if f.quant == 'int8' else ''}ONNX vs the "
            f"{'int8' if quant_core.is_int8_model(model) else 'float'} JAX model")
    print(f"check ({what}): " + ", ".join(f"{k} {v:.3g}" for k, v in res.items()))
  print(json.dumps({k: v for k, v in meta.items() if k != "model"}, indent=2))


def main(argv):
  del argv
  f = flags.FLAGS
  model = load_model(f.model)
  if f.format == "onnx":
    return main_onnx(f, model)
  if f.quant != "none":
    raise ValueError("--quant int8 is an ONNX option; for an int8 jax.export artifact export "
                     "an int8 model directory (python -m squeezebert.quant ... --out DIR, then "
                     "--model DIR)")
  meta = export_model(model, f.out, f.batch, f.seq, source=os.path.abspath(f.model),
                      assets=assets_lib.of(f.model))
  if f.check:
    rng = np.random.default_rng(0)
    b, l = f.batch or 2, f.seq or 16
    ids = rng.integers(1, min(model.config.vocab_size, 30522), (b, l)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, l // 2:] = 0
    types = np.zeros_like(ids)
    ref = jax.tree.map(np.asarray, jax.jit(forward_fn(model))(ids, mask, types))
    got = load(f.out)(ids, mask, types)
    diff = max(float(np.max(np.abs(ref[k] - got[k]))) for k in ref)
    np.savez(os.path.join(f.out, "check.npz"), input_ids=ids, attention_mask=mask,
             token_type_ids=types, **{f"out_{k}": v for k, v in ref.items()})
    print(f"check: max abs difference exported vs in-process jit = {diff:.3g}")
  print(json.dumps(meta, indent=2))


if __name__ == "__main__":
  flags.DEFINE_string("model", None, "workdir / model dir / int8 dir / HF dir", required=True)
  flags.DEFINE_string("out", None, "output directory", required=True)
  flags.DEFINE_integer("batch", 0, "fixed batch size (0: symbolic)")
  flags.DEFINE_integer("seq", 0, "fixed sequence length (0: symbolic)")
  flags.DEFINE_bool("check", True, "compare exported vs in-process outputs (jax: save check.npz)")
  flags.DEFINE_enum("format", "jax", ["jax", "onnx"],
                    "jax: jax.export StableHLO (servers); onnx: ONNX Runtime (devices)")
  flags.DEFINE_enum("quant", "none", list(onnx_export.QUANTS),
                    "onnx: int8 weights per channel, dynamic int8 activations (ORT kernels)")
  cli.run(main)
