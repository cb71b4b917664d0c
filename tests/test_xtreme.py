"""XTREME-R-style retrieval sets (optical_jax.data.xtreme): LAReQA and bitext retrieval readers,
their bad-input lines, hand-computed metrics, and the evaluator running them unchanged."""

from __future__ import annotations

import json
import math
import os

import pytest

from optical_jax import metrics
from optical_jax.data import xtreme
from optical_jax.errors import InputError


def _para(sentences, qas):
  context = " ".join(sentences)
  breaks, pos = [], 0
  for s in sentences:
    breaks.append([pos, pos + len(s)])
    pos += len(s) + 1
  return {"context": context, "sentences": sentences, "sentence_breaks": breaks, "qas": qas}


def _qa(qid, question, answer_start):
  return {"id": qid, "question": question, "answers": [{"text": "x", "answer_start": answer_start}]}


def write_lareqa(root):
  """en.json (2 articles, 5 sentences, one repeated) and xx.json (3 of the 4 questions + 1 extra)."""
  root.mkdir(parents=True, exist_ok=True)
  en = {"version": "1.1", "data": [
      {"title": "A", "paragraphs": [
          _para(["The river is long.", "It flows north."],
                [_qa("q1", "How long is the river?", 4), _qa("q2", "Where does it flow?", 22)])]},
      {"title": "B", "paragraphs": [
          _para(["Kings ruled here.", "The river is long.", "Rain falls in May."],
                [_qa("q3", "When does rain fall?", 40), _qa("q4", "Who ruled?", 0)])]}]}
  # The foreign file has its own sentences and offsets; only the questions matter.
  xx = {"version": "1.1", "data": [
      {"title": "A", "paragraphs": [
          _para(["Mto ni mrefu.", "Unatiririka kaskazini."],
                [_qa("q1", "Mto una urefu gani?", 0), _qa("q2", "Unatiririka wapi?", 14)])]},
      {"title": "B", "paragraphs": [
          _para(["Wafalme walitawala.", "Mvua hunyesha Mei."],
                [_qa("q3", "Mvua hunyesha lini?", 20), _qa("q9", "Swali bila Kiingereza?", 0)])]}]}
  (root / "en.json").write_text(json.dumps(en), encoding="utf-8")
  (root / "xx.json").write_text(json.dumps(xx), encoding="utf-8")
  return root


def test_lareqa_reads_questions_answer_sentences_and_dedups_sentences(tmp_path):
  root = write_lareqa(tmp_path / "lareqa")
  with pytest.warns(UserWarning, match="1 questions have no English counterpart"):
    ds = xtreme.load("lareqa", path=str(root), lang="xx")
  # 5 sentences, "The river is long." twice -> 4 documents named by their first occurrence.
  assert ds.corpus.ids == ["a0p0s0", "a0p0s1", "a1p0s0", "a1p0s2"]
  assert ds.corpus.texts[0] == "The river is long."
  assert ds.queries["text"].ids == ["q1", "q2", "q3"]
  assert ds.queries["text"]["q1"] == "Mto una urefu gani?"
  assert ds.queries["text_en"]["q1"] == "How long is the river?"
  # Answers located by the *English* answer_start: q2 at 22 is in sentence 1, q3 at 40 in
  # sentence 2 of article B ("Rain falls in May." starts at 37).
  assert ds.qrels == {"q1": {"a0p0s0": 1}, "q2": {"a0p0s1": 1}, "q3": {"a1p0s2": 1}}
  # English questions against English sentences (monolingual): q4 -> "Kings ruled here."
  en = xtreme.load("lareqa", path=str(root), lang="en")
  assert en.qrels["q4"] == {"a1p0s0": 1} and len(en.qrels) == 4


def test_bitext_reads_pairs_and_dedups_english(tmp_path):
  f, e = tmp_path / "x.txt", tmp_path / "en.txt"
  f.write_text("moja\nmbili\ntatu\nnne\n", encoding="utf-8")
  e.write_text("one\ntwo\none\nfour\n", encoding="utf-8")
  ds = xtreme.load("bitext", queries=str(f), corpus=str(e))
  assert ds.corpus.ids == ["e1", "e2", "e4"]
  assert ds.qrels == {"q1": {"e1": 1}, "q2": {"e2": 1}, "q3": {"e1": 1}, "q4": {"e4": 1}}
  assert ds.queries["text"]["q3"] == "tatu" and ds.queries["text_en"]["q3"] == "one"


def test_hand_made_run_metrics_match_hand_computation(tmp_path):
  """P@1, P@5, R@10, nDCG@10 and AP of a hand-made run over a bitext set, by hand."""
  f, e = tmp_path / "x.txt", tmp_path / "en.txt"
  f.write_text("a\nb\nc\n", encoding="utf-8")
  e.write_text("A\nB\nC\n", encoding="utf-8")
  ds = xtreme.load("bitext", queries=str(f), corpus=str(e))
  run = {"q1": {"e1": 3.0, "e2": 2.0, "e3": 1.0},    # relevant at rank 1
         "q2": {"e1": 3.0, "e3": 2.0, "e2": 1.0},    # relevant at rank 3
         "q3": {"e1": 3.0, "e2": 2.0}}               # relevant (e3) not retrieved
  res = metrics.evaluate(run, ds.qrels, ("P@1", "P@5", "R@10", "nDCG@10", "AP"))
  agg = res["aggregate"]
  # One relevant document per query: P@1 = [rank==1], P@5 = [rank<=5]/5, R@10 = [rank<=10],
  # nDCG@10 = 1/log2(rank+1), AP = 1/rank; 0 when not retrieved.
  assert agg["P@1"] == pytest.approx((1 + 0 + 0) / 3)
  assert agg["P@5"] == pytest.approx((0.2 + 0.2 + 0) / 3)
  assert agg["R@10"] == pytest.approx((1 + 1 + 0) / 3)
  assert agg["nDCG@10"] == pytest.approx((1 + 1 / math.log2(4) + 0) / 3)
  assert agg["AP"] == pytest.approx((1 + 1 / 3 + 0) / 3)
  assert res["per_query"]["AP"] == pytest.approx({"q1": 1.0, "q2": 1 / 3, "q3": 0.0})


def _one_line(err) -> str:
  msg = str(err.value)
  assert "\n" not in msg
  return msg


def _lareqa_with(tmp_path, mutate):
  root = write_lareqa(tmp_path / "bad")
  data = json.loads((root / "xx.json").read_text(encoding="utf-8"))
  mutate(data)
  (root / "xx.json").write_text(json.dumps(data), encoding="utf-8")
  return root


@pytest.mark.parametrize("mutate,expected", [
    (lambda d: d["data"][1]["paragraphs"][0]["qas"][0].pop("question"),
     "xx.json: data[1].paragraphs[0].qas[0]: missing 'question'"),
    (lambda d: d["data"][0]["paragraphs"][0]["sentence_breaks"].pop(),
     "xx.json: data[0].paragraphs[0]: 2 sentences but 1 sentence_breaks"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][1].update(id="q1"),
     "xx.json: data[0].paragraphs[0].qas[1]: duplicate question id 'q1' (first at "
     "data[0].paragraphs[0].qas[0])"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].update(question="  "),
     "xx.json: data[0].paragraphs[0].qas[0]: empty question"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(answer_start="4"),
     "xx.json: data[0].paragraphs[0].qas[0].answers[0].answer_start must be an integer, found str"),
    (lambda d: d["data"][0]["paragraphs"][0]["sentence_breaks"].__setitem__(0, [5, 9]),
     "xx.json: data[0].paragraphs[0].qas[0].answers[0].answer_start 0 lies before the first "
     "sentence"),
    (lambda d: d.pop("data"), "xx.json: top level: missing 'data'"),
])
def test_lareqa_bad_input_is_one_line_naming_file_and_place(tmp_path, mutate, expected):
  root = _lareqa_with(tmp_path, mutate)
  with pytest.raises(InputError) as err:
    xtreme.load("lareqa", path=str(root), lang="xx")
  msg = _one_line(err)
  assert expected in msg, msg
  assert msg.startswith(str(root / "xx.json"))


def test_lareqa_invalid_json_names_the_line(tmp_path):
  root = write_lareqa(tmp_path / "lq")
  (root / "xx.json").write_text('{"data": [\n  {"title": "A",,}\n]}', encoding="utf-8")
  with pytest.raises(InputError) as err:
    xtreme.load("lareqa", path=str(root), lang="xx")
  assert _one_line(err).startswith(f"{root / 'xx.json'}:2: not valid JSON (")
  with pytest.raises(InputError) as err:
    xtreme.load("lareqa", path=str(root), lang="zz")
  assert _one_line(err) == f"{root / 'zz.json'}: file not found"
  with pytest.raises(InputError, match="needs dataset.lang"):
    xtreme.load("lareqa", path=str(root))


def test_bitext_bad_input(tmp_path):
  f, e = tmp_path / "x.txt", tmp_path / "en.txt"
  f.write_text("a\nb\nc\n", encoding="utf-8")
  e.write_text("A\nB\n", encoding="utf-8")
  with pytest.raises(InputError) as err:
    xtreme.load("bitext", queries=str(f), corpus=str(e))
  assert _one_line(err) == (f"{f}: has 3 lines but {e} has 2 lines; bitext retrieval needs "
                            "line-aligned files")
  e.write_text("A\n \nC\n", encoding="utf-8")
  with pytest.raises(InputError) as err:
    xtreme.load("bitext", queries=str(f), corpus=str(e))
  assert _one_line(err) == f"{e}:2: empty English sentence"
  with pytest.raises(InputError) as err:
    xtreme.load("bitext", queries=str(f))
  assert "needs dataset.queries (foreign lines) and dataset.corpus" in _one_line(err)
  with pytest.raises(InputError, match="dataset.kind must be one of"):
    xtreme.load("xquad", queries=str(f), corpus=str(e))


def test_shared_sets_read(shared_data):
  """The real XQuAD-R, MLQA-R, Tatoeba and FLORES files read into the expected sizes."""
  xq = xtreme.load("lareqa", path=os.path.join(shared_data, "xquad-r"), lang="el")
  assert len(xq.qrels) == 1190 and len(xq.corpus) == 1180
  ml = xtreme.load("lareqa", path=os.path.join(shared_data, "mlqa-r"), lang="hi")
  assert len(ml.qrels) == 507 and len(ml.corpus) == 6262   # two repeated sentences merged
  d = os.path.join(shared_data, "bitext")
  tat = xtreme.load("bitext", queries=os.path.join(d, "tatoeba", "tatoeba.swh-eng.swh"),
                    corpus=os.path.join(d, "tatoeba", "tatoeba.swh-eng.eng"))
  assert len(tat.qrels) == 390
  fl = xtreme.load("bitext",
                   queries=os.path.join(d, "flores200-african", "corrected", "devtest", "zul_Latn.devtest"),
                   corpus=os.path.join(d, "flores200-african", "original", "devtest", "eng_Latn.devtest"))
  assert len(fl.qrels) == 1012 and len(fl.corpus) == 1012


def test_evaluator_runs_xtreme_kinds_unchanged(tmp_path, minilm_dir):
  """dataset.kind='bitext' / 'lareqa' through evaluator.run: the oracle (the English text
  itself through the same encoder) finds every sentence at rank 1."""
  del minilm_dir
  from optical_jax import evaluator, models
  spec = models.model_spec(weights="random", tokenizer="asset:minilm/tokenizer.json",
                           arch=dict(vocab_size=30522, hidden_size=32, num_layers=1, num_heads=4,
                                     intermediate_size=64, max_position_embeddings=64),
                           query_max_len=32, doc_max_len=32)
  f, e = tmp_path / "x.txt", tmp_path / "en.txt"
  f.write_text("moja\nmbili\ntatu\nnne\n", encoding="utf-8")
  e.write_text("one river\ntwo lakes\nthree kings\nfour mountains\n", encoding="utf-8")
  c = evaluator.default_config()
  c.dataset.kind = "bitext"
  c.dataset.queries, c.dataset.corpus = str(f), str(e)
  c.systems["zeroshot"] = evaluator.system(spec)
  c.systems["oracle"] = evaluator.system(spec, query_field="text_en")
  c.measures = ("P@1", "P@5", "R@10", "nDCG@10", "AP")
  c.cache_dir = "none"
  c.progress = False
  res = evaluator.run(c, str(tmp_path / "out"), log=lambda _: None)
  oracle = res.results["oracle"]["aggregate"]
  assert oracle["P@1"] == 1.0 and oracle["AP"] == 1.0 and oracle["P@5"] == pytest.approx(0.2)
  assert res.results["zeroshot"]["num_queries"] == 4
  assert os.path.exists(tmp_path / "out" / "runs" / "zeroshot.trec")
  root = write_lareqa(tmp_path / "lq")
  c.dataset.kind, c.dataset.queries, c.dataset.corpus = "lareqa", "", ""
  c.dataset.path, c.dataset.lang = str(root), "xx"
  with pytest.warns(UserWarning):
    res = evaluator.run(c, str(tmp_path / "out2"), log=lambda _: None)
  assert res.results["oracle"]["num_queries"] == 3


@pytest.mark.parametrize("arg,kind,n_queries", [("xquad-r,lang=th", "lareqa", 1190),
                                                ("mlqa-r,lang=de,models=minilm", "lareqa", 512),
                                                ("tatoeba,lang=swa", "bitext", 390),
                                                ("flores,lang=tso,original", "bitext", 1012)])
def test_eval_xtreme_config_builds_and_reads(shared_data, arg, kind, n_queries):
  del shared_data
  from configs import eval_xtreme  # pylint: disable=g-import-not-at-top
  c = eval_xtreme.get_config(arg)
  assert c.dataset.kind == kind and "P@1" in c.measures
  assert set(c.baselines) == {s for s in c.systems.keys() if s.endswith("zeroshot")}
  ds = c.dataset
  loaded = xtreme.load(ds.kind, path=ds.path, lang=ds.lang, queries=ds.queries, corpus=ds.corpus)
  assert len(loaded.qrels) == n_queries
  if "original" in arg:
    assert "/original/" in ds.queries
  with pytest.raises(ValueError, match="task must be one of"):
    eval_xtreme.get_config("miracl")
