"""The package's import graph: no cycles, every import at module level, and imports point
down the layers (model <- convert/load <- data/tasks <- train <- quant/robustness/bench/export).

Parsed with `ast` (no import runs): an edge A -> B for every `import squeezebert.B` or
`from squeezebert.B import ...` in module A, function-local ones included, so a cycle cannot
hide behind a deferred import."""

import ast
import pathlib
import shutil
import subprocess

import pytest

PKG = pathlib.Path(__file__).resolve().parents[1] / "squeezebert"

# Lower layers never import higher ones. Within a layer, any acyclic order.
LAYERS = [
    {"configlib", "model", "metrics"},
    {"convert", "workdir", "quant.core", "quant.config", "quant.fake", "quant"},
    {"load"},
    {"data", "tasks"},
    {"train"},
    {"quant.cli", "robustness", "bench", "export", "deploy", "main", "cli", "assets", "predict"},
]


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in PKG.rglob("*.py"):
    parts = path.relative_to(PKG).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


def _resolve(name: str, modules) -> str | None:
  """The longest module name of the package that `name` (without 'squeezebert.') names."""
  while name and name not in modules:
    name = name.rpartition(".")[0]
  return name or None


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
  """(edges, function-local imports as 'module:line')."""
  modules = _modules()
  edges, local = {m: set() for m in modules}, []
  for mod, path in modules.items():
    tree = ast.parse(path.read_text())
    top = set(id(n) for n in tree.body)
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
      else:
        continue
      targets = {_resolve(n[len("squeezebert."):], modules) for n in names
                 if n.startswith("squeezebert.")}
      targets |= {_resolve(a.name, modules) for a in getattr(node, "names", [])
                  if isinstance(node, ast.ImportFrom) and node.module == "squeezebert"}
      targets.discard(None)
      targets.discard(mod)
      if targets and id(node) not in top:
        local.append(f"{mod}:{node.lineno}")
      edges[mod] |= targets
  return edges, local


def _layer(mod: str) -> int:
  if mod.endswith("__main__"):  # command-line entry points sit on top of everything
    return len(LAYERS) - 1
  best = None
  for i, names in enumerate(LAYERS):
    for n in names:
      if (mod == n or mod.startswith(n + ".")) and (best is None or len(n) > best[1]):
        best = (i, len(n))
  return best[0] if best else -1


def test_no_import_cycle():
  edges, _ = import_graph()
  # Package __init__ files re-export their children: an edge parent -> child is not a cycle
  # risk (the child never imports its own package's names back).
  state, cycle = {}, []

  def visit(m, stack):
    state[m] = 1
    for n in sorted(edges[m]):
      if n.startswith(m + ".") or not m:
        continue
      if state.get(n) == 1:
        cycle.append(stack[stack.index(n):] + [n] if n in stack else stack + [n])
      elif n not in state:
        visit(n, stack + [n])
    state[m] = 2

  for m in sorted(edges):
    if m not in state:
      visit(m, [m])
  assert not cycle, f"import cycles: {cycle}"


def test_no_function_local_package_imports():
  _, local = import_graph()
  assert not local, f"package imports inside functions (move them to the top): {local}"


def test_imports_point_down_the_layers():
  edges, _ = import_graph()
  up = [f"{a} -> {b}" for a, targets in edges.items() for b in targets
        if _layer(a) >= 0 and _layer(b) > _layer(a)]
  assert not up, f"imports from a lower layer into a higher one: {up}"


def test_the_checker_sees_a_cycle(tmp_path, monkeypatch):
  """The checker itself fails on a cycle (a test of the test)."""
  pkg = tmp_path / "squeezebert"
  (pkg / "a").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "a" / "__init__.py").write_text("")
  (pkg / "a" / "x.py").write_text("from squeezebert.b import y\n")
  (pkg / "b.py").write_text("def f():\n  from squeezebert.a import x\n")
  monkeypatch.setattr(__import__(__name__), "PKG", pkg)
  edges, local = import_graph()
  assert edges["a.x"] == {"b"} and "a.x" in edges["b"] and local == ["b:2"]
  with pytest.raises(AssertionError, match="import cycles"):
    test_no_import_cycle()


def test_no_unused_imports_or_undefined_names():
  """pyflakes' rules (ruff F: unused imports and variables, undefined names, redefinitions)
  over the package, the tests, the experiments and the configs."""
  ruff = shutil.which("ruff") or pytest.skip("ruff is not installed (the dev extra has it)")
  root = PKG.parent
  p = subprocess.run([ruff, "check", "--select", "F", "--output-format", "concise",
                      "squeezebert", "tests", "experiments", "configs"],
                     cwd=root, capture_output=True, text=True, timeout=120)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-1000:]
