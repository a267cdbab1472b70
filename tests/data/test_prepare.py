"""python -m squeezebert.data.prepare on a slice of the real local corpus: shards + manifest,
resume after a lost shard (identical arrays), other settings refused, per-process shares, and
shard tokens that decode back to the corpus text (bert-base-uncased vocab)."""

import io
import itertools
import os
import shutil
from contextlib import redirect_stderr

import numpy as np
import pytest
from absl import flags

from conftest import data_dir
from squeezebert.data import prepare, pretraining, text_corpus
from squeezebert.data import prepared as reading
from squeezebert.data import tokenizer as tokenization

# Documents taken from the head of each corpus file: prose chapters, documentation pages,
# dictionary entries and synsets, fortunes (~1000 documents, ~0.4 MB).
SLICE = {"jane-austen.txt": 6, "python-docs.txt": 20, "wordnet.txt": 400, "fortunes.txt": 250,
         "gcide.txt": 300}
MAX_LEN, NUM_SHARDS = 64, 4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  src = data_dir("corpus")  # $CORPUS_DIR (the local pretraining corpus)
  d = tmp_path_factory.mktemp("corpus_slice")
  for name, n in SLICE.items():
    docs = [doc for _, doc in itertools.islice(text_corpus.paragraph_documents(str(src / name)), n)]
    (d / name).write_text("\n\n".join(docs) + "\n", encoding="utf-8")
  return d


def _prepare(out, corpus, tfds, **kw):
  kw = dict(dict(corpus_dir=str(corpus), data_dir=str(tfds), num_shards=NUM_SHARDS,
                 max_len=MAX_LEN), **kw)
  return prepare.prepare(str(out), **kw)


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
  root = tmp_path_factory.mktemp("prep")
  m = _prepare(root / "out", corpus, root / "tfds")
  return root, m


@pytest.fixture(scope="module")
def documents(prepared, corpus):
  root, _ = prepared
  return {s: list(text_corpus.load_documents("text_corpus/paragraphs", s,
                                             data_dir=str(root / "tfds"), corpus_dir=str(corpus)))
          for s in ("train", "validation")}


def _arrays(path):
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def test_shards_and_manifest(prepared, documents):
  root, m = prepared
  out = root / "out"
  assert sorted(os.listdir(out)) == ["manifest.json", "train", "validation", "vocab.txt"]
  assert m["this_run"]["shards_written"] == 2 * NUM_SHARDS
  for split, docs in documents.items():
    names = sorted(os.listdir(out / split))  # no .docs or temporary files left
    assert names == [f"shard-{j:05d}-of-{NUM_SHARDS:05d}.npz" for j in range(NUM_SHARDS)]
    e = m["splits"][split]
    assert e["complete"] and e["documents"] == len(docs) > 0
    assert e["sequences"] == sum(len(_arrays(out / s["file"])["lengths"]) for s in e["shards"])
    assert e["bytes"] == sum(os.path.getsize(out / s["file"]) for s in e["shards"])
    # Document i sits in shard i % NUM_SHARDS.
    assert [s["documents"] for s in e["shards"]] == [
        len(range(j, len(docs), NUM_SHARDS)) for j in range(NUM_SHARDS)]
  assert m["splits"]["train"]["sequences"] > 1000
  assert reading.read_manifest(str(out))["totals"] == m["totals"]


def test_resume_rewrites_only_the_missing_shard(prepared, corpus, tmp_path):
  root, m = prepared
  out = tmp_path / "out"
  shutil.copytree(root / "out", out)
  before = {p.name + p.parent.name: p.stat().st_mtime_ns for p in out.rglob("shard-*.npz")}
  lost = out / "train" / f"shard-00002-of-{NUM_SHARDS:05d}.npz"
  original = _arrays(lost)
  # A run killed while packing: the shard file and its manifest entry are missing.
  lost.unlink()
  manifest = reading.read_manifest(str(out))
  manifest["splits"]["train"]["shards"][2] = None
  prepare._write_manifest(manifest)
  with pytest.raises(ValueError, match="incomplete .3 of 4 shards.*rerun the prepare command"):
    reading.load_prepared(str(out), "train")
  again = _prepare(out, corpus, root / "tfds")
  assert again["this_run"]["shards_written"] == 1
  rewritten = _arrays(lost)
  assert rewritten.keys() == original.keys()
  for k in original:
    np.testing.assert_array_equal(rewritten[k], original[k], err_msg=k)
  after = {p.name + p.parent.name: p.stat().st_mtime_ns for p in out.rglob("shard-*.npz")}
  changed = [k for k in before if before[k] != after[k]]
  assert changed == [lost.name + "train"]
  assert again["totals"] == m["totals"]
  # A shard truncated on disk (size differs from the manifest) is rewritten too.
  lost.write_bytes(lost.read_bytes()[:100])
  with pytest.raises(ValueError, match="100 bytes, the manifest says"):
    reading.load_prepared(str(out), "train", 0, 2)
  assert _prepare(out, corpus, root / "tfds")["this_run"]["shards_written"] == 1
  # Nothing left to do.
  assert _prepare(out, corpus, root / "tfds")["this_run"]["shards_written"] == 0


def test_crash_while_packing_resumes_from_the_distributed_documents(prepared, corpus, tmp_path,
                                                                    monkeypatch):
  root, _ = prepared
  out = tmp_path / "out"
  real_pack, calls = prepare.pretraining.pack_sop, []

  def crashing(*args, **kw):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt  # killed while packing the third train shard
    return real_pack(*args, **kw)

  monkeypatch.setattr(prepare.pretraining, "pack_sop", crashing)
  with pytest.raises(KeyboardInterrupt):
    _prepare(out, corpus, root / "tfds")
  assert sorted(os.listdir(out / "train")) == [".docs", "shard-00000-of-00004.npz",
                                               "shard-00001-of-00004.npz"]
  assert not (out / "lock.json").exists()
  monkeypatch.setattr(prepare.pretraining, "pack_sop", real_pack)

  def no_reading(*args, **kw):
    raise AssertionError("the train documents were already distributed")

  monkeypatch.setattr(prepare.text_corpus, "load_documents", no_reading)
  with pytest.raises(AssertionError, match="already distributed"):
    _prepare(out, corpus, root / "tfds")  # train resumes; validation must be read
  m = reading.read_manifest(str(out))
  assert m["splits"]["train"]["complete"] and not (out / "train" / ".docs").exists()
  for j in range(NUM_SHARDS):
    name = f"train/shard-{j:05d}-of-{NUM_SHARDS:05d}.npz"
    a, b = _arrays(out / name), _arrays(root / "out" / name)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name} {k}")


def test_other_settings_are_refused(prepared, corpus, tmp_path, capsys):
  root, _ = prepared
  out = root / "out"
  with pytest.raises(ValueError, match=r"other settings \(max_len: 64 prepared, 32 now\)"):
    _prepare(out, corpus, root / "tfds", max_len=32)
  # The command: one error line naming the differences, exit status 1.
  fv = flags.FlagValues()
  prepare.define_flags(fv)
  fv(["prepare", f"--out={out}", f"--corpus_dir={corpus}", f"--data_dir={root / 'tfds'}",
      "--num_shards=8", "--max_len=64", "--seed=3", "--noprogress"])
  err = io.StringIO()
  with redirect_stderr(err):
    assert prepare.main(["prepare"], fv) == 1
  assert err.getvalue().startswith(f"error: {out} holds data prepared with other settings")
  assert "num_shards: 4 prepared, 8 now" in err.getvalue() and "seed: 0 prepared, 3 now" in (
      err.getvalue())
  # A directory holding something else is never written to; --overwrite replaces prepared data.
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match="not empty and holds no manifest.json"):
    _prepare(tmp_path / "other", corpus, root / "tfds")
  copy = tmp_path / "copy"
  shutil.copytree(out, copy)
  m = _prepare(copy, corpus, root / "tfds", num_shards=2, limit=30, overwrite=True)
  assert m["settings"]["num_shards"] == 2 and m["splits"]["train"]["documents"] == 30
  assert sorted(os.listdir(copy / "train")) == ["shard-00000-of-00002.npz",
                                                "shard-00001-of-00002.npz"]


def test_shares_partition_the_split(prepared):
  root, m = prepared
  out = str(root / "out")
  whole = reading.load_prepared(out, "train")
  assert len(whole) == m["splits"]["train"]["sequences"]
  np.testing.assert_array_equal(np.sort(whole.idx), np.arange(len(whole)))
  halves = [reading.load_prepared(out, "train", i, 2) for i in range(2)]
  assert not set(halves[0].idx) & set(halves[1].idx)
  assert sorted([*halves[0].idx, *halves[1].idx]) == list(range(len(whole)))
  assert [len(h) for h in halves] == reading.share_sizes(m, "train", 2)
  pos = {int(i): r for r, i in enumerate(whole.idx)}
  for h in halves:
    rows = [pos[int(i)] for i in h.idx]
    np.testing.assert_array_equal(h.input_ids, whole.input_ids[rows])
    np.testing.assert_array_equal(h.token_type_ids, whole.token_type_ids[rows])
    np.testing.assert_array_equal(h.labels, whole.labels[rows])
    np.testing.assert_array_equal(h.token_extras["word_start"],
                                  whole.token_extras["word_start"][rows])
  # limit: the sequences of the split's first documents only.
  docs = np.concatenate([_arrays(root / "out" / e["file"])["doc"]
                         for e in m["splits"]["train"]["shards"]])
  few = reading.load_prepared(out, "train", limit=50)
  assert len(few) == int((docs < 50).sum()) and 0 < len(few) < len(whole)
  with pytest.raises(ValueError, match="4 shards per split, too few to read as 5"):
    reading.load_prepared(out, "train", 0, 5)
  with pytest.raises(ValueError, match="no split 'test'"):
    reading.load_prepared(out, "test")
  with pytest.raises(ValueError, match="packed to max_len=64 but the run uses max_len=128"):
    reading.check_compatible(m, max_len=128)
  with pytest.raises(ValueError, match="another vocab"):
    reading.check_compatible(m, max_len=64, vocab_size=30522, vocab_sha1="0" * 40)


def test_shard_tokens_decode_to_the_corpus_text(prepared, documents):
  root, m = prepared
  tok = tokenization.load_tokenizer(str(root / "out" / "vocab.txt"))
  cls, sep, unk = (tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[UNK]"))

  def squeeze(text):  # the corpus text as the tokenizer sees it, without whitespace
    return "".join(text.split())

  def decode(ids):  # without whitespace; a segment may start inside a word (truncation)
    return "".join(tok.id_to_token(i).removeprefix("##") for i in ids)

  normalized = {s: [squeeze(tok.normalizer.normalize_str(d)) for d in docs]
                for s, docs in documents.items()}
  for split in ("train", "validation"):
    enc = reading.load_prepared(str(root / "out"), split)
    checked = 0
    for e in m["splits"][split]["shards"]:
      a = _arrays(root / "out" / e["file"])
      assert a["tokens"].dtype == np.uint16 and len(a["tokens"]) == a["lengths"].sum()
      ends = np.cumsum(a["lengths"])
      for r in range(len(a["lengths"])):
        seq = a["tokens"][ends[r] - a["lengths"][r]:ends[r]].tolist()
        n_a = int(a["a_lengths"][r])
        assert len(seq) <= MAX_LEN and seq[0] == cls and seq[n_a + 1] == sep and seq[-1] == sep
        seg_a, seg_b = seq[1:n_a + 1], seq[n_a + 2:-1]
        first, second = (seg_b, seg_a) if a["labels"][r] else (seg_a, seg_b)
        if unk in seq:
          continue
        text = normalized[split][int(a["doc"][r])]
        at_first = text.find(decode(first))
        assert at_first >= 0, (split, r, tok.decode(first))
        # The second segment comes after the first in the same document.
        assert text.find(decode(second), at_first + len(decode(first))) >= 0, (
            split, r, tok.decode(second))
        checked += 1
    assert checked > 0.95 * m["splits"][split]["sequences"]
    np.testing.assert_array_equal(  # word starts: not a '##' piece of the vocab
        enc.token_extras["word_start"], (~pretraining.continuation_table(tok)[enc.input_ids]))
    # The padded batch layout load_prepared builds: [CLS] A [SEP] type 0, B [SEP] type 1.
    for i in range(min(len(enc), 50)):
      n, ids = enc.lengths[i], enc.input_ids[i]
      first_sep = int(np.flatnonzero(ids == sep)[0])
      assert not ids[n:].any() and ids[n - 1] == sep
      assert not enc.token_type_ids[i, :first_sep + 1].any()
      assert enc.token_type_ids[i, first_sep + 1:n].all() and not enc.token_type_ids[i, n:].any()
