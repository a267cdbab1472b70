"""Dev-set agreement of the ONNX exports with our JAX models (a classification workdir).

    python -m squeezebert.deploy.check --workdir RUN --onnx DIR --onnx_int8 DIR8 \\
        [--int8 INT8_DIR] [--json OUT]

Over the task's dev split, in the trainer's eval batches (32 rows, padded to the bucket
length; ORT's dynamic int8 scales are per tensor, so the int8 export is also run one sentence
at a time, unpadded, as a device would): the float export's max abs logit error vs the JAX
float model, every model's accuracy, and how often the int8 export's predictions agree with our
int8 model (squeezebert.quant: --int8, e.g. `python -m squeezebert.quant --mode ptq`) and with
the float model.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import flags
from flax import nnx

from squeezebert import cli
from squeezebert import tasks as tasks_lib
from squeezebert import workdir as workdir_lib
from squeezebert.data import batching
from squeezebert.deploy import onnx_export
from squeezebert.load import from_pretrained


def _jax_logits(model):
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda s, i, m, t: nnx.merge(graphdef, s)(i, m, t, deterministic=True).logits)
  return lambda i, m, t: np.asarray(fn(state, i, m, t))


def dev_logits(workdir: str, onnx_dirs: dict, int8_dir: str | None = None,
               split: str | None = None) -> dict:
  """{'labels': [N], 'jax_float': [N, C], 'jax_int8': ..., '<onnx name>': ...,
  '<onnx name>_b1': ...} over the dev split's real rows (b1: one unpadded sentence a call)."""
  config = workdir_lib.read_train_config(workdir)
  task = tasks_lib.get_task(config)
  if task.head != "classification":
    raise ValueError(f"the deploy check compares class predictions; {task.name} has head "
                     f"{task.head!r}")
  enc = task.load(split or task.eval_splits[0])
  jax_fns = {"jax_float": _jax_logits(from_pretrained(workdir))}
  if int8_dir:
    jax_fns["jax_int8"] = _jax_logits(from_pretrained(int8_dir))
  sessions = {name: onnx_export.session(d) for name, d in onnx_dirs.items()}
  out = {k: [] for k in ["labels", *jax_fns, *sessions, *(f"{n}_b1" for n in sessions)]}
  for batch in batching.batches(enc, config.batch_size, shuffle=False, drop_remainder=False,
                                bucket_boundaries=tuple(config.data.bucket_boundaries)):
    real = batch["example_weight"] > 0
    ids, mask, types = (batch[k] for k in ("input_ids", "attention_mask", "token_type_ids"))
    out["labels"].append(batch["labels"][real])
    for name, fn in jax_fns.items():
      out[name].append(fn(ids, mask, types)[real])
    for name, sess in sessions.items():
      out[name].append(onnx_export.run(sess, ids, mask, types)["logits"][real])
      rows = []
      for r in np.flatnonzero(real):
        n = int(mask[r].sum())
        rows.append(onnx_export.run(sess, ids[r:r + 1, :n], mask[r:r + 1, :n],
                                    types[r:r + 1, :n])["logits"][0])
      out[f"{name}_b1"].append(np.stack(rows))
  return {k: np.concatenate(v) for k, v in out.items()}


def summarize(logits: dict) -> dict:
  """Accuracies, agreements and logit errors of dev_logits' output."""
  labels = logits.pop("labels")
  preds = {k: v.argmax(-1) for k, v in logits.items()}
  res = dict(examples=int(len(labels)),
             accuracy={k: float(np.mean(p == labels)) for k, p in preds.items()})
  agree = {}
  for name in logits:
    if name.startswith("onnx"):
      for ref in ("jax_float", "jax_int8"):
        if ref in preds:
          agree[f"{name} vs {ref}"] = float(np.mean(preds[name] == preds[ref]))
  res["prediction_agreement"] = agree
  res["max_abs_logit_error_vs_jax_float"] = {
      k: float(np.max(np.abs(v - logits["jax_float"]))) for k, v in logits.items()
      if k.startswith("onnx")}
  return res


def main(argv):
  del argv
  f = flags.FLAGS
  onnx_dirs = {"onnx_float": f.onnx}
  if f.onnx_int8:
    onnx_dirs["onnx_int8"] = f.onnx_int8
  res = summarize(dev_logits(f.workdir, onnx_dirs, f.int8))
  res.update(workdir=os.path.abspath(f.workdir), onnx=os.path.abspath(f.onnx),
             onnx_int8=f.onnx_int8 and os.path.abspath(f.onnx_int8),
             int8=f.int8 and os.path.abspath(f.int8))
  text = json.dumps(res, indent=2)
  print(text)
  if f.json:
    os.makedirs(os.path.dirname(os.path.abspath(f.json)), exist_ok=True)
    with open(f.json, "w") as fh:
      fh.write(text + "\n")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "classification training workdir", required=True)
  flags.DEFINE_string("onnx", None, "float ONNX export dir", required=True)
  flags.DEFINE_string("onnx_int8", None, "int8 ONNX export dir")
  flags.DEFINE_string("int8", None, "our int8 model dir (python -m squeezebert.quant)")
  flags.DEFINE_string("json", None, "write the result here")
  cli.run(main)
