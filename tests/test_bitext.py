"""Tests for optical_jax.data.bitext: file/TFDS readers, empty policy, take/exclude, config loading."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optical_jax.data import bitext as bt
from optical_jax.errors import InputError


def _write(path, text, mode="w"):
  if mode == "wb":
    with open(path, "wb") as f:
      f.write(text)
  else:
    with open(path, "w", encoding="utf-8", newline="") as f:
      f.write(text)
  return str(path)


def _jsonl(path, records):
  return _write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


# --- line-aligned files -----------------------------------------------------------------------


def test_lines_basic(tmp_path):
  f = _write(tmp_path / "a.sw", "habari\r\n\ufeffsiyo BOM\nndio\u2028bado mstari mmoja\n")
  e = _write(tmp_path / "a.en", "\ufeffhello\nnot a BOM\nyes\u2028still one line")
  b = bt.read_lines(f, e)
  assert b.foreign == ["habari", "\ufeffsiyo BOM", "ndio\u2028bado mstari mmoja"]
  assert b.english == ["hello", "not a BOM", "yes\u2028still one line"]
  assert b.stats == {"read": 3, "skipped_empty": 0, "excluded": 0, "pairs": 3}
  assert b.name == "a.sw"


def test_lines_unequal_counts_names_both_files(tmp_path):
  f = _write(tmp_path / "x.sw", "a\nb\nc\n")
  e = _write(tmp_path / "x.en", "a\nb\n")
  with pytest.raises(InputError) as err:
    bt.read_lines(f, e)
  msg = str(err.value)
  assert msg.startswith(f"{f}: ") and e in msg and "3 lines" in msg and "2 lines" in msg


def test_lines_bad_utf8_gives_path_line(tmp_path):
  f = _write(tmp_path / "bad.sw", b"ok\nok\nbad \xff\xfe byte\n", mode="wb")
  e = _write(tmp_path / "bad.en", "ok\nok\nok\n")
  with pytest.raises(InputError) as err:
    bt.read_lines(f, e)
  assert err.value.path == f and err.value.line == 3
  assert str(err.value).startswith(f"{f}:3: not valid UTF-8")


def test_lines_missing_file(tmp_path):
  e = _write(tmp_path / "a.en", "x\n")
  with pytest.raises(InputError, match="file not found"):
    bt.read_lines(tmp_path / "nope.sw", e)


def test_empty_policy(tmp_path):
  f = _write(tmp_path / "e.sw", "a\n   \nc\nd\n")
  e = _write(tmp_path / "e.en", "A\nB\nC\n\t\n")
  b = bt.read_lines(f, e, empty="skip")
  assert b.foreign == ["a", "c"] and b.english == ["A", "C"]
  assert b.stats["read"] == 4 and b.stats["skipped_empty"] == 2 and b.stats["pairs"] == 2
  with pytest.raises(InputError) as err:
    bt.read_lines(f, e, empty="error")
  assert (err.value.path, err.value.line) == (f, 2)  # the foreign file holds the empty side
  f2 = _write(tmp_path / "g.sw", "a\nb\n")
  e2 = _write(tmp_path / "g.en", "A\n \n")
  with pytest.raises(InputError) as err:
    bt.read_lines(f2, e2, empty="error")
  assert (err.value.path, err.value.line) == (e2, 2)
  with pytest.raises(InputError, match="empty must be one of"):
    bt.read_lines(f, e, empty="keep")


def test_lines_multiple_files(tmp_path):
  f1, e1 = _write(tmp_path / "1.sw", "a\n"), _write(tmp_path / "1.en", "A\n")
  f2, e2 = _write(tmp_path / "2.sw", "b\nc\n"), _write(tmp_path / "2.en", "B\nC\n")
  b = bt.read_lines([f1, f2], [e1, e2])
  assert b.foreign == ["a", "b", "c"] and b.english == ["A", "B", "C"]


# --- TSV -----------------------------------------------------------------------------------


def test_tsv(tmp_path):
  p = _write(tmp_path / "p.tsv", "habari\thello\nasante\tthanks\n\nndio\tyes\n")
  b = bt.read_tsv(p)
  assert list(b.pairs()) == [("habari", "hello"), ("asante", "thanks"), ("ndio", "yes")]
  assert b.stats["skipped_empty"] == 1
  q = _write(tmp_path / "q.tsv", "id\ten\tsw\n1\thello\thabari\n2\tthanks\tasante\n")
  b = bt.read_tsv(q, foreign_column=2, english_column=1, skip_header=True)
  assert list(b.pairs()) == [("habari", "hello"), ("asante", "thanks")]


def test_tsv_wrong_column_count(tmp_path):
  p = _write(tmp_path / "p.tsv", "a\tA\nb\tB\textra\n")
  with pytest.raises(InputError) as err:
    bt.read_tsv(p)
  assert (err.value.path, err.value.line) == (p, 2)
  assert "expected 2 tab-separated columns, found 3" in str(err.value)
  r = _write(tmp_path / "r.tsv", "a\tA\tx\nb B\n")
  with pytest.raises(InputError) as err:
    bt.read_tsv(r, num_columns=3)
  assert (err.value.path, err.value.line) == (r, 2)
  with pytest.raises(InputError):
    bt.read_tsv(r, foreign_column=1, english_column=1)


# --- JSONL ---------------------------------------------------------------------------------


def test_jsonl(tmp_path):
  p = _jsonl(tmp_path / "q.jsonl", [{"_id": "1", "text": "Nani?", "text_en": "Who?"},
                                    {"_id": "2", "text": "Lini?", "text_en": "When?"}])
  with open(p, "a", encoding="utf-8") as f:
    f.write("\n   \n")  # trailing blank lines are ignored
  b = bt.read_jsonl(p)
  assert list(b.pairs()) == [("Nani?", "Who?"), ("Lini?", "When?")]
  c = _jsonl(tmp_path / "c.jsonl", [{"src": "a", "tgt": "A"}])
  assert list(bt.read_jsonl(c, foreign_field="src", english_field="tgt").pairs()) == [("a", "A")]


@pytest.mark.parametrize("bad_line,problem", [
    ('{"text": "a", "text_en": ', "malformed JSON"),
    ('{"text": "a"}', "missing field 'text_en'"),
    ('{"text": 3, "text_en": "A"}', "field 'text' is int"),
    ('["text", "text_en"]', "expected a JSON object"),
])
def test_jsonl_bad_record(tmp_path, bad_line, problem):
  p = _write(tmp_path / "bad.jsonl", '{"text": "x", "text_en": "X"}\n\n' + bad_line + "\n")
  with pytest.raises(InputError) as err:
    bt.read_jsonl(p)
  assert (err.value.path, err.value.line) == (p, 3)
  assert problem in str(err.value)


def test_jsonl_empty_field_policy(tmp_path):
  p = _jsonl(tmp_path / "e.jsonl", [{"text": "a", "text_en": "A"}, {"text": "b", "text_en": None},
                                    {"text": " ", "text_en": "C"}])
  assert bt.read_jsonl(p).stats["skipped_empty"] == 2
  with pytest.raises(InputError) as err:
    bt.read_jsonl(p, empty="error")
  assert (err.value.line, "field 'text_en'" in str(err.value)) == (2, True)


# --- take / exclude ------------------------------------------------------------------------


def test_take():
  b = bt.Bitext("x", ["a", "b", "c"], ["A", "B", "C"])
  t = bt.take(b, 2)
  assert t.foreign == ["a", "b"] and t.stats["taken_from"] == 3 and t.stats["pairs"] == 2
  assert len(bt.take(b, 10)) == 3 and "taken_from" not in bt.take(b, 10).stats
  with pytest.raises(InputError):
    bt.take(b, -1)


def test_normalize_text():
  assert bt.normalize_text("  Who   is\tX?\n") == "who is x?"
  assert bt.normalize_text("ＡＢＣ") == "abc"  # NFKC folds full-width letters
  assert bt.normalize_text("Straße") == bt.normalize_text("STRASSE")  # casefold
  assert bt.normalize_text("Who is X") != bt.normalize_text("Who is X?")  # punctuation kept


@settings(max_examples=50, deadline=None)
@given(st.text())
def test_normalize_text_idempotent(s):
  n = bt.normalize_text(s)
  assert bt.normalize_text(n) == n


def test_exclude():
  b = bt.Bitext("x", ["Nani?", "Lini?", "Wapi?", "Kwa nini?"], ["Who?", "When?", "Where?", "Why?"])
  kept, dropped = bt.exclude(b, ["  who? ", "WAPI?", "unrelated", ""])
  assert dropped == 2 and kept.foreign == ["Lini?", "Kwa nini?"]
  assert kept.stats["excluded"] == 2 and kept.stats["pairs"] == 2 and kept.stats["read"] == 4


def test_read_texts(tmp_path):
  lines = _write(tmp_path / "t.txt", "a\nb\n")
  js = _jsonl(tmp_path / "t.jsonl", [{"text": "c", "text_en": "C"}])
  tsv = _write(tmp_path / "t.tsv", "d\tD\te\n")
  assert bt.read_texts({"texts": ["z"]}) == ["z"]
  assert bt.read_texts({"type": "lines", "path": lines}) == ["a", "b"]
  assert bt.read_texts({"type": "jsonl", "path": js}) == ["c", "C"]
  assert bt.read_texts({"type": "jsonl", "path": [js, js], "fields": ["text_en"]}) == ["C", "C"]
  assert bt.read_texts({"type": "tsv", "path": tsv, "columns": [2, 0]}) == ["e", "d"]
  with pytest.raises(InputError) as err:
    bt.read_texts({"type": "jsonl", "path": js, "fields": ["nope"]})
  assert (err.value.path, err.value.line) == (js, 1)
  with pytest.raises(InputError, match="unknown keys"):
    bt.read_texts({"type": "lines", "path": lines, "field": "x"})


# --- config-driven loading -----------------------------------------------------------------


def test_load_source_and_order_of_filters(tmp_path):
  f = _write(tmp_path / "s.sw", "a\nb\n\nc\nd\n")
  e = _write(tmp_path / "s.en", "A\nB\nX\nC\nD\n")
  spec = {"type": "lines", "foreign": f, "english": e, "exclude": [{"texts": ["b"]}], "take": 2,
          "label": "toy"}
  b = bt.load_source(spec)
  # Exclusion first, then take: the first two pairs that survive.
  assert b.name == "toy" and b.foreign == ["a", "c"]
  assert b.stats == {"read": 5, "skipped_empty": 1, "excluded": 1, "taken_from": 3, "pairs": 2}
  assert bt.load_source(bt.SourceSpec.from_dict(spec)).foreign == ["a", "c"]


@pytest.mark.parametrize("spec,problem", [
    ({"type": "csv", "path": "x"}, "type must be one of"),
    ({"type": "jsonl"}, "missing ['path']"),
    ({"type": "jsonl", "path": "x", "foreign": "y"}, "unknown keys ['foreign']"),
    ({"type": "tfds", "name": "x"}, "missing ['src_key']"),
    ({"type": "jsonl", "path": "x", "take": -3}, "take must be"),
    ({"type": "jsonl", "path": "x", "empty": "drop"}, "empty must be"),
    ("lines", "must be a mapping"),
])
def test_bad_source_spec(spec, problem):
  with pytest.raises(InputError) as err:
    bt.load_source(spec)
  assert problem in str(err.value)


def test_mix(tmp_path):
  a = bt.Bitext("a", ["x"] * 3, ["X"] * 3)
  b = bt.Bitext("b", ["y"], ["Y"])
  m = bt.mix([a, b])
  assert m.ratios == [0.75, 0.25] and m.seed == 0
  m = bt.mix([a, b], [1, 3], seed=5)
  assert m.ratios == [0.25, 0.75] and m.seed == 5
  assert [s["name"] for s in m.stats()] == ["a", "b"]
  for ratios in ([1], [1, 0], [1, -1], [1, float("nan")]):
    with pytest.raises(InputError):
      bt.mix([a, b], ratios)
  with pytest.raises(InputError, match="no pairs"):
    bt.mix([a, bt.Bitext("empty", [], [])])
  p = _jsonl(tmp_path / "m.jsonl", [{"text": "c", "text_en": "C"}])
  m = bt.load_mixture({"sources": [{"type": "jsonl", "path": p}], "seed": 3})
  assert len(m.sources[0]) == 1 and m.seed == 3
  with pytest.raises(InputError, match="unknown keys"):
    bt.load_mixture({"sources": [], "ratio": [1]})


# --- TFDS ----------------------------------------------------------------------------------


def test_tfds_mock_data():
  """The registered ted_hrlr_translate builder, with tfds.testing.mock_data (str values, no files)."""
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6):
    b = bt.read_tfds("ted_hrlr_translate/pt_to_en", src_key="pt", tgt_key="en", split="train")
    assert b.stats["read"] == 6 and all(isinstance(t, str) for t in b.foreign + b.english)
    c = bt.load_source({"type": "tfds", "name": "ted_hrlr_translate/pt_to_en", "src_key": "pt",
                        "take": 2})
    assert c.foreign == b.foreign[:2] and c.english == b.english[:2]
    with pytest.raises(InputError) as err:
      bt.read_tfds("ted_hrlr_translate/pt_to_en", src_key="sw")
    assert "record 0: no key 'sw'" in str(err.value)
    assert str(err.value).startswith("tfds:ted_hrlr_translate/pt_to_en[train]: ")


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory):
  """A tiny Translation dataset built locally as ArrayRecord (bytes values on read)."""
  tfds = pytest.importorskip("tensorflow_datasets")

  class OpticalTinyTranslate(tfds.core.GeneratorBasedBuilder):  # pylint: disable=unused-variable
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self,
                                   features=tfds.features.Translation(languages=("en", "sw")))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(5), "test": self._generate_examples(2)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {"en": f"hello {i} café" if i != 3 else "", "sw": f"habari {i} ñ"}

  data_dir = str(tmp_path_factory.mktemp("tfds"))
  OpticalTinyTranslate(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return data_dir


def test_tfds_local_array_record(tiny_tfds_dir):
  b = bt.load_source({"type": "tfds", "name": "optical_tiny_translate", "src_key": "sw",
                      "tgt_key": "en", "split": "train", "data_dir": tiny_tfds_dir})
  assert b.stats == {"read": 5, "skipped_empty": 1, "excluded": 0, "pairs": 4}
  assert sorted(b.foreign) == ["habari 0 ñ", "habari 1 ñ", "habari 2 ñ", "habari 4 ñ"]
  assert sorted(b.english) == ["hello 0 café", "hello 1 café", "hello 2 café", "hello 4 café"]
  assert all(f.split()[1] == e.split()[1] for f, e in b.pairs())  # still aligned
  assert len(bt.read_tfds("optical_tiny_translate", src_key="sw", split="test",
                          data_dir=tiny_tfds_dir)) == 2
  with pytest.raises(InputError, match=r"record \d: empty key 'en'"):
    bt.read_tfds("optical_tiny_translate", src_key="sw", data_dir=tiny_tfds_dir, empty="error")
  with pytest.raises(InputError, match="Unknown split"):
    bt.read_tfds("optical_tiny_translate", src_key="sw", split="validation", data_dir=tiny_tfds_dir)


def test_tfds_missing_dataset_does_not_download(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(InputError) as err:
    bt.read_tfds("ted_hrlr_translate/pt_to_en", src_key="pt", data_dir=str(tmp_path))
  assert str(err.value).startswith("tfds:ted_hrlr_translate/pt_to_en[train]: cannot open")
  assert not os.path.exists(tmp_path / "downloads")
  with pytest.raises(InputError, match="cannot open"):
    bt.read_tfds("no_such_dataset_xyz", src_key="pt", data_dir=str(tmp_path))


# --- real data -----------------------------------------------------------------------------


def test_ntrex_swahili(shared_data):
  d = os.path.join(shared_data, "bitext", "ntrex")
  b = bt.load_source({"type": "lines", "foreign": os.path.join(d, "swa.txt"),
                      "english": os.path.join(d, "eng.txt"), "empty": "error"})
  assert len(b) == 1997 and b.stats["skipped_empty"] == 0


def test_lafand_swahili_train(shared_data):
  d = os.path.join(shared_data, "bitext", "lafand", "en-swa")
  b = bt.read_lines(os.path.join(d, "train.swa"), os.path.join(d, "train.en"))
  assert b.stats["read"] == 30782


def test_afriqa_swahili_query_bitext_and_test_exclusion(shared_data):
  q = os.path.join(shared_data, "afriqa-clir", "queries")
  paths = [os.path.join(q, "swa.train.jsonl"), os.path.join(q, "swa.dev.jsonl")]
  test = os.path.join(q, "swa.test.jsonl")
  full = bt.load_source({"type": "jsonl", "path": paths, "empty": "error"})
  assert len(full) == 832
  kept = bt.load_source({"type": "jsonl", "path": paths,
                         "exclude": [{"type": "jsonl", "path": test, "fields": ["text", "text_en"]}]})
  assert kept.stats["excluded"] == 4 and len(kept) == 828
  # The README's four: each shares its English side with a test query; no Swahili side does.
  def test_side(field):
    return {bt.normalize_text(t) for t in bt.read_texts({"type": "jsonl", "path": test, "fields": [field]})}
  test_en, test_sw = test_side("text_en"), test_side("text")
  dropped = [(f, e) for f, e in full.pairs() if (f, e) not in set(kept.pairs())]
  assert len(dropped) == 4
  assert all(bt.normalize_text(e) in test_en for _, e in dropped)
  assert not any(bt.normalize_text(f) in test_sw | test_en for f, _ in dropped)
