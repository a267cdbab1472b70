"""Run by test_distributed.py in a subprocess with 8 fake CPU devices (the device count is fixed
when JAX starts, and the test process has 2). Prints one JSON line:

  fsdp: losses and max parameter difference after 3 steps, pure data parallel (data=8) vs
        FSDP (data=2, fsdp=4), and how the word embeddings were split;
  allreduce: all-reduce ops of the compiled train step with grad_accum_steps 1 and 4, in all
        and inside while loops (the micro-batch scan), and of the plain scan as a control.
"""

import json
import os
import re
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [TESTS, os.path.dirname(TESTS)]  # tests/ (conftest) and the repository

import conftest  # noqa: E402  (tests/conftest.py: the tiny config, random batches)
import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from squeezebert import tasks  # noqa: E402
from squeezebert.train import optim, setup, steps  # noqa: E402
from squeezebert.train.mesh import Mesh  # noqa: E402


def build(cfg, mesh, grad_accum, step_mesh=True):
  task = tasks.get_task(cfg)
  model = setup.build_model(cfg, task)
  tx, lr = optim.make_tx(cfg, 8, 0)
  graphdef, state = nnx.split((model, optim.make_optimizer(model, tx)))
  step = steps.make_train_step(graphdef, task, lr, grad_accum,
                               mesh=mesh if step_mesh else None)
  return graphdef, mesh.put_state(state), step


def few_steps(cfg, mesh, n=3):
  graphdef, state, step = build(cfg, mesh, 1)
  losses = []
  for i in range(n):
    state, metrics = step(state, mesh.put_batch(conftest.random_batch(16, 32, seed=i)),
                          jax.random.key(cfg.seed), i)
    losses.append(float(metrics["loss"]))
  emb = state[0]["transformer"]["embeddings"]["word_embeddings"][...]
  split = {"spec": str(emb.sharding.spec), "shard": list(emb.addressable_shards[0].data.shape),
           "shape": list(emb.shape)}
  model, _ = nnx.merge(graphdef, state)
  return losses, conftest.param_arrays(model), split


def computations(hlo: str) -> dict:
  """{computation name: its text} of an HLO module's text."""
  out, name, lines = {}, None, []
  for line in hlo.splitlines():
    m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
    if m and name is None:
      name, lines = m.group(1), []
    elif line.startswith("}") and name is not None:
      out[name] = "\n".join(lines)
      name = None
    elif name is not None:
      lines.append(line)
  return out


def allreduce_counts(hlo: str) -> tuple[int, int]:
  comps = computations(hlo)
  count = lambda text: len(re.findall(r"\ball-reduce(?:-start)?\(", text))  # noqa: E731
  called = re.compile(r"(?:calls|to_apply|body|condition|branch_computations)=\{?%?([\w.\-]+)")
  loop, todo = set(), [m for t in comps.values() for m in re.findall(r"body=%?([\w.\-]+)", t)]
  while todo:
    c = todo.pop()
    if c in loop or c not in comps:
      continue
    loop.add(c)
    todo += called.findall(comps[c])
  return count(hlo), sum(count(comps[c]) for c in loop)


def main():
  assert jax.device_count() == 8, jax.devices()
  cfg = conftest.runlocal(model__num_hidden_layers=1)  # one layer: every path, half the compile
  dp = few_steps(cfg, Mesh(data=8))
  fsdp = few_steps(cfg, Mesh(data=2, fsdp=4))
  diff = max(float(np.max(np.abs(dp[1][k] - fsdp[1][k]))) for k in dp[1])
  result = {"fsdp": {"losses_dp": dp[0], "losses_fsdp": fsdp[0], "max_param_diff": diff,
                     "embedding_dp": dp[2], "embedding_fsdp": fsdp[2]}}
  counts = {}
  mesh = Mesh(data=8)
  batch = mesh.put_batch(conftest.random_batch(64, 32))
  # "4_plain": the step not told the mesh (the plain scan over micro-batches): the control
  # showing that the count sees all-reduces inside the loop when they are there.
  for name, k, step_mesh in (("1", 1, True), ("4", 4, True), ("4_plain", 4, False)):
    _, state, step = build(cfg, mesh, k, step_mesh)
    hlo = step.lower(state, batch, jax.random.key(0), 0).compile().as_text()
    total, in_loop = allreduce_counts(hlo)
    counts[name] = {"total": total, "in_loop": in_loop}
  result["allreduce"] = counts
  print(json.dumps(result))


if __name__ == "__main__":
  main()
