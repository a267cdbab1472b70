"""NER (CoNLL-2003) and QA (SQuAD v1.1): metrics against references (seqeval, the official
evaluate-v1.1.py functions), WordPiece label alignment, sliding windows and span decoding, the
data sources, bad-input errors, and one-step end-to-end runs through the trainer.
"""

import collections
import os
import json
import pathlib
import random
import re
import string

import numpy as np
import pytest

from conftest import config, read_jsonl
from squeezebert.metrics import ner as metrics_ner, squad as metrics_squad
from squeezebert.data import conll, squad
from squeezebert.data import tokenizer as tokenization
from squeezebert import workdir as ckpt_lib
from squeezebert import tasks as tasks_lib
from squeezebert.train import trainer

REPO = pathlib.Path(__file__).resolve().parents[2]
# The data directories (conftest.py: from the environment, as .ci/run sets it); the marks
# skip, or in CI fail, a test whose data is missing.
TFDS_DIR = pathlib.Path(os.environ.get("TFDS_DATA_DIR", "/nonexistent"))
CONLL_DIR = pathlib.Path(os.environ.get("CONLL2003_DIR", "/nonexistent"))
SQUAD_DIR = pathlib.Path(os.environ.get("SQUAD_DIR", "/nonexistent"))
needs_conll_tfds = pytest.mark.usefixtures("tfds_dir")
needs_conll_raw = pytest.mark.usefixtures("conll_dir")
needs_squad = pytest.mark.usefixtures("squad_dir")


@pytest.fixture(scope="module")
def tok():
  return tokenization.load_tokenizer()


@pytest.fixture(scope="module")
def dev_examples(squad_dir):
  return squad.load_examples("validation", source="file", squad_dir=str(squad_dir))


# ---------------------------------------------------------------------------------------------
# entity metrics vs seqeval

SEQEVAL_CASES = [
    # IOB2
    ([["O", "B-PER", "I-PER", "O", "B-LOC"]], [["O", "B-PER", "I-PER", "O", "B-ORG"]]),
    # IOB1: entities start with I-; B- only between two adjacent same-type entities
    ([["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC"]],
     [["I-PER", "I-PER", "O", "I-LOC", "I-LOC", "I-LOC"]]),
    ([["I-ORG", "I-ORG", "I-MISC", "O"], ["I-LOC"]], [["B-ORG", "I-ORG", "B-MISC", "O"], ["O"]]),
    # malformed IOB2: I- after O or after another type starts a chunk (conlleval)
    ([["O", "I-PER", "I-PER", "B-PER", "I-LOC"]], [["O", "B-PER", "I-PER", "B-PER", "B-LOC"]]),
    # IOBES
    ([["B-PER", "E-PER", "S-LOC", "O", "S-ORG", "B-MISC", "I-MISC", "E-MISC"]],
     [["B-PER", "I-PER", "S-LOC", "O", "B-ORG", "B-MISC", "I-MISC", "E-MISC"]]),
    # no entities predicted; no gold entities at all
    ([["B-PER", "O"]], [["O", "O"]]),
    ([["O", "O"]], [["B-LOC", "O"]]),
    # the seqeval docstring example
    ([["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]],
     [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]),
]


def _seqeval_scores(y_true, y_pred):
  import warnings
  from seqeval import metrics as sm
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    out = {"precision": sm.precision_score(y_true, y_pred),
           "recall": sm.recall_score(y_true, y_pred),
           "f1": sm.f1_score(y_true, y_pred), "accuracy": sm.accuracy_score(y_true, y_pred)}
    report = sm.classification_report(y_true, y_pred, output_dict=True, zero_division=0)
  for k, v in report.items():
    if not k.endswith(" avg"):
      out[f"f1_{k}"] = v["f1-score"]
  return out


def _assert_same_scores(ours, ref):
  for k, v in ref.items():
    assert ours[k] == pytest.approx(float(v), abs=1e-12), k
  assert {k for k in ours if k.startswith("f1_")} == {k for k in ref if k.startswith("f1_")}


@pytest.mark.parametrize("y_true,y_pred", SEQEVAL_CASES)
def test_entities_and_scores_match_seqeval_known_cases(y_true, y_pred):
  from seqeval.metrics.sequence_labeling import get_entities as ref_entities
  for seq in y_true + y_pred:
    assert metrics_ner.get_entities(seq) == ref_entities(seq), seq
  assert metrics_ner.get_entities(y_true) == ref_entities(y_true)
  _assert_same_scores(metrics_ner.ner_scores(y_true, y_pred), _seqeval_scores(y_true, y_pred))


def test_known_case_values():
  # IOB1 gold: entities PER(0-1), LOC(3-3), LOC(4-5). Pred joins the two LOCs.
  y_true = [["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC"]]
  y_pred = [["I-PER", "I-PER", "O", "I-LOC", "I-LOC", "I-LOC"]]
  assert metrics_ner.get_entities(y_true[0]) == [("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 5)]
  s = metrics_ner.ner_scores(y_true, y_pred)
  assert s["precision"] == pytest.approx(1 / 2) and s["recall"] == pytest.approx(1 / 3)
  assert s["f1"] == pytest.approx(0.4) and s["accuracy"] == pytest.approx(5 / 6)


def test_random_sequences_match_seqeval():
  rng = random.Random(0)
  tags = ["O"] * 4 + [f"{p}-{t}" for p in "BIES" for t in ("PER", "LOC", "ORG")]
  iob = ["O"] * 3 + [f"{p}-{t}" for p in "BI" for t in ("PER", "LOC")]
  for trial in range(60):
    vocab = tags if trial % 2 else iob
    lens = [rng.randint(1, 12) for _ in range(rng.randint(1, 6))]
    y_true = [[rng.choice(vocab) for _ in range(n)] for n in lens]
    y_pred = [[t if rng.random() < 0.7 else rng.choice(vocab) for t in s] for s in y_true]
    _assert_same_scores(metrics_ner.ner_scores(y_true, y_pred), _seqeval_scores(y_true, y_pred))


def test_iob1_to_iob2_keeps_entities():
  iob1 = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC", "I-ORG", "O", "I-MISC"]
  iob2 = metrics_ner.iob1_to_iob2(iob1)
  assert iob2 == ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "B-ORG", "O", "B-MISC"]
  assert metrics_ner.get_entities(iob2) == metrics_ner.get_entities(iob1)
  assert metrics_ner.iob1_to_iob2(iob2) == iob2
  assert metrics_ner.is_iob1([iob1]) and not metrics_ner.is_iob1([iob2])
  rng = random.Random(1)
  vocab = ["O", "I-PER", "B-PER", "I-LOC", "B-LOC"]
  for _ in range(200):
    s = [rng.choice(vocab) for _ in range(rng.randint(1, 10))]
    assert metrics_ner.get_entities(metrics_ner.iob1_to_iob2(s)) == metrics_ner.get_entities(s)


def test_ner_scores_bad_input():
  with pytest.raises(ValueError, match="2 gold sentences but 1 predicted"):
    metrics_ner.ner_scores([["O"], ["O"]], [["O"]])
  with pytest.raises(ValueError, match="sentence 0: 2 gold tags but 1 predicted"):
    metrics_ner.ner_scores([["O", "O"]], [["O"]])


# ---------------------------------------------------------------------------------------------
# WordPiece alignment


def test_alignment_of_tricky_words(tok):
  words = ["Köln", "unaffable", "1996-08-22", "\x00", "naïve", "😀", "U.S.", ",", "Schwarzenegger",
           "\u200b", "中文"]
  tags = np.arange(len(words), dtype=np.int32) % 9
  enc = conll.align_words(tok, [words], [tags], max_len=64)
  ids, labels, pos = enc["input_ids"][0], enc["labels"][0], enc["word_pos"][0]
  L = int(enc["lengths"][0])
  pieces = [tok.id_to_token(int(i)) for i in ids[:L]]
  assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]" and not ids[L:].any()
  # every word's first piece carries its tag; nothing else is labelled
  first = {int(p): i for i, p in enumerate(pos) if p >= 0}
  for j in range(64):
    assert labels[j] == (tags[first[j]] if j in first else conll.IGNORE), j
  # words of several pieces: the first piece only
  by_word = collections.defaultdict(list)
  enc_words = tok.encode(words, is_pretokenized=True, add_special_tokens=False)
  for j, w in enumerate(enc_words.word_ids):
    by_word[w].append(j + 1)
  assert len(by_word[1]) > 1 and len(by_word[2]) == 5  # una ##ffa ##ble; 1996 - 08 - 22
  assert len(by_word[8]) > 1
  for w, js in by_word.items():
    assert pos[w] == js[0] and all(labels[j] == conll.IGNORE for j in js[1:])
  assert pieces[pos[0]] == "koln" and pieces[pos[4]] == "naive"  # accents stripped (uncased)
  assert pieces[pos[5]] == "[UNK]" and labels[pos[5]] == tags[5]  # [UNK] words are labelled
  assert pieces[pos[7]] == ","
  # words that produce no piece at all have no position (predicted O, counted as lost)
  assert pos[3] == -1 and pos[9] == -1 and enc["num_lost_words"] == 2
  # predictions map back to words: gold labels in, gold tags out (lost words -> O = 0)
  back = conll.words_from_tokens(labels, pos)
  assert back.tolist() == [t if p >= 0 else 0 for t, p in zip(tags, pos)]


def test_alignment_truncation(tok):
  words = ["unaffable"] * 10  # 3 pieces each
  enc = conll.align_words(tok, [words, ["short"]], [np.ones(10, np.int32), np.ones(1, np.int32)],
                          max_len=12)
  assert enc["num_truncated"] == 1 and enc["lengths"].tolist() == [12, 3]
  pos = enc["word_pos"][0]
  assert pos[:4].tolist() == [1, 4, 7, 10] and (pos[4:] == -1).all()  # word 4 lost its start
  assert enc["num_lost_words"] == 6
  assert enc["input_ids"][0, 11] == tok.token_to_id("[SEP]")
  with pytest.raises(ValueError, match="sentence 0: 2 words but 1 tags"):
    conll.align_words(tok, [["a", "b"]], [np.zeros(1, np.int32)], 16)


# ---------------------------------------------------------------------------------------------
# CoNLL-2003 data


@needs_conll_tfds
@needs_conll_raw
def test_conll_tfds_and_raw_files_agree():
  a = conll.load_sentences("dev", data_dir=str(TFDS_DIR), source="tfds")
  b = conll.load_sentences("dev", source="file", conll_dir=str(CONLL_DIR))
  assert len(a["words"]) == len(b["words"]) == 3250  # TFDS' trailing empty example dropped
  key = lambda d: sorted((tuple(w), tuple(t.tolist())) for w, t in zip(d["words"], d["tags"]))
  assert key(a) == key(b)
  # both are IOB2: no entity starts with I-
  assert not metrics_ner.is_iob1([[conll.LABEL_NAMES[i] for i in t] for t in b["tags"]])
  assert sum(len(w) for w in b["words"]) == 51362


def _write_conll(path, sentences):
  with open(path, "w") as f:
    f.write("-DOCSTART- -X- -X- O\n\n")
    for sent in sentences:
      for w, t in sent:
        f.write(f"{w} NNP B-NP {t}\n")
      f.write("\n")


def test_conll_reader_rewrites_iob1(tmp_path):
  sents = [[("EU", "I-ORG"), ("rejects", "O"), ("German", "I-MISC")],
           [("Peter", "I-PER"), ("Blackburn", "I-PER"), ("Paul", "B-PER")]]
  for split in ("train", "dev", "test"):
    _write_conll(tmp_path / conll.FILES[split], sents)
  d = conll.load_sentences("dev", source="tsv", conll_dir=str(tmp_path))
  names = [[conll.LABEL_NAMES[i] for i in t] for t in d["tags"]]
  assert d["words"] == [["EU", "rejects", "German"], ["Peter", "Blackburn", "Paul"]]
  assert names == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER", "B-PER"]]
  kept = conll.load_sentences("dev", source="tsv", conll_dir=str(tmp_path), tag_scheme="iob2")
  assert [conll.LABEL_NAMES[i] for i in kept["tags"][0]] == ["I-ORG", "O", "I-MISC"]


def test_conll_bad_inputs(tmp_path, monkeypatch):
  _write_conll(tmp_path / "valid.txt", [[("EU", "B-ORG"), ("x", "B-FOO")]])
  with pytest.raises(ValueError, match="unknown NER tag 'B-FOO'"):
    conll.load_sentences("dev", source="file", conll_dir=str(tmp_path))
  with pytest.raises(ValueError, match="no split 'validation'"):
    conll.load_sentences("validation", source="file", conll_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="test.txt"):
    conll.load_sentences("test", source="file", conll_dir=str(tmp_path))
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "nothing"))
  monkeypatch.delenv("CONLL2003_DIR", raising=False)
  with pytest.raises(FileNotFoundError, match=r"config\.data\.conll_dir"):
    conll.load_sentences("dev")


# ---------------------------------------------------------------------------------------------
# SQuAD metric vs the official evaluate-v1.1.py functions (copied here as the reference)


def _ref_normalize_answer(s):
  def remove_articles(text):
    return re.sub(r'\b(a|an|the)\b', ' ', text)

  def white_space_fix(text):
    return ' '.join(text.split())

  def remove_punc(text):
    exclude = set(string.punctuation)
    return ''.join(ch for ch in text if ch not in exclude)

  def lower(text):
    return text.lower()

  return white_space_fix(remove_articles(remove_punc(lower(s))))


def _ref_f1(prediction, ground_truth):
  prediction_tokens = _ref_normalize_answer(prediction).split()
  ground_truth_tokens = _ref_normalize_answer(ground_truth).split()
  common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
  num_same = sum(common.values())
  if num_same == 0:
    return 0
  precision = 1.0 * num_same / len(prediction_tokens)
  recall = 1.0 * num_same / len(ground_truth_tokens)
  return (2 * precision * recall) / (precision + recall)


SQUAD_PAIRS = [
    ("The Denver Broncos", "Denver Broncos"), ("Denver Broncos!", "the denver  broncos"),
    ("an apple a day", "apple day"), ("Theater", "the ater"), ("1,000", "1000"),
    ("Saint-Étienne", "saintétienne"), ("", "Broncos"), ("a the an", "the"),
    ("Carolina Panthers Panthers", "Panthers"), ("Gold coin", "golden coin"),
    ("\u00a0Nikola\tTesla ", "nikola tesla"), ("A", "a"), ("The  ANSWER.", "answer"),
]


@pytest.mark.parametrize("pred,gold", SQUAD_PAIRS)
def test_squad_answer_metrics_match_official(pred, gold):
  assert metrics_squad.normalize_answer(pred) == _ref_normalize_answer(pred)
  assert metrics_squad.f1_score(pred, gold) == pytest.approx(_ref_f1(pred, gold), abs=1e-12)
  assert metrics_squad.exact_match_score(pred, gold) == float(
      _ref_normalize_answer(pred) == _ref_normalize_answer(gold))


def test_squad_scores_known_case():
  gold = {"q1": ["Denver Broncos", "The Broncos"], "q2": ["Santa Clara, California"],
          "q3": ["1,000 men"], "q4": ["Tesla"]}
  preds = {"q1": "the Broncos", "q2": "Santa Clara", "q3": "1000 men", "zz": "ignored"}
  s = metrics_squad.squad_scores(gold, preds)
  # q1 EM 1 F1 1; q2 F1 2*(1*2/3)/(1+2/3)=0.8; q3 F1 ("1000","men") vs ("1000","men") = 1,
  # EM 1 (punctuation removed); q4 missing -> 0.
  assert s["exact_match"] == pytest.approx(100 * 2 / 4)
  assert s["f1"] == pytest.approx(100 * (1 + 0.8 + 1 + 0) / 4)
  assert s["num_unanswered"] == 1 and s["num_questions"] == 4
  dataset = [{"title": "t", "paragraphs": [{"context": "c", "qas": [
      {"id": k, "question": "?", "answers": [{"text": a, "answer_start": 0} for a in v]}
      for k, v in gold.items()]}]}]
  off = metrics_squad.evaluate_official(dataset, preds)
  assert off == {"exact_match": s["exact_match"], "f1": s["f1"]}


# ---------------------------------------------------------------------------------------------
# windows, offsets, decoding


def test_windows_scheme():
  assert squad.windows(10, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
  assert squad.windows(3, 4, 2) == [(0, 3)]
  assert squad.windows(10, 4, 9) == [(0, 4), (4, 8), (8, 10)]  # stride clamped to the window
  for n, room, stride in [(37, 7, 3), (100, 10, 10), (5, 1, 1)]:
    wins = squad.windows(n, room, stride)
    step = min(stride, room)
    for a in range(n):  # every span of up to room - step + 1 tokens lies whole in a window
      for b in range(a, min(n, a + room - step + 1)):
        assert any(lo <= a and b < hi for lo, hi in wins), (a, b)
  with pytest.raises(ValueError, match="no room for context"):
    squad.windows(10, 0, 2)


def _ex(context, question, answers, qid="q", title="t"):
  starts = [context.index(a) for a in answers]
  return squad.Example(qid, title, context, question, list(answers), starts)


def test_featurize_offsets_and_unicode(tok):
  ctx = ("Café Müller — “quoted” naïve text about Straße 😀 and the year 1996-08-22, "
         "written by Zoë Saldaña in Köln.") * 3
  ex = [_ex(ctx, "Who wrote it?", ["Zoë Saldaña"]), _ex(ctx, "When?", ["1996-08-22"], "q2")]
  feats = squad.featurize(tok, ex, max_len=32, doc_stride=8, max_query_len=8)
  assert len(feats) > 2 * 3 and feats.input_ids.shape == (len(feats), 32)
  for f in range(len(feats)):
    n = int(feats.lengths[f])
    ids = feats.input_ids[f, :n]
    assert ids[0] == tok.token_to_id("[CLS]") and ids[-1] == tok.token_to_id("[SEP]")
    off = int(feats.ctx_offset[f])
    assert ids[off - 1] == tok.token_to_id("[SEP]")
    types = feats.token_type_ids[f]
    assert (types[:off] == 0).all() and (types[off:n] == 1).all() and not types[n:].any()
    if feats.start_positions[f]:  # the labelled span cuts exactly the answer from the context
      xi = int(feats.example[f])
      lo = int(feats.win_lo[f])
      s = feats.start_positions[f] - off + lo
      e = feats.end_positions[f] - off + lo
      o = feats.offsets[xi]
      assert ex[xi].context[o[s, 0]:o[e, 1]] == ex[xi].answers[0]
  assert {int(feats.example[f]) for f in range(len(feats)) if feats.start_positions[f]} == {0, 1}
  # oracle logits decode to the original (accented, cased) text
  S = np.full((len(feats), 32), -5.0)
  E = np.full((len(feats), 32), -5.0)
  for f in range(len(feats)):
    if feats.start_positions[f]:
      S[f, feats.start_positions[f]] = E[f, feats.end_positions[f]] = 5.0
  preds = squad.decode(feats, ex, np.arange(len(feats)), S, E)
  assert preds == {"q": "Zoë Saldaña", "q2": "1996-08-22"}


def test_decode_limits_and_max_context(tok):
  ctx = "one two three four five six seven eight nine ten"
  ex = [_ex(ctx, "q?", ["three"])]
  feats = squad.featurize(tok, ex, max_len=12, doc_stride=2, max_query_len=4)
  # windows of 12 - 3 - 2 = 7 tokens at 0, 2, 4: token 5 ("six") is best centred in window 1
  assert [(int(a), int(b)) for a, b in zip(feats.win_lo, feats.win_hi)] == [(0, 7), (2, 9),
                                                                            (4, 10)]
  assert feats.max_context_window[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 2, 2, 2]
  F = len(feats)
  S, E = np.full((F, 12), -10.0), np.full((F, 12), -10.0)
  off = int(feats.ctx_offset[0])
  # feature 0 strongly prefers "six" (token 5), but that start is not max-context there;
  # feature 1 scores it lower and wins with it.
  S[0, off + 5], E[0, off + 5] = 9.0, 9.0
  S[1, off + 3], E[1, off + 3] = 3.0, 3.0
  assert squad.decode(feats, ex, np.arange(F), S, E) == {"q": "six"}
  # max_answer_len: the best long span is rejected
  S, E = np.full((F, 12), -10.0), np.full((F, 12), -10.0)
  S[0, off + 0], E[0, off + 2], E[0, off + 0] = 9.0, 9.0, 1.0
  assert squad.decode(feats, ex, [0], S[:1], E[:1], max_answer_len=3) == {"q": "one two three"}
  assert squad.decode(feats, ex, [0], S[:1], E[:1], max_answer_len=2) == {"q": "one"}
  # end before start is never chosen
  S, E = np.full((F, 12), -10.0), np.full((F, 12), -10.0)
  S[0, off + 4], E[0, off + 1], E[0, off + 4] = 9.0, 9.0, 0.5
  assert squad.decode(feats, ex, [0], S[:1], E[:1]) == {"q": "five"}


def test_squad_bad_inputs(tok):
  ctx = "Nikola Tesla was born in 1856."
  bad = squad.Example("q9", "t", ctx, "When?", ["1857"], [25])
  with pytest.raises(ValueError, match=r"q9: answer '1857' not found in its context"):
    squad.featurize(tok, [bad], 64)
  with pytest.raises(ValueError, match="empty question"):
    squad.featurize(tok, [squad.Example("q", "t", ctx, "  ", ["1856"], [25])], 64)
  with pytest.raises(ValueError, match="empty answer"):
    squad.featurize(tok, [squad.Example("q", "t", ctx, "When?", [" "], [6])], 64)
  with pytest.raises(ValueError, match="no room for context"):
    squad.featurize(tok, [_ex(ctx, "when " * 20, ["1856"])], 16, max_query_len=64)
  with pytest.raises(ValueError, match="not a SQuAD JSON"):
    squad.examples_from_json({"version": "1.1"})
  with pytest.raises(ValueError, match="no split 'dev'"):
    squad.load_examples("dev", source="file", squad_dir="/nonexistent")


def test_tfds_records_convert_like_json():
  obj = {"data": [{"title": "T", "paragraphs": [{"context": "Köln is a city.", "qas": [
      {"id": "a1", "question": "What is Köln?", "answers": [
          {"text": "a city", "answer_start": 8}, {"text": "city", "answer_start": 10}]}]}]}]}
  records = [{"id": b"a1", "title": b"T", "context": "Köln is a city.".encode(),
              "question": "What is Köln?".encode(),
              "answers": {"text": np.array([b"a city", b"city"], object),
                          "answer_start": np.array([8, 10], np.int32)}}]
  assert squad.examples_from_tfds_records(records) == squad.examples_from_json(obj)


@needs_squad
def test_squad_tfds_source_matches_json(tmp_path, monkeypatch):
  """Builds a small TFDS squad/v1.1 with TFDS' own builder (its download step pointed at JSON
  files cut from dev-v1.1.json), then loads it through the 'tfds' and 'auto' paths."""
  import tensorflow_datasets as tfds
  with open(SQUAD_DIR / "dev-v1.1.json") as f:
    full = json.load(f)
  src = tmp_path / "json"
  src.mkdir()
  parts = {"train": full["data"][:1], "validation": full["data"][1:2]}
  for split, articles in parts.items():
    with open(src / squad.FILES[split], "w") as f:
      json.dump({"version": "1.1", "data": articles}, f)
  files = {"train": str(src / squad.FILES["train"]), "dev": str(src / squad.FILES["validation"])}
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract",
                      lambda self, urls: files)
  data_dir = tmp_path / "tfds"
  tfds.builder(squad.TFDS_NAME, data_dir=str(data_dir)).download_and_prepare()
  assert squad.tfds_prepared(str(data_dir))
  for split in squad.SPLITS:
    ref = squad.load_examples(split, source="file", squad_dir=str(src))
    assert squad.load_examples(split, data_dir=str(data_dir), source="tfds") == ref
    assert squad.load_examples(split, data_dir=str(data_dir), source="auto",
                               squad_dir="/nonexistent") == ref
  with pytest.raises(FileNotFoundError, match="not prepared under"):
    squad.load_examples("validation", data_dir=str(tmp_path), source="tfds")


@needs_squad
def test_split_by_article(dev_examples):
  tr, held, titles = squad.split_articles(dev_examples, 0.75, seed=0)
  assert len(titles) == 36 and len(tr) + len(held) == len(dev_examples) == 10570
  assert {e.title for e in tr} == set(titles)
  assert not {e.title for e in tr} & {e.title for e in held}  # no shared article...
  assert not {e.context for e in tr} & {e.context for e in held}  # ...nor context
  again = squad.split_articles(list(reversed(dev_examples)), 36, seed=0)[2]
  assert again == titles  # deterministic, order-free; a count works like the fraction
  assert squad.split_articles(dev_examples, 0.75, seed=1)[2] != titles
  for bad in (48, 0.001, 100):
    with pytest.raises(ValueError, match="need at least one article on each side"):
      squad.split_articles(dev_examples, bad)


@needs_squad
@pytest.mark.parametrize("max_len", [384, 256])  # configs/squad.py's default; the CPU runs'
def test_windows_cover_every_dev_answer(tok, dev_examples, max_len):
  """Every gold answer (all of them, not just the first) of the real dev set lies whole in at
  least one window, and its labelled span cuts it from the context."""
  d = config("squad").data
  feats = squad.featurize(tok, dev_examples, max_len, d.doc_stride, d.max_query_len)
  by_ex = collections.defaultdict(list)
  for f, xi in enumerate(feats.example):
    by_ex[int(xi)].append(f)
  missed = []
  for xi, ex in enumerate(dev_examples):
    o = feats.offsets[xi]
    for (a, b), text in zip(feats.answer_spans[xi], ex.answers):
      assert text in ex.context[o[a, 0]:o[b, 1]]
      if not any(feats.win_lo[f] <= a and b < feats.win_hi[f] for f in by_ex[xi]):
        missed.append((ex.id, text))
  assert sum(len(e.answers) for e in dev_examples) == 34726
  assert not missed, missed[:5]


# ---------------------------------------------------------------------------------------------
# end to end through the trainer


def _cfg(name, arg="runlocal=True", **overrides):
  return config(name, arg, **overrides)


@needs_conll_raw
def test_ner_end_to_end(tmp_path):
  """The raw-file fallback of source='auto' (no TFDS copy under the data dir); the TFDS path
  gives the same sentences (test_conll_tfds_and_raw_files_agree) and is 10x slower to read."""
  (tmp_path / "no_tfds").mkdir()
  cfg = _cfg("ner", num_train_steps=2, data__tfds_data_dir=str(tmp_path / "no_tfds"),
             data__conll_dir=str(CONLL_DIR),
             data__bucket_boundaries=(64,))  # one shape: one compile of each step
  tmp_path = tmp_path / "wd"
  result = trainer.train_and_evaluate(cfg, str(tmp_path))
  for split in ("dev", "test"):
    for k in ("precision", "recall", "f1", "accuracy"):
      assert 0.0 <= result[f"{split}/{k}"] <= 1.0, (split, k)
  assert result["step"] == 2 and result["best_step"] == 2
  run = ckpt_lib.read_run_file(tmp_path)
  assert run["head"] == "token" and run["num_labels"] == 9 and run["best_metric"] == "f1"
  train = [l for l in read_jsonl(tmp_path / "metrics.jsonl") if l["split"] == "train"]
  assert [l["step"] for l in train] == [1, 2]
  assert all(np.isfinite(l["loss"]) and 0 <= l["accuracy"] <= 1 for l in train)
  # predict: word-level predictions of the (limited) test split, conlleval layout
  cfg = cfg.copy_and_resolve_references()
  cfg.mode = "predict"
  pred = trainer.train_and_evaluate(cfg, str(tmp_path))
  assert pred["dev/f1"] == pytest.approx(result["dev/f1"])
  blocks = pathlib.Path(pred["test_file"]).read_text().strip("\n").split("\n\n")
  assert len(blocks) == cfg.data.eval_limit
  test = conll.load_sentences("test", source="file", conll_dir=str(CONLL_DIR))
  for block, words in zip(blocks, test["words"]):
    rows = [line.split(" ") for line in block.split("\n")]
    assert [r[0] for r in rows] == words
    assert all(r[1] in conll.LABEL_NAMES and r[2] in conll.LABEL_NAMES for r in rows)


@needs_squad
def test_squad_end_to_end(tmp_path):
  cfg = _cfg("squad", num_train_steps=2, data__squad_dir=str(SQUAD_DIR),
             data__tfds_data_dir=str(tmp_path / "no_tfds"))
  (tmp_path / "no_tfds").mkdir()
  result = trainer.train_and_evaluate(cfg, str(tmp_path / "wd"))
  assert 0.0 <= result["exact_match"] <= result["f1"] <= 100.0
  assert result["num_questions"] == cfg.data.eval_limit and result["num_unanswered"] == 0
  run = ckpt_lib.read_run_file(tmp_path / "wd")
  assert run["head"] == "qa" and run["best_metric"] == "f1"
  train = [l for l in read_jsonl(tmp_path / "wd" / "metrics.jsonl") if l["split"] == "train"]
  assert [l["step"] for l in train] == [1, 2] and all(np.isfinite(l["loss"]) for l in train)
  task = tasks_lib.get_task(cfg)
  assert (task.train_split, task.eval_splits) == ("dev_train", ("dev_heldout",))
  held_titles = {e.title for e in task.examples("dev_heldout")}
  assert not held_titles & {e.title for e in task.examples("dev_train")}
  cfg = cfg.copy_and_resolve_references()
  cfg.mode = "predict"
  pred = trainer.train_and_evaluate(cfg, str(tmp_path / "wd"))
  with open(pred["dev_heldout_file"]) as f:
    answers = json.load(f)
  assert set(answers) == {e.id for e in task.examples("dev_heldout")}
  contexts = {e.id: e.context for e in task.examples("dev_heldout")}
  assert all(a in contexts[q] for q, a in answers.items())
  assert pred["f1"] == pytest.approx(result["f1"])


def test_unknown_task_and_bad_task_config(tmp_path):
  cfg = _cfg("ner")
  cfg.task = "ner"
  with pytest.raises(ValueError, match=r"unknown task 'ner'; known: .*conll2003.*squad"):
    tasks_lib.get_task(cfg)
  with pytest.raises(ValueError, match="conll2003 has no split 'validation'"):
    tasks_lib.get_task(_cfg("ner", data__eval_splits=("validation",)))
  with pytest.raises(ValueError, match="unknown config argument 'task'"):
    config("ner", "task=sst2")
  with pytest.raises(ValueError, match="squad_train_articles must be >= 0"):
    tasks_lib.get_task(_cfg("squad", data__squad_train_articles=-1.0))
  with pytest.raises(ValueError, match="doc_stride must be >= 1"):
    tasks_lib.get_task(_cfg("squad", data__doc_stride=0))


@needs_squad
def test_squad_too_many_training_articles(tmp_path):
  cfg = _cfg("squad", "runlocal=True,train_articles=48", data__squad_dir=str(SQUAD_DIR),
             data__source="tsv")
  with pytest.raises(ValueError, match="48 training articles of 48"):
    trainer.train_and_evaluate(cfg, str(tmp_path))


def test_missing_data_names_what_to_set(tmp_path, monkeypatch):
  empty = tmp_path / "empty"
  empty.mkdir()
  monkeypatch.setenv("TFDS_DATA_DIR", str(empty))
  for var in ("CONLL2003_DIR", "SQUAD_DIR"):
    monkeypatch.delenv(var, raising=False)
  with pytest.raises(FileNotFoundError, match=r"config\.data\.conll_dir") as e:
    trainer.train_and_evaluate(_cfg("ner"), str(tmp_path / "wd"))
  assert "TFDS_DATA_DIR" in str(e.value) and "CONLL2003_DIR" in str(e.value)
  with pytest.raises(FileNotFoundError, match=r"config\.data\.squad_dir") as e:
    trainer.train_and_evaluate(_cfg("squad"), str(tmp_path / "wd2"))
  assert "SQUAD_DIR" in str(e.value) and "dev-v1.1.json" in str(e.value)
  # the official protocol without the train file names it
  with pytest.raises(FileNotFoundError, match="train-v1.1.json"):
    tasks_lib.get_task(_cfg("squad", "runlocal=True,train_articles=0",
                            data__squad_dir=str(empty))).load("train")
