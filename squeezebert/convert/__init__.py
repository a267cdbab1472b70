"""Checkpoint formats: HF (SqueezeBERT / BERT) <-> ours (`hf`), and our own model directory
(`ours`). Loading any of them, or a training workdir, is `squeezebert.load.from_pretrained`."""

from squeezebert.convert.hf import (config_from_hf, config_to_hf, export_hf, from_hf, is_hf_dir,
                                    load_hf_state, read_hf_weights)
from squeezebert.convert.ours import OURS_CONFIG, is_ours_dir, load_ours, save_pretrained
from squeezebert.model.params import CheckpointMismatchError, flat_params, load_params_into
