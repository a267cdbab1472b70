"""What a run trains: the model (scratch, init_from, layer reduction, re-init, QAT), the
distillation teacher and what it brings (embedding init, hidden-state projection), and the
frozen parameters. `setup_run` is called by the trainer after `validate`."""

from __future__ import annotations

import dataclasses

from absl import logging
from flax import nnx

from squeezebert import configlib, load
from squeezebert.model import ModelConfig, SqueezeBert, get_config, surgery
from squeezebert.quant import core as quant_core
from squeezebert.quant.config import QuantConfig
from squeezebert.train import distill, embed_init, optim


def quant_config(config) -> QuantConfig:
  """config.quant as a validated QuantConfig (mode none if absent)."""
  return QuantConfig.from_dict(config.quant) if "quant" in config else QuantConfig()


def distill_config(config) -> distill.DistillConfig:
  return distill.DistillConfig(alpha=config.distill.alpha,
                               temperature=config.distill.temperature,
                               hidden_weight=config.distill.hidden_weight,
                               augment_prob=config.distill.get("augment_prob", 0.0),
                               augment_copies=config.distill.get("augment_copies", 1))


def inherited_dropout_note(model_cfg: ModelConfig, overrides: dict) -> str | None:
  """A warning when a model loaded through init_from keeps a non-default dropout from its
  checkpoint (e.g. 0.0 from a pretraining run) that this run's config does not set."""
  default = ModelConfig()
  kept = [f"{k}={getattr(model_cfg, k)} (default {getattr(default, k)})"
          for k in configlib.MODEL_FLOAT_FIELDS
          if k not in overrides and getattr(model_cfg, k) != getattr(default, k)]
  if not kept:
    return None
  return (f"init_from model keeps {', '.join(kept)} from its checkpoint; set "
          "--config.model.<name> to change it")


def build_model(config, task) -> SqueezeBert:
  """The float model; with config.quant.mode=qat its QAT version (same parameters)."""
  overrides = dict(configlib.model_overrides(config.model), dtype=config.dtype)
  init_layers = config.get("init_layers", "")
  reinit = optim.path_fragments(config, "reinit_params")
  if config.init_from:
    logging.info("initialising from %s", config.init_from)
    n_layers = overrides.pop("num_hidden_layers", None) if init_layers else None
    model = load.from_pretrained(config.init_from, head=task.head, num_labels=task.num_labels,
                                 seed=config.seed,
                                 step=config.get("init_from_checkpoint", "best"), **overrides)
    note = inherited_dropout_note(model.config, overrides)
    if note:
      logging.warning("%s", note)
    if init_layers:  # layer reduction: a shallower copy (DistilBERT: every other layer)
      n_src = model.config.num_hidden_layers
      idx = surgery.layer_indices(init_layers, n_src, n_layers or n_src)
      logging.info("init_layers=%s: layers %s of %d", init_layers, idx, n_src)
      model = surgery.select_layers(model, idx, seed=config.seed)
    if reinit:  # e.g. the pooler / top layers of a pretrained model (Zhang et al. 2021)
      model, hit = surgery.reinit(model, reinit, seed=config.seed)
      logging.info("re-initialised %d parameters matching %s", len(hit), ", ".join(reinit))
  else:
    cfg = get_config(config.model.variant, **overrides)
    model = SqueezeBert(cfg, head=task.head, num_labels=task.num_labels,
                        rngs=nnx.Rngs(params=config.seed))
  qcfg = quant_config(config)
  if qcfg.mode == "qat":
    logging.info("quantization-aware training: %s", qcfg.describe())
    model = quant_core.quantize_for_training(model, qcfg)
  return model


def load_teacher(config, task, model) -> distill.Teacher:
  dcfg = distill_config(config)
  if dcfg.augment_prob > 0 and task.head not in ("classification", "regression"):
    raise ValueError(f"config.distill.augment_prob is for sentence-level tasks (GLUE); task "
                     f"{config.task!r} has head {task.head!r}")
  return distill.Teacher(config.distill.teacher, task.head, task.num_labels, model.config,
                         config.dtype, dcfg)


@dataclasses.dataclass
class Run:
  """A run's model and what trains with it."""
  model: SqueezeBert
  teacher: distill.Teacher | None = None
  projection: tuple | None = None      # (Hs, Ht) of the hidden-state projection, if any


def setup_run(config, task, saved_projection=None) -> Run:
  """Builds the model; in train mode with a teacher, loads it and applies what it brings
  (embedding init, the hidden-state projection). `saved_projection`: the projection a
  workdir's earlier run trained (eval/predict restore it from the checkpoint). Checks the
  frozen-parameter fragments before any data is read."""
  model = build_model(config, task)
  teacher, projection = None, saved_projection
  if config.mode == "train" and config.distill.teacher:
    teacher = load_teacher(config, task, model)
    if config.distill.get("embedding_init"):  # a scratch student (validate forbids init_from)
      table, covered = embed_init.teacher_table(
          model.config, teacher.model.transformer.embeddings.word_embeddings[...])
      embed_init.set_word_embeddings(model, table, covered)
      logging.info("word embeddings: %s's table projected to width %d (%d rows)",
                   teacher.path, model.config.embedding_size, int(covered.sum()))
    projection = teacher.projection_shape
  if projection:
    surgery.attach_projection(model, projection, seed=config.seed)
    logging.info("hidden-state transfer through a learned projection %s", tuple(projection))
  fragments = optim.frozen_fragments(config)
  if fragments and config.mode == "train":  # a fragment naming nothing fails before any data
    optim.frozen_labels(fragments)(nnx.state(model, nnx.Param))
    logging.info("frozen parameters (no updates): %s", ", ".join(fragments))
  return Run(model, teacher, tuple(projection) if projection else None)
