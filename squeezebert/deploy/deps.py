"""The deploy path's optional packages: imported on use, with the exact install command when
missing (they live in the `export` extra, never in the package's base dependencies)."""

from __future__ import annotations

import importlib

# module -> pip requirement of the `export` extra (pyproject.toml)
PACKAGES = {"onnx": "onnx>=1.17", "onnxruntime": "onnxruntime>=1.20"}
INSTALL = 'pip install -e ".[export]"   (or: pip install ' + " ".join(
    f'"{r}"' for r in PACKAGES.values()) + ")"


class MissingDependency(ImportError, RuntimeError):
  """An optional deploy package is not installed (the message says what to pip install). A
  RuntimeError too, so command-line tools (squeezebert.cli) print it as one line."""


def require(module: str):
  """The imported `module` (onnx, onnxruntime, onnxruntime.quantization, ...), or a
  MissingDependency naming the pip command."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    top = module.split(".")[0]
    raise MissingDependency(
        f"the ONNX export/runtime needs the '{top}' package ({e}); install it with:\n  "
        f"{INSTALL}") from None


def available() -> bool:
  """True when every package of the export extra imports."""
  try:
    for m in PACKAGES:
      require(m)
  except MissingDependency:
    return False
  return True
