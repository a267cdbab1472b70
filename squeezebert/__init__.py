"""squeezebert-jax: SqueezeBERT and BERT-family encoders in JAX / Flax NNX."""

from squeezebert.load import from_pretrained
from squeezebert.predict import Pipeline, pipeline
from squeezebert.model import (HEADS, PRESETS, ModelConfig, ModelOutput, SqueezeBert,
                               build_model, get_config, param_count)

__all__ = ["HEADS", "PRESETS", "ModelConfig", "ModelOutput", "SqueezeBert", "build_model",
           "get_config", "param_count", "from_pretrained", "pipeline", "Pipeline"]
