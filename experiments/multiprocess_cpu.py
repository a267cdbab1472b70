"""Steps/s of one SST-2 fine-tune as 1 process x 1 device, 1 process x 2 devices and 2 processes
x 1 device (JAX's multi-controller runtime on localhost, gloo collectives) on this CPU.

  python experiments/multiprocess_cpu.py --out experiments/results/multiprocess_cpu

Needs the TFDS copy of glue/sst2 ($TFDS_DATA_DIR). The same global batch, seed and data shards
(data.shards=2) in every setting, so the runs train the same model; steps/s is the median of the
logged windows after the first (which holds the compile).
"""

import argparse
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def cmd(workdir, args):
  return [sys.executable, "-m", "squeezebert.main",
          f"--config={REPO / 'configs' / 'glue.py'}:task=sst2,variant={args.variant}",
          f"--config.num_train_steps={args.steps}", f"--config.eval_every_steps={args.steps}",
          f"--config.batch_size={args.batch}", f"--config.data.max_len={args.max_len}",
          "--config.log_every_steps=10", "--config.data.shards=2",
          "--config.data.eval_limit=256", "--config.progress_bar=False",
          f"--workdir={workdir}"]


def env(devices, process=None, port=None):
  e = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
           JAX_PLATFORMS="cpu")
  for v in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    e.pop(v, None)
  if process is not None:
    e.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
             JAX_PROCESS_ID=str(process))
  return e


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run(name, workdir, args, processes, devices):
  shutil.rmtree(workdir, ignore_errors=True)
  t0 = time.time()
  port = free_port()
  procs = [subprocess.Popen(cmd(workdir, args), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=open(f"{workdir}.p{i}.log", "w"),
                            env=env(devices, i if processes > 1 else None, port))
           for i in range(processes)]
  codes = [p.wait() for p in procs]
  if any(codes):
    raise SystemExit(f"{name}: exit codes {codes}; see {workdir}.p*.log")
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  train = [r for r in rows if r["split"] == "train"]
  final = json.loads((workdir / "final_metrics.json").read_text())
  sps = sorted(r["steps_per_sec"] for r in train[1:])
  return dict(name=name, processes=processes, devices_per_process=devices,
              steps_per_sec=sps[len(sps) // 2], wall_s=round(time.time() - t0, 1),
              final_loss=train[-1]["loss"], accuracy=final.get("accuracy"))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="experiments/results/multiprocess_cpu")
  ap.add_argument("--variant", default="squeezebert-small")
  ap.add_argument("--steps", type=int, default=60)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--max_len", type=int, default=64)
  ap.add_argument("--tmp", default="/tmp/sqb_multiprocess")
  args = ap.parse_args()
  tmp = pathlib.Path(args.tmp)
  tmp.mkdir(parents=True, exist_ok=True)
  load = os.getloadavg()[0]
  rows = [run("1 process x 1 device", tmp / "p1d1", args, 1, 1),
          run("1 process x 2 devices", tmp / "p1d2", args, 1, 2),
          run("2 processes x 1 device", tmp / "p2d1", args, 2, 1)]
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  result = dict(args=vars(args), cpu_count=os.cpu_count(), load_before=load,
                load_after=os.getloadavg()[0], rows=rows)
  (out / "multiprocess_cpu.json").write_text(json.dumps(result, indent=2))
  for r in rows:
    print(f"{r['name']:>24}: {r['steps_per_sec']:.2f} steps/s, wall {r['wall_s']} s, "
          f"final loss {r['final_loss']:.4f}, accuracy {r['accuracy']}")


if __name__ == "__main__":
  main()
