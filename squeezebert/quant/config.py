"""Quantization settings (a plain, validated dataclass) and the qwix rules generated from them.

Module names (`QuantConfig.modules`) and the module paths they cover (encoder layers are a
Python loop, so every layer has its own path, e.g. `transformer/layers/3/attention/query`):

  qkv                transformer/layers/N/attention/{query,key,value}     grouped projections
  attention_matmuls  transformer/layers/N/attention/core                  QK^T and PV (act x act)
  post_attention     transformer/layers/N/post_attention/proj
  ffn                transformer/layers/N/{intermediate,output}/proj
  pooler             transformer/pooler
  head               classifier | qa_outputs | seq_relationship | cls/transform_dense
  embeddings         the embeddings' output (after LayerNorm), fake-quantized per token: no
                     matmul reads it inside the Embeddings module, so this is our own
                     fake-quant (squeezebert.quant.fake), not a qwix rule

Numerics (the same in QAT, the fake-quant oracle and the int8 model): symmetric absmax scales,
weights per output channel, activations per token (dynamic: computed on every call; static:
averaged over calibration / training batches). A grouped projection is G separate matmuls,
so its activations get one scale per (token, group) and its weights one per output channel.
"""

from __future__ import annotations

import dataclasses
from typing import Any

MODES = ("none", "qat", "ptq", "int8")
TRAINER_MODES = ("none", "qat")
WEIGHT_BITS = (4, 8)
ACT_BITS = (0, 8, 16)  # 0: weights only
ACT_MODES = ("dynamic", "static")
MODULES = ("qkv", "attention_matmuls", "post_attention", "ffn", "pooler", "head", "embeddings")
DEFAULT_MODULES = ("qkv", "attention_matmuls", "post_attention", "ffn", "pooler", "head")

_LAYER = r"transformer/layers/\d+"
# (module name, regex over the '/'-joined module path, layout of the activation operand):
# layouts decide the batch axes static ranges are averaged over (see _act_batch_axes).
_PATTERNS = {
    "qkv": (rf"{_LAYER}/attention/(query|key|value)", "grouped"),
    "attention_matmuls": (rf"{_LAYER}/attention/core", "attention"),
    "post_attention": (rf"{_LAYER}/post_attention/proj", "grouped"),
    "ffn": (rf"{_LAYER}/(intermediate|output)/proj", "grouped"),
    "pooler": (r"transformer/pooler", "pooled"),
}
# Head modules: path -> layout per head kind ('pooled' = [B, D] input, 'tokens' = [B, L, D]).
_HEAD_PATHS = {
    "classifier": {"classification": "pooled", "regression": "pooled",
                   "multiple_choice": "pooled", "token": "tokens"},
    "qa_outputs": {"qa": "tokens"},
    "seq_relationship": {"pretraining": "pooled"},
    "cls/transform_dense": {"mlm": "tokens", "pretraining": "tokens"},
}


@dataclasses.dataclass(frozen=True)
class QuantConfig:
  mode: str = "none"            # none | qat (trainer switch) | ptq | int8 (squeezebert.quant CLI)
  weight_bits: int = 8          # 8 | 4: int weights, symmetric, per output channel
  act_bits: int = 8             # 8 | 16 | 0 (weights only); 16 is simulated (fake-quant)
  act_mode: str = "dynamic"     # dynamic (per token, every call) | static (calibrated ranges)
  modules: tuple = DEFAULT_MODULES
  calib_batches: int = 32       # PTQ with static ranges: training batches to calibrate on

  def __post_init__(self):
    mods = self.modules
    if isinstance(mods, str):
      mods = tuple(m.strip() for m in mods.split(",") if m.strip())
    object.__setattr__(self, "modules", tuple(mods))
    self.validate()

  @property
  def enabled(self) -> bool:
    return self.mode != "none"

  @property
  def static(self) -> bool:
    return self.act_mode == "static"

  @property
  def tag(self) -> str:
    """e.g. 'w8a8', 'w4a8-static', 'w8' (weights only)."""
    t = f"w{self.weight_bits}" + (f"a{self.act_bits}" if self.act_bits else "")
    return t + ("-static" if self.static else "")

  def validate(self):
    def bad(msg):
      raise ValueError(f"bad quantization config ({self.describe()}): {msg}")
    if self.mode not in MODES:
      bad(f"quant.mode must be one of {MODES}, got {self.mode!r}")
    if self.weight_bits not in WEIGHT_BITS:
      bad(f"quant.weight_bits must be one of {WEIGHT_BITS}, got {self.weight_bits!r}")
    if self.act_bits not in ACT_BITS:
      bad(f"quant.act_bits must be one of {ACT_BITS} (0 = weights only), got "
          f"{self.act_bits!r}")
    if self.act_mode not in ACT_MODES:
      bad(f"quant.act_mode must be one of {ACT_MODES}, got {self.act_mode!r}")
    unknown = [m for m in self.modules if m not in MODULES]
    if unknown:
      bad(f"unknown quant.modules {unknown}; known: {MODULES}")
    if len(set(self.modules)) != len(self.modules):
      bad(f"quant.modules lists a module twice: {self.modules}")
    if self.enabled and not self.modules:
      bad("quant.modules is empty: nothing would be quantized (use quant.mode=none)")
    if self.static and self.act_bits != 8:
      bad(f"act_mode=static needs act_bits=8 (qwix's calibrated int8 ranges), got "
          f"act_bits={self.act_bits}")
    if "embeddings" in self.modules and not self.act_bits:
      bad("'embeddings' quantizes the embeddings' output activations: it needs act_bits > 0")
    if not isinstance(self.calib_batches, int) or self.calib_batches < 1:
      bad(f"quant.calib_batches must be an int >= 1, got {self.calib_batches!r}")

  def describe(self) -> str:
    return (f"mode={self.mode!r}, weight_bits={self.weight_bits!r}, act_bits={self.act_bits!r}, "
            f"act_mode={self.act_mode!r}, modules={self.modules!r}")

  def replace(self, **kw) -> "QuantConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["modules"] = ",".join(self.modules)
    return d

  @classmethod
  def from_dict(cls, d: Any) -> "QuantConfig":
    """From a dict or an ml_collections ConfigDict (e.g. `config.quant`); unknown keys are an
    error."""
    d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"unknown quantization config field(s) {unknown}; known: {sorted(names)}")
    return cls(**d)


def rule_specs(qcfg: QuantConfig, model_cfg, head: str) -> list[tuple[str, str, str]]:
  """[(module name, module-path regex, activation layout)] for the matmul modules to quantize.

  With act_bits=0 the attention matmuls (no weights) have nothing to quantize and are left out.
  """
  specs = []
  for name in qcfg.modules:
    if name == "embeddings":
      continue
    if name == "attention_matmuls" and not qcfg.act_bits:
      continue
    if name == "head":
      for path, kinds in _HEAD_PATHS.items():
        if head in kinds:
          specs.append(("head", path, kinds[head]))
      continue
    regex, layout = _PATTERNS[name]
    if layout == "grouped":
      groups = {"qkv": (model_cfg.q_groups, model_cfg.k_groups, model_cfg.v_groups),
                "post_attention": (model_cfg.post_attention_groups,),
                "ffn": (model_cfg.intermediate_groups, model_cfg.output_groups)}[name]
      # G = 1 reads x as [B, L, I]; G > 1 as group-major [G, B, L, I]. Static ranges average
      # over different axes, so mixed group counts get one rule per sub-module.
      if len(set(g > 1 for g in groups)) > 1:
        subs = {"qkv": ("query", "key", "value"), "ffn": ("intermediate", "output")}[name]
        prefix = regex.rsplit("/", 1)[0] if name == "qkv" else _LAYER
        for sub, g in zip(subs, groups):
          path = f"{prefix}/{sub}" + ("/proj" if name == "ffn" else "")
          specs.append((name, path, "group_major" if g > 1 else "tokens"))
        continue
      layout = "group_major" if groups[0] > 1 else "tokens"
    specs.append((name, regex, layout))
  return specs


def act_batch_axes(layout: str) -> tuple[int, ...]:
  """Axes a static activation range is averaged over, so that its shape depends on neither
  batch size nor sequence length (what is left is per group / per head)."""
  return {"group_major": (1, 2),   # [G, B, L, I]
          "tokens": (0, 1),        # [B, L, D]
          "pooled": (0,),          # [B, D]
          "attention": (0, 2),     # q/k/v [B, H, L, Dh], probs [B, H, Lq, Lk]
          }[layout]
