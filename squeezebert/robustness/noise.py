"""Text noise for robustness evaluation: character-level and word-level, deterministic per seed.

Every function takes (text, rate, rng) and returns the noised text. `rate` is the probability
that each eligible unit is hit: a letter for character noise (swap with the next letter, delete,
insert a random letter after it, replace with a QWERTY neighbour), a word for word noise (drop,
repeat, shuffle within a window of `WINDOW` words). `noise_text(kind, text, rate, seed, key)`
seeds a fresh generator from (seed, kind, key), so an example's noise does not depend on which
other examples are noised or in what order.
"""

from __future__ import annotations

import string
import zlib

import numpy as np

WINDOW = 3  # word shuffle: words are permuted only inside consecutive windows of this many

_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_POS = {c: (r, i) for r, row in enumerate(_ROWS) for i, c in enumerate(row)}


def _neighbours(c: str) -> str:
  r, i = _POS[c]
  out = []
  for dr in (-1, 0, 1):
    row = r + dr
    if 0 <= row < len(_ROWS):
      for j in (i - 1, i, i + 1):
        if 0 <= j < len(_ROWS[row]) and (row, j) != (r, i):
          out.append(_ROWS[row][j])
  return "".join(out)


KEYBOARD = {c: _neighbours(c) for c in _POS}


def _check_rate(rate: float):
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"noise rate must be in [0, 1], got {rate}")


def char_swap(text: str, rate: float, rng: np.random.Generator) -> str:
  """Swap a hit letter with the next character when that is a letter too."""
  _check_rate(rate)
  chars, i = list(text), 0
  while i < len(chars) - 1:
    if chars[i].isalpha() and chars[i + 1].isalpha() and rng.random() < rate:
      chars[i], chars[i + 1] = chars[i + 1], chars[i]
      i += 2  # a swapped pair is not swapped back
    else:
      i += 1
  return "".join(chars)


def char_delete(text: str, rate: float, rng: np.random.Generator) -> str:
  _check_rate(rate)
  return "".join(c for c in text if not (c.isalpha() and rng.random() < rate))


def char_insert(text: str, rate: float, rng: np.random.Generator) -> str:
  """Insert a random lowercase letter after a hit letter."""
  _check_rate(rate)
  out = []
  for c in text:
    out.append(c)
    if c.isalpha() and rng.random() < rate:
      out.append(string.ascii_lowercase[rng.integers(26)])
  return "".join(out)


def char_keyboard(text: str, rate: float, rng: np.random.Generator) -> str:
  """Replace a hit letter with a QWERTY neighbour (case kept): a typo."""
  _check_rate(rate)
  out = []
  for c in text:
    low = c.lower()
    if low in KEYBOARD and rng.random() < rate:
      n = KEYBOARD[low][rng.integers(len(KEYBOARD[low]))]
      out.append(n.upper() if c.isupper() else n)
    else:
      out.append(c)
  return "".join(out)


def word_drop(text: str, rate: float, rng: np.random.Generator) -> str:
  """Drop each word with probability `rate` (at least one word is kept)."""
  _check_rate(rate)
  words = text.split()
  if len(words) <= 1:
    return text
  keep = [w for w in words if rng.random() >= rate]
  if not keep:
    keep = [words[rng.integers(len(words))]]
  return " ".join(keep)


def word_repeat(text: str, rate: float, rng: np.random.Generator) -> str:
  _check_rate(rate)
  out = []
  for w in text.split():
    out.append(w)
    if rng.random() < rate:
      out.append(w)
  return " ".join(out)


def word_shuffle(text: str, rate: float, rng: np.random.Generator) -> str:
  """Each window of WINDOW consecutive words is permuted with probability `rate`."""
  _check_rate(rate)
  words = text.split()
  out = []
  for s in range(0, len(words), WINDOW):
    win = words[s:s + WINDOW]
    if len(win) > 1 and rng.random() < rate:
      win = [win[j] for j in rng.permutation(len(win))]
    out += win
  return " ".join(out)


NOISES = {
    "char_swap": char_swap, "char_delete": char_delete, "char_insert": char_insert,
    "char_keyboard": char_keyboard, "word_drop": word_drop, "word_repeat": word_repeat,
    "word_shuffle": word_shuffle,
}


def noise_text(kind: str, text: str, rate: float, seed: int = 0, key: int = 0) -> str:
  """`kind` noise on `text`; the generator is seeded from (seed, kind, key), e.g. key = the
  example's index, so results are reproducible and independent of order."""
  if kind not in NOISES:
    raise ValueError(f"unknown noise {kind!r}; known: {sorted(NOISES)}")
  rng = np.random.default_rng([seed, zlib.crc32(kind.encode()), key])
  return NOISES[kind](text, rate, rng)
