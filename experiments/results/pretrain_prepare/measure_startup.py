"""Start-up data cost of one process of a 2-process pretraining run (max_len 128): reading its
prepared shards (data.prepared_dir) vs tokenizing and packing its half of the corpus itself
(no cache). Prints one JSON line.

  python experiments/results/pretrain_prepare/measure_startup.py PREPARED_DIR CORPUS_DIR TFDS_DIR
"""

import json
import resource
import sys
import tempfile
import time

from squeezebert import configlib
from squeezebert.tasks.pretrain import PretrainTask


def main(prepared, corpus_dir, tfds_dir):
  cfg = configlib.load_config("configs/pretrain.py:recipe=paper")
  cfg.data.corpus_dir, cfg.data.tfds_data_dir = corpus_dir, tfds_dir
  cfg.data.eval_limit = 0
  out = {}
  cfg.data.prepared_dir = prepared
  for shard in ((0, 1), (0, 2)):
    t = time.time()
    enc = PretrainTask(cfg).load("train", shard)
    out[f"read_prepared_train_shard_{shard[0]}_of_{shard[1]}"] = {
        "seconds": round(time.time() - t, 2), "sequences": len(enc)}
  cfg.data.prepared_dir = ""
  with tempfile.TemporaryDirectory() as cache:
    cfg.data.cache_dir = cache
    t = time.time()
    enc = PretrainTask(cfg).load("train", (0, 2))
    out["pack_at_startup_train_shard_0_of_2"] = {"seconds": round(time.time() - t, 2),
                                                 "sequences": len(enc)}
  out["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
  print(json.dumps(out))


if __name__ == "__main__":
  main(*sys.argv[1:4])
