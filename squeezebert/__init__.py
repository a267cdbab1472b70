"""squeezebert-jax: SqueezeBERT and BERT-family encoders in JAX / Flax NNX."""
from squeezebert.model import (HEADS, PRESETS, ModelConfig, ModelOutput, SqueezeBert,
                               build_model, get_config, param_count)


def from_pretrained(path, head=None, num_labels=None, **kw):
  """Load an HF checkpoint directory (SqueezeBERT or BERT) or one of our checkpoints."""
  from squeezebert.convert import from_pretrained as _fp
  return _fp(path, head=head, num_labels=num_labels, **kw)


__all__ = ["HEADS", "PRESETS", "ModelConfig", "ModelOutput", "SqueezeBert", "build_model",
           "get_config", "param_count", "from_pretrained"]
