"""GLUE input pipeline: task table and loading (glue), WordPiece (tokenizer), batches (batching)."""

from squeezebert.data.batching import (EncodedSplit, batches, encode_examples, num_batches,
                                       shard_batch_for_process)
from squeezebert.data.glue import TASKS, TaskSpec, get_task, load_examples
from squeezebert.data.tokenizer import encode, load_tokenizer, resolve_vocab
