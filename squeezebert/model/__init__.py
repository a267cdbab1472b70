"""SqueezeBERT / BERT model family in Flax NNX."""
from squeezebert.model.config import PRESETS, ModelConfig, get_config, resolve_dtype
from squeezebert.model.model import (HEADS, ModelOutput, SqueezeBert, build_model, param_count,
                                     with_execution)
