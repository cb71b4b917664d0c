"""XTREME-R-style retrieval sets as (corpus, queries, qrels): LAReQA (XQuAD-R, MLQA-R) and bitext retrieval.

Two kinds, both read into the evaluator's dataset form (a `beir.Corpus` of English
texts, `beir.Queries` per field, qrels), so `optical_jax.evaluator.run` scores them
exactly as it scores a BEIR collection (`dataset.kind` in the eval config):

* `lareqa` (XQuAD-R, MLQA-R; LAReQA, Roy et al. 2020): SQuAD-layout JSON files with
  `sentences` and `sentence_breaks` per paragraph, one file per language with shared
  question ids. A question in language X (`X.json`) retrieves the English sentence that
  holds its answer, among all sentences of `en.json`. The answer sentence is the
  sentence of the English paragraph whose break contains the English answer's
  `answer_start` (the last sentence starting at or before it). Field `text` is the
  X-language question, `text_en` the English question with the same id (an oracle
  translation). Questions of X without an English counterpart are left out with a
  warning.
* `bitext` (Tatoeba, FLORES-200): two line-aligned files; the sentence on line i of the
  foreign file retrieves line i of the English file among all English lines. `text` is
  the foreign sentence, `text_en` its English translation.

English candidates with identical text are one document (identical texts get identical
embeddings, so ranking them apart would be a coin toss); every query whose answer has
that text is judged relevant to it. Document ids name the first occurrence
(`a3p2s1`: article 3, paragraph 2, sentence 1, counted from 0; `e17`: English line 17),
query ids are the question ids (LAReQA) or `q<line>` (bitext).

Bad input is one `InputError` line naming the file and the place: a missing file,
invalid JSON (with its line), a missing or ill-typed field (with its JSON path, e.g.
`data[3].paragraphs[1].qas[0]: missing 'question'`), unequal `sentences` and
`sentence_breaks`, an answer before the first sentence, duplicate question ids, an
empty question or sentence, unequal line counts of bitext files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any, Dict, List, Mapping, Tuple

from optical_jax import paths
from optical_jax.data import io
from optical_jax.data.beir import Corpus, DataWarning, Qrels, Queries
from optical_jax.errors import InputError

KINDS = ("beir", "lareqa", "bitext")


@dataclasses.dataclass
class RetrievalSet:
  """A retrieval task: English `corpus`, `queries` by field ('text', 'text_en'), `qrels`,
  and the files it was read from (`paths`: corpus, queries, qrels)."""

  corpus: Corpus
  queries: Dict[str, Queries]
  qrels: Qrels
  paths: Dict[str, str]

  def field(self, name: str) -> Queries:
    if name not in self.queries:
      raise InputError(f"query field {name!r} does not exist for this dataset (fields: "
                       f"{', '.join(self.queries)})", self.paths["queries"])
    return self.queries[name]


# ---------------------------------------------------------------------------
# LAReQA (XQuAD-R, MLQA-R).


@dataclasses.dataclass
class _Question:
  qid: str
  text: str
  sentence: str          # the answer sentence's text
  doc_where: str         # article/paragraph/sentence of that sentence


def _load_json(path: str) -> Any:
  path = io.check_file(path)
  try:
    with paths.open(path, "rb") as f:
      raw = f.read()
  except OSError as e:
    raise InputError(f"cannot read: {e.strerror or e}", path) from None
  try:
    return json.loads(raw.decode("utf-8-sig"))
  except UnicodeDecodeError as e:
    raise InputError(f"not valid UTF-8 ({e.reason} at byte {e.start})", path) from None
  except json.JSONDecodeError as e:
    raise InputError(f"not valid JSON ({e.msg}, column {e.colno})", path, e.lineno) from None


def _get(obj: Any, key: str, kind, where: str, path: str) -> Any:
  if not isinstance(obj, Mapping):
    raise InputError(f"{where}: expected a JSON object, found {type(obj).__name__}", path)
  if key not in obj:
    raise InputError(f"{where}: missing {key!r} (fields present: "
                     f"{', '.join(repr(k) for k in list(obj)[:6]) or 'none'})", path)
  value = obj[key]
  if not isinstance(value, kind) or isinstance(value, bool):
    want = {list: "a list", str: "a string", int: "an integer", dict: "an object"}.get(
        kind, getattr(kind, "__name__", str(kind)))
    raise InputError(f"{where}.{key} must be {want}, found {type(value).__name__}", path)
  return value


def read_lareqa(path: io.PathLike) -> Tuple[List[_Question], List[Tuple[str, str]]]:
  """One LAReQA file -> (questions with their answer sentences, all sentences as (where, text)).

  `where` is `a<article>p<paragraph>s<sentence>` (0-based), the document id of a sentence.
  """
  path = os.fspath(path)
  root = _load_json(path)
  data = _get(root, "data", list, "top level", path)
  questions: List[_Question] = []
  sentences: List[Tuple[str, str]] = []
  seen: Dict[str, str] = {}
  for a, article in enumerate(data):
    paragraphs = _get(article, "paragraphs", list, f"data[{a}]", path)
    for p, para in enumerate(paragraphs):
      where = f"data[{a}].paragraphs[{p}]"
      sents = _get(para, "sentences", list, where, path)
      breaks = _get(para, "sentence_breaks", list, where, path)
      if len(sents) != len(breaks):
        raise InputError(f"{where}: {len(sents)} sentences but {len(breaks)} sentence_breaks",
                         path)
      starts = []
      for s, (text, brk) in enumerate(zip(sents, breaks)):
        if not isinstance(text, str) or not text.strip():
          raise InputError(f"{where}.sentences[{s}] must be a non-empty string", path)
        if (not isinstance(brk, list) or len(brk) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in brk)):
          raise InputError(f"{where}.sentence_breaks[{s}] must be [start, end] integers, "
                           f"found {brk!r}", path)
        starts.append(brk[0])
        sentences.append((f"a{a}p{p}s{s}", text.strip()))
      for k, qa in enumerate(_get(para, "qas", list, where, path)):
        qwhere = f"{where}.qas[{k}]"
        qid = _get(qa, "id", str, qwhere, path).strip()
        if not qid or any(c.isspace() for c in qid):
          raise InputError(f"{qwhere}.id must be non-empty without whitespace: {qid!r}", path)
        if qid in seen:
          raise InputError(f"{qwhere}: duplicate question id {qid!r} (first at {seen[qid]})",
                           path)
        seen[qid] = qwhere
        question = _get(qa, "question", str, qwhere, path)
        if not question.strip():
          raise InputError(f"{qwhere}: empty question", path)
        answers = _get(qa, "answers", list, qwhere, path)
        if not answers:
          raise InputError(f"{qwhere}: no answers", path)
        start = _get(answers[0], "answer_start", int, f"{qwhere}.answers[0]", path)
        index = [s for s, b in enumerate(starts) if b <= start]
        if not index:
          raise InputError(f"{qwhere}.answers[0].answer_start {start} lies before the first "
                           "sentence", path)
        s = index[-1]
        questions.append(_Question(qid, question.strip(), sents[s].strip(), f"a{a}p{p}s{s}"))
  if not questions:
    raise InputError("no questions", path)
  return questions, sentences


def load_lareqa(queries_path: io.PathLike, english_path: io.PathLike) -> RetrievalSet:
  """XQuAD-R / MLQA-R: questions of `queries_path` retrieve answer sentences of `english_path`.

  See the module docstring for the task, ids and fields.
  """
  queries_path, english_path = os.fspath(queries_path), os.fspath(english_path)
  english, sentences = read_lareqa(english_path)
  if paths.resolve(queries_path) == paths.resolve(english_path):
    foreign = english
  else:
    foreign, _ = read_lareqa(queries_path)
  doc_of_text: Dict[str, str] = {}
  ids, texts = [], []
  for where, text in sentences:
    if text not in doc_of_text:
      doc_of_text[text] = where
      ids.append(where)
      texts.append(text)
  corpus = Corpus(ids, [""] * len(ids), texts)
  by_id = {q.qid: q for q in english}
  kept = [q for q in foreign if q.qid in by_id]
  dropped = [q.qid for q in foreign if q.qid not in by_id]
  if dropped:
    warnings.warn(f"{queries_path}: {len(dropped)} questions have no English counterpart in "
                  f"{english_path} and are left out (e.g. {', '.join(dropped[:3])})",
                  DataWarning, stacklevel=2)
  if not kept:
    raise InputError(f"no question shares its id with a question of {english_path}",
                     queries_path)
  qids = [q.qid for q in kept]
  queries = {"text": Queries(qids, [q.text for q in kept]),
             "text_en": Queries(qids, [by_id[q.qid].text for q in kept])}
  qrels = {q.qid: {doc_of_text[by_id[q.qid].sentence]: 1} for q in kept}
  return RetrievalSet(corpus, queries, qrels,
                      {"corpus": english_path, "queries": queries_path, "qrels": english_path})


# ---------------------------------------------------------------------------
# Bitext retrieval (Tatoeba, FLORES-200).


def load_bitext(foreign_path: io.PathLike, english_path: io.PathLike) -> RetrievalSet:
  """Line-aligned bitext: foreign line i retrieves English line i among all English lines."""
  foreign_path, english_path = os.fspath(foreign_path), os.fspath(english_path)
  f_lines = io.read_text_lines(foreign_path)
  e_lines = io.read_text_lines(english_path)
  if len(f_lines) != len(e_lines):
    raise InputError(f"has {len(f_lines)} lines but {english_path} has {len(e_lines)} lines; "
                     "bitext retrieval needs line-aligned files", foreign_path)
  doc_of_text: Dict[str, str] = {}
  ids, texts, qids, q_texts, q_en = [], [], [], [], []
  qrels: Qrels = {}
  for n, (f, e) in enumerate(zip(f_lines, e_lines), start=1):
    if not f.strip():
      raise InputError("empty foreign sentence", foreign_path, n)
    if not e.strip():
      raise InputError("empty English sentence", english_path, n)
    e = e.strip()
    if e not in doc_of_text:
      doc_of_text[e] = f"e{n}"
      ids.append(f"e{n}")
      texts.append(e)
    qid = f"q{n}"
    qids.append(qid)
    q_texts.append(f.strip())
    q_en.append(e)
    qrels[qid] = {doc_of_text[e]: 1}
  if not qids:
    raise InputError("no sentences", foreign_path)
  corpus = Corpus(ids, [""] * len(ids), texts)
  queries = {"text": Queries(qids, q_texts), "text_en": Queries(list(qids), q_en)}
  return RetrievalSet(corpus, queries, qrels,
                      {"corpus": english_path, "queries": foreign_path, "qrels": foreign_path})


# ---------------------------------------------------------------------------
# From an eval config's dataset section.


def lareqa_files(path: str, lang: str) -> Tuple[str, str]:
  """(questions, English) files of a LAReQA directory (`<lang>.json`, `en.json`)."""
  return os.path.join(path, f"{lang}.json"), os.path.join(path, "en.json")


def load(kind: str, *, path: str = "", lang: str = "", queries: str = "",
         corpus: str = "") -> RetrievalSet:
  """A `lareqa` or `bitext` retrieval set from the fields of an eval config's `dataset`.

  lareqa: `path` (a directory of `<lang>.json` files) with `lang`, or explicit `queries`
  (the language-X file) and `corpus` (`en.json`); bitext: `queries` (foreign lines) and
  `corpus` (English lines).
  """
  if kind == "lareqa":
    if path and lang:
      q, c = lareqa_files(path, lang)
    elif path and not lang:
      raise InputError("dataset.kind 'lareqa' with dataset.path needs dataset.lang (the "
                       "question language, e.g. 'el')")
    else:
      q, c = "", ""
    q, c = queries or q, corpus or c
    if not q or not c:
      raise InputError("dataset.kind 'lareqa' needs dataset.path and dataset.lang, or "
                       "dataset.queries (questions) and dataset.corpus (en.json)")
    return load_lareqa(q, c)
  if kind == "bitext":
    if not queries or not corpus:
      raise InputError("dataset.kind 'bitext' needs dataset.queries (foreign lines) and "
                       "dataset.corpus (English lines)")
    return load_bitext(queries, corpus)
  raise InputError(f"dataset.kind must be one of {KINDS}, got {kind!r}")

