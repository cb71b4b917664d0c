"""Tests for the BEIR / TREC readers and the run writer in optical_jax.data.beir."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import pytest

from optical_jax.data import beir
from optical_jax.data.beir import DataWarning
from optical_jax.errors import InputError

# The swa test split ships with the repository (data/README.md): no skip.
AFRIQA = Path(__file__).resolve().parents[1] / "data" / "afriqa-clir"


def _write(path: Path, text: str) -> str:
  path.write_text(text, encoding="utf-8")
  return str(path)


def _jsonl(path: Path, rows) -> str:
  return _write(path, "".join(json.dumps(r) + "\n" for r in rows))


# --- real data ----------------------------------------------------------------


def test_real_afriqa_loads_cleanly():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    corpus = beir.load_corpus(AFRIQA)  # a directory means <dir>/corpus.jsonl
    queries = beir.load_queries(AFRIQA / "queries" / "swa.test.jsonl")
    queries_en = beir.load_queries(AFRIQA / "queries" / "swa.test.jsonl", field="text_en")
    qrels = beir.load_qrels(AFRIQA / "qrels" / "swa.test.tsv", query_ids=queries.ids,
                            doc_ids=corpus.ids)
  assert len(corpus) == 5413 and len(set(corpus.ids)) == 5413
  assert corpus.ids[0] == "afq-0001bd84a269" and corpus["afq-0001bd84a269"][0] == "Costa Rica"
  assert len(queries) == 302 and queries.ids == queries_en.ids
  assert queries["swa-test-1"] == "Chama cha FORD-Kenya kilianzishwa na nani?"
  assert queries_en["swa-test-1"] == "Who founded the FORD kenya party?"
  assert len(qrels) == 295 and sum(len(v) for v in qrels.values()) == 295
  assert qrels["swa-test-0"] == {"afq-41ce7b19b4a1": 1}
  assert corpus.full_texts()[0].startswith("Costa Rica Like the rest")
  assert corpus.fingerprint() == beir.load_corpus(AFRIQA / "corpus.jsonl").fingerprint()


# --- corpus -------------------------------------------------------------------


def test_corpus_roundtrip_and_defaults(tmp_path):
  p = _jsonl(tmp_path / "c.jsonl", [{"_id": "d1", "title": "T", "text": "x"},
                                    {"_id": 7, "text": "no title"}])
  c = beir.load_corpus(p)
  assert c.ids == ["d1", "7"] and c["7"] == ("", "no title") and "d1" in c
  assert c.index["7"] == 1 and c.full_texts(" | ") == ["T | x", "no title"]


@pytest.mark.parametrize("second_line, problem", [
    ("{not json}", "not a JSON line"),
    ("[1, 2]", "expected a JSON object"),
    ('{"title": "t", "text": "x"}', "missing '_id'"),
    ('{"_id": "d2", "title": "t"}', "missing 'text'"),
    ('{"_id": "d2", "text": 5}', "'text' must be a string"),
    ('{"_id": "d 2", "text": "x"}', "no whitespace"),
    ('{"_id": "d1", "text": "again"}', "duplicate document id 'd1' (first on line 1)"),
])
def test_corpus_bad_line_names_path_and_line(tmp_path, second_line, problem):
  p = _write(tmp_path / "c.jsonl", '{"_id": "d1", "text": "x"}\n' + second_line + "\n")
  with pytest.raises(InputError) as e:
    beir.load_corpus(p)
  assert str(e.value).startswith(f"{p}:2: ") and problem in str(e.value)


def test_corpus_invalid_utf8_and_missing_file(tmp_path):
  p = tmp_path / "c.jsonl"
  p.write_bytes(b'{"_id": "d1", "text": "x"}\n{"_id": "d2", "text": "\xff"}\n')
  with pytest.raises(InputError, match=rf"^{p}:2: not valid UTF-8"):
    beir.load_corpus(p)
  missing = tmp_path / "nope.jsonl"
  with pytest.raises(InputError, match=rf"^{missing}: file not found"):
    beir.load_corpus(missing)
  with pytest.raises(InputError, match="no documents"):
    beir.load_corpus(_write(tmp_path / "empty.jsonl", "\n"))


# --- queries ------------------------------------------------------------------


def test_queries_jsonl_field_and_tsv(tmp_path):
  p = _jsonl(tmp_path / "q.jsonl", [{"_id": "q1", "text": "swa", "text_en": "eng"}])
  assert beir.load_queries(p).texts == ["swa"]
  assert beir.load_queries(p, field="text_en").texts == ["eng"]
  with pytest.raises(InputError, match=rf"^{p}:1: missing 'text_fr'"):
    beir.load_queries(p, field="text_fr")
  t = _write(tmp_path / "q.tsv", "q1\thello world\nq2\tsecond\tquery\n\n")
  q = beir.load_queries(t)
  assert q.ids == ["q1", "q2"] and q["q2"] == "second\tquery"
  with pytest.raises(InputError, match="needs JSONL"):
    beir.load_queries(t, field="text_en")
  bad = _write(tmp_path / "bad.tsv", "q1\tok\nq2 no tab\n")
  with pytest.raises(InputError, match=rf"^{bad}:2: expected 'query-id<TAB>text'"):
    beir.load_queries(bad)


def test_queries_empty_text_is_error_by_default_and_skippable(tmp_path):
  p = _jsonl(tmp_path / "q.jsonl", [{"_id": "q1", "text": "a"}, {"_id": "q2", "text": "  "},
                                    {"_id": "q3", "text": "c"}])
  with pytest.raises(InputError, match=rf"^{p}:2: query 'q2' has empty 'text'"):
    beir.load_queries(p)
  with pytest.warns(DataWarning, match=r"skipped 1 queries with empty 'text' \(e.g. q2\)"):
    q = beir.load_queries(p, skip_empty=True)
  assert q.ids == ["q1", "q3"]


def test_queries_duplicate_id(tmp_path):
  p = _jsonl(tmp_path / "q.jsonl", [{"_id": "q1", "text": "a"}, {"_id": "q1", "text": "b"}])
  with pytest.raises(InputError, match=rf"^{p}:2: duplicate query id 'q1' \(first on line 1\)"):
    beir.load_queries(p)


def test_irds_without_ir_datasets_is_a_clean_error(monkeypatch):
  monkeypatch.setitem(sys.modules, "ir_datasets", None)  # makes the import fail
  for fn in (beir.load_corpus, beir.load_queries, beir.load_qrels):
    with pytest.raises(InputError, match="needs the ir_datasets package"):
      fn("irds:beir/scifact/test")


# --- qrels --------------------------------------------------------------------


def test_qrels_beir_and_trec_autodetected(tmp_path):
  b = _write(tmp_path / "b.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\nq2\td1\t2\n")
  t = _write(tmp_path / "t.qrels", "q1 0 d1 1\nq1 0 d2 0\n\nq2 Q0 d1 2\n")
  expected = {"q1": {"d1": 1, "d2": 0}, "q2": {"d1": 2}}
  assert beir.load_qrels(b) == expected
  assert beir.load_qrels(t) == expected
  assert beir.load_qrels(_write(tmp_path / "nh.tsv", "q1\td1\t1.0\n")) == {"q1": {"d1": 1}}


@pytest.mark.parametrize("text, line, problem", [
    ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\n", 3, "expected 3 columns"),
    ("q1 0 d1 1\nq1 0 d2 1 extra\n", 2, "expected 4 columns"),
    ("q1\td1\t1\nq1\td2\tyes\n", 2, "relevance must be an integer"),
    ("q1 0 d1 1\nq1 0 d1 0\n", 2, "conflicting judgements for (q1, d1)"),
    ("q1 d1\n", 1, "expected 3 columns (BEIR"),
])
def test_qrels_bad_lines(tmp_path, text, line, problem):
  p = _write(tmp_path / "q.tsv", text)
  with pytest.raises(InputError) as e:
    beir.load_qrels(p)
  assert str(e.value).startswith(f"{p}:{line}: ") and problem in str(e.value)


def test_qrels_unknown_queries_and_documents_warn_and_drop(tmp_path):
  p = _write(tmp_path / "q.tsv", "query-id\tcorpus-id\tscore\n"
             "q1\td1\t1\nq1\tdX\t1\nqZ\td1\t1\nqZ\td2\t1\nq2\tdX\t1\nq2\tdY\t0\n")
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    qrels = beir.load_qrels(p, query_ids=["q1", "q2"], doc_ids=["d1", "d2"])
  messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
  assert messages == [
      f"{p}: dropped 2 judgements of 1 queries not in the query set (e.g. qZ)",
      f"{p}: dropped 3 judgements of 2 documents not in the corpus (e.g. dX, dY)"]
  assert all("\n" not in m for m in messages)
  assert qrels == {"q1": {"d1": 1}}  # q2 lost all its judgements


# --- runs ---------------------------------------------------------------------


def test_write_run_orders_ties_like_trec_eval_and_roundtrips(tmp_path):
  run = {"q2": {"a": 1.0, "c": 1.0, "b": 2.5, "d": 0.1 + 0.2},
         "q1": {"x": 1e-9, "y": 1.0000000001}}
  p = tmp_path / "sub" / "run.trec"
  beir.write_run(p, run, tag="sys")
  lines = p.read_text().splitlines()
  assert lines[:4] == ["q2 Q0 b 1 2.5 sys", "q2 Q0 c 2 1.0 sys", "q2 Q0 a 3 1.0 sys",
                       f"q2 Q0 d 4 {0.1 + 0.2!r} sys"]
  assert lines[4].startswith("q1 Q0 y 1 ")
  assert beir.load_run(p) == run  # exact: scores are written with repr
  assert os.listdir(p.parent) == ["run.trec"]  # no temporary files left behind
  beir.write_run(p, run, tag="sys", depth=1)
  assert len(p.read_text().splitlines()) == 2
  with pytest.raises(ValueError):
    beir.write_run(p, run, tag="has space")
  with pytest.raises(ValueError):
    beir.write_run(p, {"q": {"d": float("nan")}})


@pytest.mark.parametrize("text, line, problem", [
    ("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 1.0\n", 2, "expected 6 columns"),
    ("q1 Q0 d1 1 high t\n", 1, "score must be a number"),
    ("q1 Q0 d1 one 1.0 t\n", 1, "rank must be an integer"),
    ("q1 Q0 d1 1 2.0 t\nq1 Q0 d1 2 1.0 t\n", 2, "listed twice"),
])
def test_load_run_bad_lines(tmp_path, text, line, problem):
  p = _write(tmp_path / "r.trec", text)
  with pytest.raises(InputError) as e:
    beir.load_run(p)
  assert str(e.value).startswith(f"{p}:{line}: ") and problem in str(e.value)
