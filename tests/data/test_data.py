"""GLUE input pipeline: tokenizer parity with transformers, TFDS/TSV parity, batching."""

import collections
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from squeezebert.data import batching, glue, tokenizer

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_dirs(tfds_dir, glue_dir):
  return str(tfds_dir), str(glue_dir)


@pytest.fixture(scope="module")
def tok():
  try:
    return tokenizer.load_tokenizer()
  except FileNotFoundError as e:
    pytest.skip(str(e))


# ---------------------------------------------------------------------------------------------
# tokenizer


def _hf_tokenizer(vocab_file):
  transformers = pytest.importorskip("transformers")
  hf = transformers.BertTokenizerFast(vocab_file=vocab_file)
  if hf.vocab_size < 1000:  # transformers>=5 ignores vocab_file; it takes the vocab as `vocab=`
    with open(vocab_file, encoding="utf-8") as f:
      hf = transformers.BertTokenizerFast(vocab={l.rstrip("\n"): i for i, l in enumerate(f)})
  assert hf.vocab_size > 1000
  return hf


SENTS_A = ["Hello, World! naïve café [SEP] x", "the " * 40, "unaffable xyzzyplugh 東京 don't",
           "a", "Short one.", "b " * 9]
SENTS_B = ["b " * 30, "short", "c " * 30, "y " * 7, "The quick brown fox.", "c " * 9]


def test_matches_bert_tokenizer_fast(tok):
  hf = _hf_tokenizer(tokenizer.resolve_vocab())
  full_single, full_pair = hf(SENTS_A)["input_ids"], hf(SENTS_A, SENTS_B)["input_ids"]
  for max_len in (4, 5, 7, 8, 12, 128):
    got = tokenizer.encode(tok, SENTS_A, SENTS_B, max_len=max_len)
    ref = hf(SENTS_A, SENTS_B, truncation="longest_first", max_length=max_len)
    assert [a.tolist() for a in got["input_ids"]] == ref["input_ids"], max_len
    assert [a.tolist() for a in got["token_type_ids"]] == ref["token_type_ids"], max_len
    assert got["truncated"].tolist() == [len(f) > max_len for f in full_pair]
    assert got["num_truncated"] == sum(len(f) > max_len for f in full_pair)
    got = tokenizer.encode(tok, SENTS_A, max_len=max_len)
    ref = hf(SENTS_A, truncation="longest_first", max_length=max_len)
    assert [a.tolist() for a in got["input_ids"]] == ref["input_ids"], max_len
    assert got["truncated"].tolist() == [len(f) > max_len for f in full_single]


def test_segments_and_specials(tok):
  out = tokenizer.encode(tok, ["hello world"], ["good bye"], max_len=32)
  ids, types = out["input_ids"][0].tolist(), out["token_type_ids"][0].tolist()
  cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
  assert ids[0] == cls and ids[3] == sep and ids[-1] == sep and len(ids) == 7
  assert types == [0, 0, 0, 0, 1, 1, 1]  # [CLS] a a [SEP] | b b [SEP]


def test_empty_and_too_short(tok):
  with pytest.raises(ValueError, match="index 1"):
    tokenizer.encode(tok, ["ok", "  "])
  with pytest.raises(ValueError, match="text_b at example index 0"):
    tokenizer.encode(tok, ["ok"], [""])
  out = tokenizer.encode(tok, ["", "x"], allow_empty=True)
  assert out["input_ids"][0].tolist() == [tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")]
  with pytest.raises(ValueError, match="max_len"):
    tokenizer.encode(tok, ["ok"], max_len=2)
  with pytest.raises(ValueError, match="max_len"):
    tokenizer.encode(tok, ["ok"], ["ok"], max_len=3)
  assert tok.truncation is None  # encode leaves the shared tokenizer as it found it


def test_resolve_vocab(tmp_path, monkeypatch):
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n")
  assert tokenizer.resolve_vocab(vocab) == str(vocab)
  monkeypatch.setenv(tokenizer.VOCAB_ENV, str(vocab))
  assert tokenizer.resolve_vocab() == str(vocab)
  ids = tokenizer.encode(tokenizer.load_tokenizer(), ["hello"])["input_ids"][0]
  assert ids.tolist() == [2, 5, 3]
  with pytest.raises(FileNotFoundError, match="nope"):
    tokenizer.resolve_vocab(tmp_path / "nope.txt")
  monkeypatch.delenv(tokenizer.VOCAB_ENV)
  # Default: the bert-base-uncased vocab shipped in the package (30522 WordPieces).
  assert tokenizer.resolve_vocab() == str(tokenizer.PACKAGED_VOCAB)
  assert tokenizer.load_tokenizer().get_vocab_size() == 30522
  monkeypatch.setattr(tokenizer, "PACKAGED_VOCAB", tmp_path / "absent.txt")
  monkeypatch.setattr(tokenizer, "_FALLBACK_PACKAGE", "no_such_package_xyz")
  with pytest.raises(FileNotFoundError, match=tokenizer.VOCAB_ENV):
    tokenizer.resolve_vocab()


def test_package_imports_no_torch_and_no_shared_paths():
  code = ("import sys, squeezebert.data, squeezebert.metrics; "
          "bad = [m for m in ('torch', 'transformers', 'tensorflow') if m in sys.modules]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
  for f in (REPO / "squeezebert").rglob("*.py"):
    assert "../shared" not in f.read_text() and "work/shared" not in f.read_text(), f


# ---------------------------------------------------------------------------------------------
# GLUE tasks and loading


def test_task_table():
  assert set(glue.TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli",
                             "ax"}
  assert glue.get_task("SST-2").tfds_name == "glue/sst2"
  stsb, mnli = glue.get_task("stsb"), glue.get_task("mnli")
  assert stsb.is_regression and stsb.num_labels == 1 and stsb.metrics == ("pearson", "spearman")
  assert mnli.num_labels == 3
  assert mnli.eval_splits == ("validation_matched", "validation_mismatched")
  assert mnli.submission_file("test_mismatched") == "MNLI-mm.tsv"
  assert glue.get_task("qnli").text_keys == ("question", "sentence")
  assert glue.get_task("cola").main_metric == "matthews_corrcoef"
  assert glue.get_task("mrpc").metrics == ("f1", "accuracy")
  with pytest.raises(ValueError, match="known tasks: cola, sst2"):
    glue.get_task("squad")


def test_label_order_matches_tfds(data_dirs):
  tfds_dir = pathlib.Path(data_dirs[0])
  for name, spec in glue.TASKS.items():
    f = tfds_dir / "glue" / name / "2.0.0" / "label.labels.txt"
    if f.exists():
      assert tuple(f.read_text().split()) == spec.label_names, name


def _multiset(ex):
  b = ex["text_b"] or [None] * len(ex["text_a"])
  return collections.Counter(zip(ex["text_a"], b, ex["label"].tolist()))


@pytest.mark.parametrize("task", ["sst2", "mrpc", "stsb", "rte", "cola"])
def test_tfds_and_tsv_agree(task, data_dirs):
  tfds_dir, tsv_dir = data_dirs
  a = glue.load_examples(task, "validation", data_dir=tfds_dir, source="tfds")
  b = glue.load_examples(task, "validation", source="tsv", tsv_dir=tsv_dir)
  assert a["label"].dtype == b["label"].dtype
  assert _multiset(a) == _multiset(b)
  if task != "mrpc":  # TFDS numbers MRPC rows in msr_paraphrase_train.txt, not dev.tsv
    for k in ("idx", "label"):
      np.testing.assert_array_equal(a[k], b[k])
    assert a["text_a"] == b["text_a"] and a["text_b"] == b["text_b"]


def test_counts_and_test_idx(data_dirs):
  tfds_dir, tsv_dir = data_dirs
  train = glue.load_examples("sst2", "train", source="tsv", tsv_dir=tsv_dir)
  assert len(train["idx"]) == 67_349 and set(train["label"].tolist()) == {0, 1}
  val = glue.load_examples("sst2", "validation", data_dir=tfds_dir, source="tfds")
  assert len(val["idx"]) == 872 and val["text_b"] is None
  test = glue.load_examples("rte", "test", data_dir=tfds_dir, source="tfds")
  assert (test["label"] == -1).all() and test["idx"].tolist() == list(range(3000))


def test_auto_source_and_errors(data_dirs, tmp_path, monkeypatch):
  tfds_dir, tsv_dir = data_dirs
  monkeypatch.setenv(glue.TFDS_DIR_ENV, str(tmp_path))  # nothing prepared here
  monkeypatch.setenv(glue.GLUE_DIR_ENV, tsv_dir)
  assert not glue.tfds_prepared(glue.get_task("rte"))
  assert glue.tfds_prepared(glue.get_task("rte"), tfds_dir)
  assert len(glue.load_examples("rte", "validation")["idx"]) == 277  # falls back to TSV
  monkeypatch.delenv(glue.GLUE_DIR_ENV)
  with pytest.raises(FileNotFoundError, match=glue.GLUE_DIR_ENV):
    glue.load_examples("rte", "validation")
  with pytest.raises(FileNotFoundError, match="missing_dir"):
    glue.load_examples("rte", "validation", source="tsv", tsv_dir=str(tmp_path / "missing_dir"))
  with pytest.raises(FileNotFoundError, match="QQP"):  # not in the offline copy
    glue.load_examples("qqp", "validation", source="tsv", tsv_dir=tsv_dir)
  with pytest.raises(FileNotFoundError, match="missing_tfds"):
    glue.load_examples("rte", "validation", source="tfds", data_dir=str(tmp_path / "missing_tfds"))
  with pytest.raises(ValueError, match="no split"):
    glue.load_examples("mnli", "validation", source="tsv", tsv_dir=tsv_dir)


def _write(path, lines, bom=False):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")


def test_tsv_layouts(tmp_path):
  # CoLA train/dev: headerless 4 columns.
  _write(tmp_path / "CoLA" / "dev.tsv", ["gj04\t1\t\tGood one .", "gj04\t0\t*\tBad \"one ."])
  ex = glue.load_examples("cola", "validation", source="tsv", tsv_dir=str(tmp_path))
  assert ex["text_a"] == ["Good one .", 'Bad "one .'] and ex["label"].tolist() == [1, 0]
  # MRPC: BOM before the Quality header.
  _write(tmp_path / "MRPC" / "train.tsv", ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
                                           "1\t1\t2\tA b .\tA c ."], bom=True)
  ex = glue.load_examples("mrpc", "train", source="tsv", tsv_dir=str(tmp_path))
  assert ex["text_b"] == ["A c ."] and ex["label"].tolist() == [1]
  # MNLI (not offline): label names -> TFDS ids; test split has no labels.
  hdr = "index\tpromptID\tsentence1\tsentence2\tgold_label"
  _write(tmp_path / "MNLI" / "dev_mismatched.tsv", [hdr, "0\t7\tP0\tH0\tcontradiction",
                                                    "1\t8\tP1\tH1\tentailment"])
  _write(tmp_path / "MNLI" / "test_matched.tsv", ["index\tsentence1\tsentence2", "0\tP\tH"])
  ex = glue.load_examples("mnli", "validation_mismatched", source="tsv", tsv_dir=str(tmp_path))
  assert ex["text_a"] == ["P0", "P1"] and ex["label"].tolist() == [2, 0]
  ex = glue.load_examples("mnli", "test_matched", source="tsv", tsv_dir=str(tmp_path))
  assert ex["label"].tolist() == [-1]
  # QQP: a malformed row is skipped like TFDS does, and idx keeps counting rows.
  _write(tmp_path / "QQP" / "dev.tsv", ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
                                        "0\t1\t2\tq1?\tq2?\t1", "1\t3\t4\tbroken",
                                        "2\t5\t6\ta?\tb?\t0"])
  ex = glue.load_examples("qqp", "validation", source="tsv", tsv_dir=str(tmp_path))
  assert ex["idx"].tolist() == [0, 2] and ex["label"].tolist() == [1, 0]
  # STS-B: float scores.
  _write(tmp_path / "STS-B" / "train.tsv", ["index\tgenre\tsentence1\tsentence2\tscore",
                                            "0\tg\tA\tB\t3.800"])
  ex = glue.load_examples("stsb", "train", source="tsv", tsv_dir=str(tmp_path))
  assert ex["label"].dtype == np.float32 and ex["label"][0] == np.float32(3.8)


# ---------------------------------------------------------------------------------------------
# batching


def _fake_split(n=203, max_len=128, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, max_len + 1, size=n).astype(np.int32)
  ids = np.zeros((n, max_len), np.int32)
  for i, L in enumerate(lengths):
    ids[i, :L] = rng.integers(1000, 2000, size=L)
  return batching.EncodedSplit(ids, np.zeros((n, max_len), np.int8), lengths,
                               rng.integers(0, 2, size=n).astype(np.int32),
                               np.arange(n, dtype=np.int32) + 10, num_truncated=0)


def _idx(batches):
  return [b["idx"][b["example_weight"] > 0].tolist() for b in batches]


def test_encode_examples(tok):
  spec = glue.get_task("rte")
  ex = {"idx": np.array([3, 1]), "text_a": ["A man sleeps.", "word " * 50],
        "text_b": ["Someone rests.", "other"], "label": np.array([0, 1])}
  enc = batching.encode_examples(spec, ex, tok, max_len=16)
  assert enc.input_ids.shape == (2, 16) and enc.num_truncated == 1
  assert enc.lengths.tolist()[1] == 16 and enc.idx.tolist() == [3, 1]
  ref = tokenizer.encode(tok, ex["text_a"], ex["text_b"], max_len=16)["input_ids"][0]
  assert enc.input_ids[0, :enc.lengths[0]].tolist() == ref.tolist()
  assert (enc.input_ids[0, enc.lengths[0]:] == 0).all()


@pytest.mark.parametrize("shuffle", [True, False])
def test_resume_equals_tail(shuffle):
  enc = _fake_split()
  kw = dict(shuffle=shuffle, seed=3, epoch=2, drop_remainder=shuffle)
  full = list(batching.batches(enc, 8, **kw))
  assert len(full) == batching.num_batches(enc, 8, drop_remainder=shuffle)
  for k in (0, 1, 7, len(full)):
    tail = list(batching.batches(enc, 8, start_batch=k, **kw))
    assert len(tail) == len(full) - k
    for a, b in zip(tail, full[k:]):
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_shuffle_determinism_and_epochs():
  enc = _fake_split()
  run = lambda seed, epoch: _idx(batching.batches(enc, 8, shuffle=True, seed=seed, epoch=epoch,
                                                  drop_remainder=True))
  assert run(0, 0) == run(0, 0)
  assert run(0, 0) != run(0, 1) and run(0, 0) != run(1, 0)
  flat = sum(run(0, 1), [])
  assert len(flat) == len(set(flat)) == (len(enc) // 8) * 8  # no repeats; remainder dropped


def test_eval_covers_every_example_once():
  enc = _fake_split(n=203)
  out = list(batching.batches(enc, 16, shuffle=False, drop_remainder=False))
  assert len(out) == 13 and all(b["input_ids"].shape[0] == 16 for b in out)
  assert sorted(sum(_idx(out), [])) == enc.idx.tolist()
  last = out[-1]
  pad = last["example_weight"] == 0
  assert pad.sum() == 13 * 16 - 203
  assert (last["idx"][pad] == -1).all() and (last["attention_mask"][pad] == 0).all()
  assert (last["labels"][pad] == 0).all()


def test_bucket_shapes_and_masks():
  enc = _fake_split(n=400)
  lens = dict(zip(enc.idx.tolist(), enc.lengths.tolist()))
  shapes = set()
  for b in batching.batches(enc, 8, shuffle=True, seed=0, epoch=0, drop_remainder=True,
                            bucket_boundaries=(32, 64, 128)):
    L = b["input_ids"].shape[1]
    shapes.add(L)
    longest = max(lens[i] for i in b["idx"])
    assert L in (32, 64, 128) and L >= longest and (L == 32 or L // 2 < longest)
    np.testing.assert_array_equal(b["attention_mask"].sum(1), [lens[i] for i in b["idx"]])
    assert (b["input_ids"] * (1 - b["attention_mask"]) == 0).all()
    assert {k: v.dtype for k, v in b.items()} == {
        "input_ids": np.int32, "attention_mask": np.int32, "token_type_ids": np.int32,
        "labels": np.int32, "example_weight": np.float32, "idx": np.int32}
  assert len(shapes) > 1  # length-sorted windows make short buckets occur
  b = next(batching.batches(enc, 8, shuffle=False, drop_remainder=True, bucket_boundaries=None))
  assert b["input_ids"].shape == (8, 128)


def test_length_grouping_reduces_padding():
  enc = _fake_split(n=2000)
  padded = lambda bs: sum(b["input_ids"].size for b in bs)
  grouped = padded(batching.batches(enc, 8, shuffle=True, seed=0, epoch=0, drop_remainder=True))
  plain = padded(batching.batches(enc, 8, shuffle=False, drop_remainder=True))
  assert grouped < 0.8 * plain


def test_shard_batch_for_process():
  enc = _fake_split()
  b = next(batching.batches(enc, 8, shuffle=True, seed=0, epoch=0, drop_remainder=True))
  parts = [batching.shard_batch_for_process(b, p, 4) for p in range(4)]
  for k in b:
    np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), b[k])
  assert parts[1]["input_ids"].shape[0] == 2
  with pytest.raises(ValueError, match="divisible"):
    batching.shard_batch_for_process(b, 0, 3)
