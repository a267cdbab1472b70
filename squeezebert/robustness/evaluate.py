"""Robustness of a trained GLUE classifier: dev accuracy under text noise and a HotFlip attack.

Everything goes through the trainer's own pieces: the run's saved config and tokenizer, the
GLUE loader, `encode_examples`, and the eval loop (squeezebert.train.evaluate), so the
clean figure equals the run's own dev metric.
"""

from __future__ import annotations

import json
import os
import time

from absl import logging

from squeezebert import load, tasks as tasks_lib
from squeezebert import workdir as workdir_lib
from squeezebert.data import batching, glue
from squeezebert.quant.core import is_int8_model
from squeezebert.robustness import attack as attack_lib
from squeezebert.robustness import noise as noise_lib
from squeezebert.train.evaluate import evaluate_model

ATTACKS = tuple(noise_lib.NOISES) + ("hotflip",)
DEFAULT_RATES = (0.05, 0.1, 0.2)


def _texts(ex: dict, kind: str, rate: float, seed: int) -> dict:
  out = dict(ex)
  for key in ("text_a", "text_b"):
    if ex.get(key) is not None:
      out[key] = [noise_lib.noise_text(kind, str(t), rate, seed, key=int(i) * 2 + (key == "text_b"))
                  for t, i in zip(ex[key], ex["idx"])]
  return out


def run(workdir: str, attacks=ATTACKS, rates=DEFAULT_RATES, seed: int = 0, budget: int = 3,
        limit: int = 0, model_dir: str | None = None, split: str | None = None) -> dict:
  """Evaluates the best checkpoint of `workdir` (or `model_dir`, e.g. its int8 model: the
  attack then transfers gradients from the workdir's float model)."""
  bad = sorted(set(attacks) - set(ATTACKS))
  if bad:
    raise ValueError(f"unknown attack(s) {bad}; known: {list(ATTACKS)}")
  for r in rates:
    if not 0.0 < r <= 1.0:
      raise ValueError(f"noise rates must be in (0, 1], got {r}")
  config = workdir_lib.read_train_config(workdir)
  task = tasks_lib.get_task(config)
  if not isinstance(task, tasks_lib.GlueTask) or task.head != "classification":
    raise ValueError(f"robustness evaluation needs a GLUE classification run; {workdir} is "
                     f"task {task.name} ({task.head})")
  split = split or task.eval_splits[0]
  float_model = load.load_workdir(workdir)
  model = load.from_pretrained(model_dir) if model_dir else float_model
  d = config.data
  ex = glue.load_examples(task.spec, split, data_dir=d.tfds_data_dir or None, source=d.source,
                          tsv_dir=d.tsv_dir or None)
  if limit > 0:
    ex = {k: (v[:limit] if v is not None else None) for k, v in ex.items()}

  def accuracy(examples) -> float:
    enc = batching.encode_examples(task.spec, examples, task.tokenizer, d.max_len,
                                   allow_empty=True)
    m = evaluate_model(model, task, config, {split: enc})
    return float(m["accuracy"])

  t0 = time.time()
  res = dict(workdir=os.path.abspath(workdir), model=os.path.abspath(model_dir or workdir),
             model_kind="int8" if is_int8_model(model) else "float",
             task=task.name, split=split, examples=len(ex["idx"]), seed=seed,
             rates=list(rates), clean_accuracy=accuracy(ex), noise={})
  for kind in attacks:
    if kind == "hotflip":
      continue
    res["noise"][kind] = {str(r): accuracy(_texts(ex, kind, r, seed)) for r in rates}
    logging.info("%s: %s", kind, res["noise"][kind])
  if "hotflip" in attacks:
    enc = batching.encode_examples(task.spec, ex, task.tokenizer, d.max_len)
    vocab = task.tokenizer.get_vocab()
    specials = [vocab[t] for t in ("[CLS]", "[SEP]", "[PAD]") if t in vocab]
    hf = attack_lib.HotFlip(float_model, model if model_dir else None, special_ids=specials,
                            excluded=attack_lib.excluded_tokens(vocab, float_model.config.vocab_size))
    parts = [hf.attack_batch(b, budget) for b in batching.batches(
        enc, min(config.batch_size, 16), shuffle=False, drop_remainder=False,
        bucket_boundaries=tuple(d.bucket_boundaries))]
    res["hotflip"] = dict(budget=budget, **attack_lib.summarize(parts))
    logging.info("hotflip: %s", res["hotflip"])
  res["seconds"] = time.time() - t0
  return res


def table(res: dict) -> str:
  rates = res["rates"]
  lines = [f"clean accuracy: {100 * res['clean_accuracy']:.2f}% ({res['task']}/{res['split']}, "
           f"{res['examples']} examples, {res['model_kind']})", "",
           "| noise | " + " | ".join(f"rate {r}" for r in rates) + " |",
           "|---|" + "---|" * len(rates)]
  for kind, by_rate in res["noise"].items():
    lines.append(f"| {kind} | " + " | ".join(f"{100 * by_rate[str(r)]:.2f}" for r in rates) + " |")
  if "hotflip" in res:
    h = res["hotflip"]
    lines += ["", f"HotFlip (budget {h['budget']} flips): success rate "
              f"{100 * h['attack_success_rate']:.1f}% of correctly classified examples, accuracy "
              f"under attack {100 * h['accuracy_under_attack']:.2f}%, mean loss "
              f"{h['mean_loss_before']:.3f} -> {h['mean_loss_after']:.3f}"]
  return "\n".join(lines) + "\n"


def write(res: dict, out: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(res, f, indent=2, default=lambda x: x.item() if hasattr(x, "item") else str(x))
  with open(os.path.splitext(out)[0] + ".md", "w") as f:
    f.write(table(res))
