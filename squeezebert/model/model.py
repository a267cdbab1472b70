"""The encoder and its task heads: one class, `SqueezeBert(cfg, head=...)`.

BERT is the same code with every group count 1 (ModelConfig preset `bert-base`).
Module names follow HF where that makes the checkpoint mapping obvious
(`transformer`, `cls`, `classifier`, `qa_outputs`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from squeezebert.model.config import EXECUTION_FIELDS, ModelConfig, resolve_dtype
from squeezebert.model.layers import Block, Dropout, Embeddings, activation, dense, layer_norm

# Sequences per chunk of deterministic CPU calls (ModelConfig.batch_chunk="auto"): measured on
# a 2-core EPYC at seq 128, chunks of 4-8 beat the whole batch of 32 by ~10% (docs/performance.md).
CPU_BATCH_CHUNK = 8

HEADS = ("base", "mlm", "pretraining", "classification", "regression", "token", "qa",
         "multiple_choice")


@struct.dataclass
class ModelOutput:
  last_hidden_state: jax.Array
  pooler_output: jax.Array
  logits: jax.Array | None = None        # the head's main logits (MLM, class, token, choice)
  start_logits: jax.Array | None = None  # QA
  end_logits: jax.Array | None = None    # QA
  sop_logits: jax.Array | None = None    # sentence-order prediction (pretraining head)
  hidden_states: tuple | None = None     # embeddings output + every layer, if asked for


def check_inputs(cfg: ModelConfig, ids, mask, types) -> None:
  """Clear errors for inputs the model would turn into NaN or wrong rows silently: shapes that
  differ, ids outside [0, vocab_size), token types outside [0, type_vocab_size). The range
  checks run on concrete arrays only (eager calls, the entry points that feed jit: no cost
  inside a compiled step)."""
  if not (ids.shape == mask.shape == types.shape):
    raise ValueError(f"input_ids {ids.shape}, attention_mask {mask.shape} and token_type_ids "
                     f"{types.shape} must have the same shape")
  for name, arr, hi in (("input_ids", ids, cfg.vocab_size),
                        ("token_type_ids", types, cfg.type_vocab_size)):
    if isinstance(arr, jax.core.Tracer) or arr.size == 0:
      continue
    if not jnp.issubdtype(arr.dtype, jnp.integer):
      raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    host = np.asarray(arr)  # numpy: no op is staged into an enclosing trace
    lo_v, hi_v = int(host.min()), int(host.max())
    if lo_v < 0 or hi_v >= hi:
      raise ValueError(f"{name} must lie in [0, {hi}); got values from {lo_v} to {hi_v}")


def attention_bias(mask_BxL: jax.Array) -> jax.Array:
  """0/1 mask -> additive [B, 1, 1, L] bias (0 or float32 min, as HF does)."""
  return jnp.where(mask_BxL[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)


class Encoder(nnx.Module):
  """Embeddings + a Python loop over `nnx.List` layers + pooler (HF SqueezeBertModel)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.embeddings = Embeddings(cfg, rngs=rngs)
    # ALBERT-like factorized embedding: [V, E] table, then an E -> H projection.
    self.embedding_projection = (dense(cfg.embedding_size, cfg.hidden_size, cfg, rngs)
                                 if cfg.embedding_size != cfg.hidden_size else None)
    # share_layers: one Block (one set of arrays) applied num_hidden_layers times.
    n_blocks = 1 if cfg.share_layers else cfg.num_hidden_layers
    self.layers = nnx.List([Block(cfg, i, rngs=rngs) for i in range(n_blocks)])
    self.num_layers = cfg.num_hidden_layers
    self.remat = cfg.remat
    self.pooler = dense(cfg.hidden_size, cfg.hidden_size, cfg, rngs)
    # Deterministic calls run the layer stack on chunks of this many sequences, one chunk
    # after another (lax.map): the [chunk, H, L, L] scores and [chunk, L, 4D] FFN activations
    # stay cache-sized, where the whole batch's stream through memory. Same values (row
    # independent). "auto": CPU_BATCH_CHUNK on a single CPU device, off elsewhere; 0: off.
    self.batch_chunk = cfg.batch_chunk
    # Each step of the chunk loop runs this many chunks as independent chains (a batch of 32
    # in chunks of 8: one step, no loop). XLA:CPU's executor then runs one chain's small
    # single-threaded fusions (slices, LayerNorm, softmax) next to another chain's GEMMs.
    self.chunk_streams = cfg.chunk_streams

  def __call__(self, ids_BxL, mask_BxL, type_ids_BxL, *, deterministic, rngs,
               output_hidden_states=False, inputs_embeds=None):
    bias = attention_bias(mask_BxL)
    x_BxLxD = self.embeddings(ids_BxL, type_ids_BxL, deterministic=deterministic, rngs=rngs,
                              inputs_embeds=inputs_embeds)
    if self.embedding_projection is not None:
      x_BxLxD = self.embedding_projection(x_BxLxD)
    chunk = self.chunk_size(x_BxLxD.shape[0]) if deterministic else 0
    if chunk:
      x_BxLxD, hidden = self._chunked_layers(x_BxLxD, bias, chunk)
    else:
      hidden = self._layers(x_BxLxD, bias, deterministic, rngs)
      x_BxLxD = hidden[-1]
    pooled_BxD = jnp.tanh(self.pooler(x_BxLxD[:, 0]))
    return x_BxLxD, pooled_BxD, (tuple(hidden) if output_hidden_states else None)

  def _layers(self, x_BxLxD, bias, deterministic, rngs) -> list:
    """[input, output of layer 1, ..., output of the last layer]."""
    hidden = [x_BxLxD]
    remat = self.remat != "none" and not deterministic  # only a backward pass gains from it
    for i in range(self.num_layers):
      layer = self.layers[0 if len(self.layers) == 1 else i]
      if remat:
        hidden.append(_remat_layer(self.remat)(layer, hidden[-1], bias, rngs))
      else:
        hidden.append(layer(hidden[-1], bias, deterministic=deterministic, rngs=rngs))
    return hidden

  def chunk_size(self, batch) -> int:
    """Sequences per chunk of a deterministic call on `batch` sequences (0: no chunking).
    The largest divisor of `batch` up to the chunk setting; none for symbolic batch sizes
    (jax.export) or when no divisor of at least half the setting exists."""
    c = self.batch_chunk
    if c == "auto":  # one CPU device (a sharded batch would be serialised across devices)
      c = CPU_BATCH_CHUNK if jax.default_backend() == "cpu" and jax.device_count() == 1 else 0
    if not c or not isinstance(batch, int) or batch <= c:
      return 0
    d = c
    while batch % d:
      d -= 1
    return d if 2 * d >= c else 0

  def _chunked_layers(self, x_BxLxD, bias, chunk):
    b = x_BxLxD.shape[0]
    streams = max(d for d in range(1, self.chunk_streams + 1) if (b // chunk) % d == 0)
    graphdef, state = nnx.split(self.layers)  # merged inside the map body (its trace level)

    def run(xs):
      """The layer stack on `streams` chunks, each its own chain (no data dependence)."""
      x, bias_c = xs
      self_layers = nnx.merge(graphdef, state)
      hs = [x[i * chunk:(i + 1) * chunk] for i in range(streams)]
      bs = [bias_c[i * chunk:(i + 1) * chunk] for i in range(streams)]
      hidden = [x]
      for i in range(self.num_layers):
        layer = self_layers[0 if len(self_layers) == 1 else i]
        hs = [layer(h, bb, deterministic=True, rngs=None) for h, bb in zip(hs, bs)]
        hidden.append(hs[0] if streams == 1 else jnp.concatenate(hs))
      return hidden

    step = chunk * streams
    if step == b:
      hidden = run((x_BxLxD, bias))
    else:
      split = lambda a: a.reshape(b // step, step, *a.shape[1:])
      hidden = jax.lax.map(run, (split(x_BxLxD), split(bias)))
      hidden = [h.reshape(b, *h.shape[2:]) for h in hidden]
    return hidden[-1], hidden


# ModelConfig.remat -> jax.checkpoint policy (None: save only the layer's inputs).
REMAT_POLICY = {"full": None, "dots_saveable": jax.checkpoint_policies.dots_saveable}


def _train_layer(layer, x_BxLxD, bias, rngs):
  return layer(x_BxLxD, bias, deterministic=False, rngs=rngs)


def _remat_layer(name: str):
  """A training call of one layer whose activations the backward pass recomputes (policy
  `name`); the dropout masks come from the same Rngs draws, so gradients are unchanged."""
  return nnx.remat(_train_layer, policy=REMAT_POLICY[name])


class MLMHead(nnx.Module):
  """transform (dense, GELU, LN) then logits against the tied word embeddings + own bias."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    # H -> E (= H except for factorized embeddings, as ALBERT) so logits use the tied [V, E].
    self.transform_dense = dense(cfg.hidden_size, cfg.embedding_size, cfg, rngs)
    self.transform_layer_norm = layer_norm(cfg.embedding_size, cfg.layer_norm_eps, cfg, rngs)
    self.act = cfg.hidden_act
    self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), resolve_dtype(cfg.param_dtype)))
    self.dtype = resolve_dtype(cfg.dtype)

  def __call__(self, x_BxLxD, word_embeddings_VxD):
    h = self.transform_layer_norm(activation(self.act)(self.transform_dense(x_BxLxD)).astype(jnp.float32))
    h = h.astype(self.dtype)
    logits = jnp.einsum("...d,vd->...v", h, word_embeddings_VxD.astype(self.dtype))
    return logits + self.bias[...].astype(self.dtype)


class SqueezeBert(nnx.Module):
  """Encoder + one task head.

  Call: model(input_ids, attention_mask=None, token_type_ids=None, *, rngs=None,
  deterministic=None, output_hidden_states=False, masked_positions=None,
  inputs_embeds=None). inputs_embeds [B, L, E] replaces the word-embedding lookup of
  input_ids (which still give the shape). Dropout is on
  only when `deterministic` is False (default: on iff
  `rngs` is given). `rngs` is an `nnx.Rngs` or a PRNG key; it is never stored.
  multiple_choice takes [B, C, L] inputs and returns logits [B, C].
  """

  def __init__(self, cfg: ModelConfig, head: str = "base", num_labels: int = 2, *,
               rngs: nnx.Rngs):
    if head not in HEADS:
      raise ValueError(f"unknown head {head!r}; known: {HEADS}")
    if head == "regression":
      num_labels = 1
    if head in ("classification", "token") and num_labels < 1:
      raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    self.config, self.head, self.num_labels = cfg, head, num_labels
    self.transformer = Encoder(cfg, rngs=rngs)
    d = cfg.hidden_size
    if head in ("mlm", "pretraining"):
      self.cls = MLMHead(cfg, rngs=rngs)
    if head == "pretraining":
      self.seq_relationship = dense(d, 2, cfg, rngs)
    if head in ("classification", "regression", "token", "multiple_choice"):
      self.dropout = Dropout(cfg.hidden_dropout_prob)
      self.classifier = dense(d, 1 if head == "multiple_choice" else num_labels, cfg, rngs)
    if head == "qa":
      self.qa_outputs = dense(d, 2, cfg, rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, rngs=None,
               deterministic: bool | None = None, output_hidden_states: bool = False,
               masked_positions=None, inputs_embeds=None) -> ModelOutput:
    if deterministic is None:
      deterministic = rngs is None
    if rngs is not None and not isinstance(rngs, nnx.Rngs):
      rngs = nnx.Rngs(dropout=rngs)
    input_ids = jnp.asarray(input_ids)
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    attention_mask, token_type_ids = jnp.asarray(attention_mask), jnp.asarray(token_type_ids)
    check_inputs(self.config, input_ids, attention_mask, token_type_ids)
    if input_ids.shape[-1] > self.config.max_position_embeddings:
      raise ValueError(f"sequence length {input_ids.shape[-1]} exceeds max_position_embeddings "
                       f"{self.config.max_position_embeddings}")
    choices = None
    if self.head == "multiple_choice":
      if input_ids.ndim != 3:
        raise ValueError(f"multiple_choice expects [B, C, L] inputs, got {input_ids.shape}")
      choices = input_ids.shape[1]
      flat = lambda a: jnp.asarray(a).reshape(-1, a.shape[-1])
      input_ids, attention_mask, token_type_ids = map(flat, (input_ids, attention_mask,
                                                             token_type_ids))
    elif input_ids.ndim != 2:
      raise ValueError(f"expected [B, L] inputs, got shape {input_ids.shape}")

    kw = dict(deterministic=deterministic, rngs=rngs)
    if inputs_embeds is not None and self.head == "multiple_choice":
      raise ValueError("inputs_embeds is not supported with the multiple_choice head")
    seq, pooled, hidden = self.transformer(input_ids, attention_mask, token_type_ids,
                                           output_hidden_states=output_hidden_states,
                                           inputs_embeds=inputs_embeds, **kw)
    out = dict(last_hidden_state=seq, pooler_output=pooled, hidden_states=hidden)
    if self.head in ("mlm", "pretraining"):
      # masked_positions [B, P]: MLM logits only there ([B, P, V]); at L=128 the full
      # [B, L, V] vocabulary projection would cost more than a small encoder.
      mlm_in = seq if masked_positions is None else jnp.take_along_axis(
          seq, jnp.asarray(masked_positions)[..., None], axis=1)
      out["logits"] = self.cls(mlm_in, self.transformer.embeddings.word_embeddings[...])
    if self.head == "pretraining":
      out["sop_logits"] = self.seq_relationship(pooled)
    if self.head in ("classification", "regression"):
      out["logits"] = self.classifier(self.dropout(pooled, **kw))
    if self.head == "token":
      out["logits"] = self.classifier(self.dropout(seq, **kw))
    if self.head == "multiple_choice":
      out["logits"] = self.classifier(self.dropout(pooled, **kw)).reshape(-1, choices)
    if self.head == "qa":
      se = self.qa_outputs(seq)
      out["start_logits"], out["end_logits"] = se[..., 0], se[..., 1]
    return ModelOutput(**out)


def with_execution(model: SqueezeBert, **fields) -> SqueezeBert:
  """The same model on another execution plan (ModelConfig.EXECUTION_FIELDS, e.g.
  grouped_layout="einsum", batch_chunk=0): a new module holding the same parameter arrays;
  `model` itself is left as it is."""
  bad = sorted(set(fields) - set(EXECUTION_FIELDS))
  if bad:
    raise ValueError(f"with_execution changes only {EXECUTION_FIELDS}, got {bad}")
  cfg = model.config.replace(**fields)
  new = nnx.eval_shape(lambda: SqueezeBert(cfg, head=model.head, num_labels=model.num_labels,
                                           rngs=nnx.Rngs(params=0)))
  nnx.update(new, nnx.state(model))
  return new


def build_model(cfg: ModelConfig, head: str = "base", num_labels: int = 2, seed: int = 0
                ) -> SqueezeBert:
  return SqueezeBert(cfg, head=head, num_labels=num_labels, rngs=nnx.Rngs(params=seed))


def param_count(model: nnx.Module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
