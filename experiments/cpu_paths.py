"""The CPU code paths of one model (grouped layout x batch chunk x chunk streams), timed
interleaved: every round calls each compiled path once, so a drifting shared host hits all
of them alike (docs/performance.md).

  python experiments/cpu_paths.py --variant squeezebert-base --batch 32 --seq 128 \
      --rounds 20 --json paths.json
  python experiments/cpu_paths.py --variant squeezebert-base --layout einsum --batch_chunk 0
      # one path, timed like `python -m squeezebert.bench`
"""

import argparse
import json

from squeezebert.bench import inference


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--variant", default="squeezebert-base")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--seq", type=int, default=128)
  ap.add_argument("--rounds", type=int, default=10)
  ap.add_argument("--layout", default=None, help="time this grouped layout only")
  ap.add_argument("--batch_chunk", default="auto", help="with --layout: auto | 0 | N")
  ap.add_argument("--json", default=None)
  a = ap.parse_args()
  if a.layout:
    chunk = a.batch_chunk if a.batch_chunk == "auto" else int(a.batch_chunk)
    out = inference.run_benchmark(a.variant, a.batch, a.seq, layout=a.layout,
                                  batch_chunk=chunk, iters=a.rounds)
    print(inference.summary(out))
  else:
    out = inference.compare_paths(a.variant, a.batch, a.seq, a.rounds)
    for k in out["median"]:
      print(f"{a.variant} {k:24s} median {out['median'][k]:7.2f}  min {out['min'][k]:7.2f} "
            "ms/seq")
  if a.json:
    with open(a.json, "w") as f:
      json.dump(out, f, indent=2)


if __name__ == "__main__":
  main()
