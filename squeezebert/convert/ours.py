"""Our own model directory: squeezebert_jax.json (config, head, labels) + model.safetensors
('/'-joined parameter paths). Holds every variant, including those HF has no class for."""

from __future__ import annotations

import json
import os

from safetensors.numpy import save_file

from squeezebert.model import ModelConfig, SqueezeBert
from squeezebert.model.params import (abstract_model, flat_params, load_params_into, read_json,
                                      read_safetensors, write_files)

OURS_CONFIG = "squeezebert_jax.json"


def save_pretrained(model: SqueezeBert, out_dir: str, extra: dict | None = None,
                    files: dict | None = None) -> str:
  """Our own directory: squeezebert_jax.json (config, head, labels, `extra`) +
  model.safetensors ('/'-joined param paths) + `files` ({name: text}, e.g. the tokenizer)."""
  os.makedirs(out_dir, exist_ok=True)
  write_files(out_dir, files)
  save_file(flat_params(model), os.path.join(out_dir, "model.safetensors"))
  meta = dict(model=model.config.architecture_dict(), head=model.head, num_labels=model.num_labels,
              **(extra or {}))
  with open(os.path.join(out_dir, OURS_CONFIG), "w") as f:
    json.dump(meta, f, indent=2)
  return out_dir


def load_ours(path: str, head: str | None = None, num_labels: int | None = None,
              seed: int = 0, **config_overrides) -> SqueezeBert:
  meta = read_json(os.path.join(path, OURS_CONFIG))
  cfg = ModelConfig(**{**meta["model"], **config_overrides})
  head = head or meta["head"]
  num_labels = num_labels or meta["num_labels"]
  model = abstract_model(cfg, head, num_labels, seed)
  load_params_into(model, read_safetensors(os.path.join(path, "model.safetensors")), source=path,
                   seed=seed)
  return model




def is_ours_dir(path: str) -> bool:
  return os.path.exists(os.path.join(path, OURS_CONFIG))
