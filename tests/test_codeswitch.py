"""Tests for optical_jax.data.codeswitch: switching, lexicon files, induction, precision@1, training."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from optical_jax.data import bitext as bt
from optical_jax.data import codeswitch as cs
from optical_jax.data import pipeline as pl
from optical_jax.errors import InputError

from test_pipeline import FakeTokenizer  # pylint: disable=g-bad-import-order


def _corpus(n_words: int, seed: int = 0):
  """Sentences of 10 words from a 200-word vocabulary; the lexicon knows the even words."""
  rng = np.random.default_rng(seed)
  vocab = [f"w{i}" for i in range(200)]
  ids = rng.integers(0, 200, n_words)
  texts = [" ".join(vocab[i] for i in ids[a:a + 10]) for a in range(0, n_words, 10)]
  lexicon = {f"w{i}": (f"T{i}a", f"T{i}b") for i in range(0, 200, 2)}
  return texts, lexicon


def _changed_words(before, after):
  return sum(a != b for x, y in zip(before, after) for a, b in zip(x.split(), y.split()))


# ----------------------------------------------------------------------------- switching


def test_switching_is_deterministic_per_seed_and_differs_across_seeds():
  texts, lex = _corpus(2000)
  a, _, _ = cs.code_switch(texts, lex, 0.3, seed=7)
  b, _, _ = cs.code_switch(texts, lex, 0.3, seed=7)
  c, _, _ = cs.code_switch(texts, lex, 0.3, seed=8)
  assert a == b
  assert a != c
  # Example i depends on (seed, i) only: switching a subset gives the same sentences.
  d, _, _ = cs.code_switch(texts[:50], lex, 0.3, seed=7)
  assert d == a[:50]
  # Another stream (source) draws other switches.
  e, _, _ = cs.code_switch(texts, lex, 0.3, seed=7, stream=1)
  assert e != a


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5])
def test_switches_the_configured_fraction_of_switchable_words(rate):
  texts, lex = _corpus(10_000)
  out, switchable, switched = cs.code_switch(texts, lex, rate, seed=0)
  n_switchable = sum(w in lex for t in texts for w in t.split())
  assert switchable == n_switchable > 4000
  assert _changed_words(texts, out) == switched
  assert abs(switched / switchable - rate) < 0.02
  # Only lexicon words change, each into one of its translations.
  for x, y in zip(texts, out):
    for a, b in zip(x.split(), y.split()):
      assert a == b or b in lex[a]


def test_rate_zero_is_the_identity():
  texts, lex = _corpus(500)
  out, switchable, switched = cs.code_switch(texts, lex, 0.0, seed=3)
  assert out == texts and switchable == switched == 0
  mixture = bt.mix([bt.Bitext("s", texts, texts)])
  assert cs.switch_mixture(mixture, dict(rate=0.0, dictionary="/no/such/file"), data_seed=0) is mixture


def test_switch_keeps_punctuation_spacing_and_capitals():
  lex = {"haus": ("house",), "katze": ("cat",)}
  out, switchable, switched = cs.switch_text('"Haus,  und  (katze)!', lex, 1.0,
                                             np.random.default_rng(0))
  assert out == '"House,  und  (cat)!'
  assert (switchable, switched) == (2, 2)
  assert cs.words('"Haus,  und -- (katze)!') == ["haus", "und", "katze"]


def test_side_choice_switches_only_that_side(tmp_path):
  lex = tmp_path / "lex.txt"
  lex.write_text("haus house\nhouse maison\n", encoding="utf-8")
  pairs = bt.Bitext("s", ["das haus"] * 20, ["the house"] * 20)
  mixture = bt.mix([pairs])
  f = cs.switch_mixture(mixture, dict(rate=1.0, side="foreign", dictionary=str(lex)), data_seed=0)
  e = cs.switch_mixture(mixture, dict(rate=1.0, side="english", dictionary=str(lex)), data_seed=0)
  assert f.sources[0].foreign == ["das house"] * 20 and f.sources[0].english == pairs.english
  assert e.sources[0].english == ["the maison"] * 20 and e.sources[0].foreign == pairs.foreign
  assert f.sources[0].stats["switched_words"] == 20 == e.sources[0].stats["switchable_words"]
  assert f.ratios == mixture.ratios and f.seed == mixture.seed


def test_a_dictionary_that_switches_almost_nothing_is_refused_unless_forced(tmp_path):
  """Issue 27's silent case: a dictionary of the wrong direction (or NUL bytes, another
  language) switched 0 words and trained exactly as without it. Under 1% of the side's
  words covered now stops with one line naming the file, unless forced."""
  lex = tmp_path / "en-sw.txt"
  lex.write_text("house nyumba\nwater maji\n", encoding="utf-8")   # English -> Swahili
  mixture = bt.mix([bt.Bitext("s", ["nyumba yangu ni kubwa"] * 30, ["my house is big"] * 30)])
  with pytest.raises(InputError) as err:   # used on the foreign side: wrong direction
    cs.switch_mixture(mixture, dict(rate=0.5, side="foreign", dictionary=str(lex)), data_seed=0)
  text = str(err.value)
  assert str(lex) in text and "covers 0 of the 120 foreign words" in text and "\n" not in text
  forced = cs.switch_mixture(mixture, dict(rate=0.5, side="foreign", dictionary=str(lex),
                                           force=True), data_seed=0)
  assert forced.sources[0].stats["switched_words"] == 0
  right = cs.switch_mixture(mixture, dict(rate=1.0, side="english", dictionary=str(lex)),
                            data_seed=0)
  assert right.sources[0].stats["switched_words"] == 30


def test_switched_bitext_gets_its_own_pipeline_fingerprint_and_resumes(tmp_path):
  texts, _ = _corpus(640)
  lex = tmp_path / "lex.txt"
  lex.write_text("".join(f"w{i} {1000 + i}\n" for i in range(0, 200, 2)), encoding="utf-8")
  mixture = bt.mix([bt.Bitext("s", texts, texts)])
  cfg = dict(global_batch=8, buckets=(16,), src_max_length=16, tgt_max_length=16, remainder="drop")

  def batches(rate, seed=0):
    m = cs.switch_mixture(mixture, dict(rate=rate, dictionary=str(lex)), data_seed=seed)
    return pl.BitextBatches(m, FakeTokenizer(), FakeTokenizer(), cfg)

  plain, a, b, other = batches(0.0), batches(0.5), batches(0.5), batches(0.5, seed=1)
  assert a.fingerprint == b.fingerprint
  assert len({plain.fingerprint, a.fingerprint, other.fingerprint}) == 3
  assert not np.array_equal(plain.src.flat, a.src.flat)
  assert np.array_equal(plain.tgt.flat, a.tgt.flat)
  for _ in range(3):
    next(a)
  b.restore(a.state)
  assert all(np.array_equal(x, y) for x, y in zip(next(a).values(), next(b).values()))


@pytest.mark.parametrize("bad, words", [
    (dict(rate=1.5, dictionary="x"), "rate must be a finite number in [0.0, 1.0]"),
    (dict(side="both"), "side must be one of"),
    (dict(rate=0.1), "needs data.code_switch.dictionary"),
    (dict(nope=1), "unknown keys ['nope']"),
])
def test_config_rejects_bad_values(bad, words):
  with pytest.raises(InputError) as e:
    cs.switch_mixture(bt.mix([bt.Bitext("s", ["a"], ["b"])]), bad, data_seed=0)
  assert words in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- lexicon files


def test_read_lexicon_muse_format_merges_files_in_order(tmp_path):
  a, b = tmp_path / "a.txt", tmp_path / "b.txt"
  a.write_text("Haus house\nhaus home\n\nkatze\tcat\n### ###\n", encoding="utf-8")
  b.write_text("haus house 0.5\nhund dog 0.9\n", encoding="utf-8")
  lex = cs.read_lexicon(cs.CodeSwitchConfig(dictionary=f"{a}{os.pathsep}{b}").paths)
  assert lex == {"haus": ("house", "home"), "katze": ("cat",), "hund": ("dog",)}


EXPECTED = "expected 'word translation' or 'word translation score' separated by white space"


@pytest.mark.parametrize("line, words", [
    ("haus", f"{EXPECTED}, found 1 fields"),
    ("haus house home x", f"{EXPECTED}, found 4 fields"),
    ("haus house big", "score 'big' is not a finite number"),
    ("haus house nan", "score 'nan' is not a finite number"),
])
def test_read_lexicon_errors_name_file_and_line(tmp_path, line, words):
  p = tmp_path / "d.txt"
  p.write_text(f"katze cat\n{line}\n", encoding="utf-8")
  with pytest.raises(InputError) as e:
    cs.read_lexicon(p)
  assert str(e.value) == f"{p}:2: {words}"


def test_missing_dictionary_is_one_line_before_anything_is_switched(tmp_path):
  missing = tmp_path / "none.txt"
  with pytest.raises(InputError) as e:
    cs.switch_mixture(bt.mix([bt.Bitext("s", ["a"], ["b"])]), dict(rate=0.5, dictionary=str(missing)),
                      data_seed=0)
  assert str(e.value) == f"{missing}: file not found"


def test_write_then_read_lexicon_round_trip(tmp_path):
  lex = {"haus": [("house", 0.9), ("home", 0.1)], "katze": [("cat", 1.0)]}
  p = tmp_path / "lex.txt"
  cs.write_lexicon(p, lex)
  assert cs.read_lexicon(p) == {"haus": ("house", "home"), "katze": ("cat",)}
  assert os.listdir(tmp_path) == ["lex.txt"]


# ----------------------------------------------------------------------------- induction


def test_induce_lexicon_recovers_planted_translations():
  """A synthetic corpus: each foreign word fi translates ei, sentences are shuffled
  translations plus function words on both sides that occur in every sentence."""
  rng = np.random.default_rng(0)
  pairs = []
  for _ in range(400):
    ids = rng.choice(30, size=int(rng.integers(3, 8)), replace=False)
    f = ["la"] + [f"f{i}" for i in ids]
    e = [f"e{i}" for i in rng.permutation(ids)] + ["the"]
    pairs.append((" ".join(f), " ".join(e)))
  lex = cs.induce_lexicon(pairs, iterations=5, min_count=2, top=2)
  assert all(lex[f"f{i}"][0][0] == f"e{i}" for i in range(30))
  assert lex["la"][0][0] == "the"
  assert all(s1 >= s2 for cands in lex.values() for (_, s1), (_, s2) in zip(cands, cands[1:]))
  assert all(len(c) <= 2 for c in lex.values())
  assert list(lex)[0] == "la"   # by falling frequency
  # min_count drops rare words on both sides.
  rare = cs.induce_lexicon(pairs + [("zz la", "yy the")], min_count=2)
  assert "zz" not in rare and all(t != "yy" for c in rare.values() for t, _ in c)


def test_precision_at_1_hand_made():
  gold = {"haus": ["house", "home"], "katze": ["cat"], "hund": ["dog"], "baum": ["tree"]}
  lexicon = {"haus": [("home", 0.9), ("house", 0.1)], "katze": [("dog", 0.5)], "hund": ["Dog"],
             "maus": [("mouse", 1.0)]}
  r = cs.precision_at_1(lexicon, gold)
  assert r == {"p_at_1": 2 / 3, "coverage": 3 / 4, "covered": 3, "correct": 2, "gold_words": 4}
  assert math.isnan(cs.precision_at_1({}, gold)["p_at_1"])


def test_cli_induce_and_evaluate(tmp_path, capsys):
  f, e = tmp_path / "f.txt", tmp_path / "e.txt"
  f.write_text("das haus\ndie katze\ndas haus und die katze\n" * 3, encoding="utf-8")
  e.write_text("the house\nthe cat\nthe house and the cat\n" * 3, encoding="utf-8")
  gold = tmp_path / "gold.txt"
  gold.write_text("haus house\nkatze cat\nbaum tree\n", encoding="utf-8")
  out = tmp_path / "lex.txt"
  assert cs.main(["induce", "--foreign", str(f), "--english", str(e), "--out", str(out)]) == 0
  assert cs.read_lexicon(out)["haus"] == ("house",)
  assert cs.main(["evaluate", "--lexicon", str(out), "--gold", str(gold)]) == 0
  assert "P@1 1.000 (2/2), coverage 0.667 (2/3 gold words)" in capsys.readouterr().out
  gold.write_text("haus\n", encoding="utf-8")
  assert cs.main(["evaluate", "--lexicon", str(out), "--gold", str(gold)]) == 2
  assert capsys.readouterr().err.startswith(f"error: {gold}:1: expected 'word translation'")


# ----------------------------------------------------------------------------- training


def tiny_lexicon(config, path) -> str:
  """A swa->en lexicon induced from the tiny config's own bitext, written to `path`."""
  pairs = [p for s in config.data.bitext.sources for p in bt.load_source(dict(s)).pairs()]
  cs.write_lexicon(path, cs.induce_lexicon(pairs))
  return str(path)


def test_tiny_config_switches_its_bitext(tmp_path, minilm_dir):
  """The tiny config's training bitext under `--config.data.code_switch.rate=0.25`; training
  with it runs in tests/test_ot_variants.py's smoke (one compilation for both)."""
  from test_train import tiny  # pylint: disable=g-import-not-at-top,g-bad-import-order
  del minilm_dir  # the tiny config's tokenizer
  config = tiny(**{"data.code_switch.rate": 0.25})
  config.data.code_switch.dictionary = tiny_lexicon(config, tmp_path / "swa-en.txt")
  mixture = bt.load_mixture(dict(sources=list(config.data.bitext.sources)))
  switched = cs.switch_mixture(mixture, config.data.code_switch.to_dict(), config.seed)
  for a, b in zip(mixture.sources, switched.sources):
    assert b.english == a.english and b.foreign != a.foreign
    assert abs(b.stats["switched_words"] / b.stats["switchable_words"] - 0.25) < 0.1
