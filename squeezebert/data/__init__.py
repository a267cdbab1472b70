"""GLUE input pipeline: task table and loading (glue), WordPiece (tokenizer), batches (batching)."""

from squeezebert.data.batching import (EncodedSplit, batches, encode_examples, num_batches,
                                       shard_batch_for_process)
from squeezebert.data.glue import TASKS, TaskSpec, get_task, load_examples
from squeezebert.data.tokenizer import encode, load_tokenizer, resolve_vocab


def keep_tensorflow_off_accelerators() -> None:
  """TensorFlow only reads data here (TFDS, TensorBoard events): keep it off the GPUs so JAX
  has them to itself. A no-op where TensorFlow is not installed (the TSV data paths)."""
  try:
    import tensorflow as tf  # lazy: importing TensorFlow costs seconds
  except ImportError:
    return
  tf.config.set_visible_devices([], "GPU")
