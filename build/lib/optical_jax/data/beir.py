"""Readers and writers for BEIR corpora, queries and qrels and for TREC runs, with line-precise validation."""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from typing import Collection, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from optical_jax import fingerprint
from optical_jax.data import io
from optical_jax.data.io import PathLike
from optical_jax.errors import InputError
from optical_jax.fileio import atomic_open

Qrels = Dict[str, Dict[str, int]]
Run = Dict[str, Dict[str, float]]

IRDS_PREFIX = "irds:"


def passage_text(title: str, text: str, title_sep: Optional[str] = " ") -> str:
  """`title + title_sep + text`, stripped (just `text` when the title is empty or `title_sep` is None).

  The one definition of a passage's text, shared by evaluation and teacher training.
  """
  title, text = title.strip(), text.strip()
  if title_sep is None or not title:
    return text
  return f"{title}{title_sep}{text}"


class DataWarning(UserWarning):
  """A recoverable problem in input data (entries were dropped or skipped)."""


@dataclasses.dataclass(frozen=True)
class _Rows:
  """Rows in file order with unique ids; `ids[i]` names row i."""

  ids: List[str]

  def __post_init__(self):
    object.__setattr__(self, "_index", {x: i for i, x in enumerate(self.ids)})

  def __len__(self) -> int:
    return len(self.ids)

  def __contains__(self, row_id: object) -> bool:
    return row_id in self._index

  def __iter__(self) -> Iterator[str]:
    return iter(self.ids)

  @property
  def index(self) -> Mapping[str, int]:
    """id -> row position (the row of its embedding)."""
    return self._index


@dataclasses.dataclass(frozen=True)
class Corpus(_Rows):
  """Documents in file order as parallel lists; `corpus[doc_id]` gives (title, text)."""

  titles: List[str]
  texts: List[str]

  def __getitem__(self, doc_id: str) -> Tuple[str, str]:
    i = self._index[doc_id]
    return self.titles[i], self.texts[i]

  def full_texts(self, sep: Optional[str] = " ") -> List[str]:
    """`passage_text(title, text, sep)` per document: the text models encode."""
    return [passage_text(t, x, sep) for t, x in zip(self.titles, self.texts)]

  def fingerprint(self) -> str:
    """A short content hash of ids, titles and texts (for embedding caches)."""
    return fingerprint.rows(zip(self.ids, self.titles, self.texts))


@dataclasses.dataclass(frozen=True)
class Queries(_Rows):
  """Queries in file order as parallel lists; `queries[qid]` gives the text."""

  texts: List[str]

  def __getitem__(self, qid: str) -> str:
    return self.texts[self._index[qid]]

  def items(self) -> Iterator[Tuple[str, str]]:
    return zip(self.ids, self.texts)

  def fingerprint(self) -> str:
    """A short content hash of ids and texts."""
    return fingerprint.rows(zip(self.ids, self.texts))


def _examples(items: Sequence[str], limit: int = 3) -> str:
  shown = ", ".join(items[:limit])
  return shown + (", ..." if len(items) > limit else "")


# ---------------------------------------------------------------------------
# ir_datasets (online users only).


def _irds(spec: str):
  try:
    import ir_datasets  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise InputError("reading an 'irds:' dataset needs the ir_datasets package "
                     "(pip install ir_datasets, or optical-jax[online])", spec) from e
  name = spec[len(IRDS_PREFIX):]
  try:
    return ir_datasets.load(name)
  except KeyError as e:
    raise InputError(f"unknown ir_datasets dataset {name!r}", spec) from e


def _irds_corpus(spec: str) -> Corpus:
  ds = _irds(spec)
  if not ds.has_docs():
    raise InputError("this ir_datasets dataset has no documents", spec)
  ids, titles, texts = [], [], []
  for doc in ds.docs_iter():
    ids.append(str(doc.doc_id))
    titles.append(getattr(doc, "title", "") or "")
    texts.append(doc.text if hasattr(doc, "text") else doc.default_text())
  return _finish_corpus(ids, titles, texts, spec)


def _irds_queries(spec: str, field: str) -> Queries:
  ds = _irds(spec)
  if not ds.has_queries():
    raise InputError("this ir_datasets dataset has no queries", spec)
  ids, texts = [], []
  for q in ds.queries_iter():
    if not hasattr(q, field):
      raise InputError(f"queries have no field {field!r} (fields: {', '.join(q._fields)})", spec)
    ids.append(str(q.query_id))
    texts.append(getattr(q, field))
  return Queries(ids, texts)


def _irds_qrels(spec: str) -> Qrels:
  ds = _irds(spec)
  if not ds.has_qrels():
    raise InputError("this ir_datasets dataset has no qrels", spec)
  qrels: Qrels = {}
  for q in ds.qrels_iter():
    qrels.setdefault(str(q.query_id), {})[str(q.doc_id)] = int(q.relevance)
  return qrels


# ---------------------------------------------------------------------------
# Corpus.


def load_corpus(path: PathLike) -> Corpus:
  """Reads a BEIR corpus: JSONL lines `{"_id", "title"?, "text"}` (optionally .gz).

  `path` may also be a BEIR dataset directory (its `corpus.jsonl` is read) or
  `irds:<dataset id>` (needs the optional ir_datasets package).

  Raises:
    InputError (`path:line: problem`) for a missing file, a line that is not a JSON
    object, a missing or malformed `_id`/`text`, a duplicate `_id`, or no documents.
  """
  spec = os.fspath(path)
  if spec.startswith(IRDS_PREFIX):
    return _irds_corpus(spec)
  if os.path.isdir(spec):
    spec = os.path.join(spec, "corpus.jsonl")
  ids, titles, texts = [], [], []
  first_line: Dict[str, int] = {}
  for n, obj in io.iter_json_objects(spec):
    doc_id = io.id_field(obj, "_id", spec, n)
    if doc_id in first_line:
      raise InputError(f"duplicate document id {doc_id!r} (first on line {first_line[doc_id]})",
                       spec, n)
    first_line[doc_id] = n
    ids.append(doc_id)
    titles.append(io.string_field(obj, "title", spec, n, required=False))
    texts.append(io.string_field(obj, "text", spec, n))
  return _finish_corpus(ids, titles, texts, spec)


def _finish_corpus(ids, titles, texts, source: str) -> Corpus:
  if not ids:
    raise InputError("no documents", source)
  empty = [d for d, t, x in zip(ids, titles, texts) if not t.strip() and not x.strip()]
  if empty:
    warnings.warn(f"{source}: {len(empty)} documents have no title and no text "
                  f"(e.g. {_examples(empty)})", DataWarning, stacklevel=3)
  return Corpus(ids, titles, texts)


# ---------------------------------------------------------------------------
# Queries.


def _looks_like_jsonl(path: str) -> bool:
  for _, line in io.iter_lines(path):
    if line.strip():
      return line.lstrip().startswith("{")
  return True


def load_queries(path: PathLike, field: str = "text", *, skip_empty: bool = False) -> Queries:
  """Reads queries: BEIR JSONL `{"_id", <field>, ...}` or TSV `qid<TAB>text`, detected from content.

  Args:
    path: a .jsonl(.gz) or .tsv file, or `irds:<dataset id>`.
    field: the JSONL field holding the text, e.g. "text_en" for AfriQA's human English
      translations. TSV files have a single text column, so only "text" is allowed.
    skip_empty: by default a query whose text is empty (or only whitespace) is an
      InputError, since silently dropping a judged query changes what a run is scored
      on. With True, such queries are skipped with one summarising DataWarning (they
      still count as zero in `metrics.evaluate` if judged).

  Raises:
    InputError (`path:line: problem`) for a missing file, bad JSON, a missing `_id` or
    field, a duplicate id, a TSV line without a tab, an empty text, or no queries.
  """
  spec = os.fspath(path)
  if spec.startswith(IRDS_PREFIX):
    queries = _irds_queries(spec, field)
    rows = list(zip(range(1, len(queries) + 1), queries.ids, queries.texts))
  else:
    spec = io.check_file(spec)
    if _looks_like_jsonl(spec):
      rows = []
      for n, obj in io.iter_json_objects(spec):
        rows.append((n, io.id_field(obj, "_id", spec, n), io.string_field(obj, field, spec, n)))
    else:
      if field != "text":
        raise InputError(f"TSV queries have one text column; field {field!r} needs JSONL", spec)
      rows = []
      for n, line in io.iter_lines(spec):
        if not line.strip():
          continue
        if "\t" not in line:
          raise InputError("expected 'query-id<TAB>text'", spec, n)
        qid, text = line.split("\t", 1)
        qid = qid.strip()
        if not qid or any(c.isspace() for c in qid):
          raise InputError(f"bad query id {qid!r}", spec, n)
        rows.append((n, qid, text))
  ids, texts, skipped = [], [], []
  first_line: Dict[str, int] = {}
  for n, qid, text in rows:
    if qid in first_line:
      raise InputError(f"duplicate query id {qid!r} (first on line {first_line[qid]})", spec, n)
    first_line[qid] = n
    if not text.strip():
      if not skip_empty:
        raise InputError(f"query {qid!r} has empty {field!r}", spec, n)
      skipped.append(qid)
      continue
    ids.append(qid)
    texts.append(text)
  if skipped:
    warnings.warn(f"{spec}: skipped {len(skipped)} queries with empty {field!r} "
                  f"(e.g. {_examples(skipped)})", DataWarning, stacklevel=2)
  if not ids:
    raise InputError("no queries", spec)
  return Queries(ids, texts)


# ---------------------------------------------------------------------------
# Qrels.


def _parse_int(value: str) -> Optional[int]:
  try:
    return int(value)
  except ValueError:
    pass
  try:
    f = float(value)
  except ValueError:
    return None
  return int(f) if math.isfinite(f) and f == int(f) else None


def load_qrels(path: PathLike, *, query_ids: Optional[Collection[str]] = None,
               doc_ids: Optional[Collection[str]] = None) -> Qrels:
  """Reads relevance judgements -> {qid: {doc_id: relevance}}.

  The format is detected from the first data line: 3 columns is BEIR
  (`query-id corpus-id score`, tab-separated, optional header line), 4 columns is TREC
  (`qid iteration doc_id relevance`, whitespace-separated). Every later line must have
  the same number of columns.

  If `query_ids` / `doc_ids` are given, judgements naming an unknown query or document
  are dropped with one summarising DataWarning each (counts and examples); see
  `filter_qrels`.

  Raises:
    InputError (`path:line: problem`) for a missing file, a wrong column count, a
    relevance that is not an integer, a conflicting duplicate judgement, or no judgements.
  """
  spec = os.fspath(path)
  if spec.startswith(IRDS_PREFIX):
    qrels = _irds_qrels(spec)
  else:
    qrels = {}
    ncols = None
    first = True
    for n, line in io.iter_lines(spec):
      if not line.strip():
        continue
      is_first, first = first, False
      cols = line.split("\t") if "\t" in line else line.split()
      cols = [c.strip() for c in cols]
      if ncols is None:
        if len(cols) not in (3, 4):
          raise InputError(f"expected 3 columns (BEIR: query-id corpus-id score) or 4 "
                           f"(TREC: qid 0 doc-id relevance), found {len(cols)}", spec, n)
        ncols = len(cols)
      if len(cols) != ncols:
        fmt = ("BEIR: query-id corpus-id score" if ncols == 3
               else "TREC: qid 0 doc-id relevance")
        raise InputError(f"expected {ncols} columns ({fmt}), found {len(cols)}", spec, n)
      rel = _parse_int(cols[-1])
      if rel is None:
        if is_first and ncols == 3:
          continue  # BEIR header, e.g. "query-id corpus-id score"
        raise InputError(f"relevance must be an integer, found {cols[-1]!r}", spec, n)
      qid, doc_id = cols[0], cols[-2]
      if not qid or not doc_id:
        raise InputError("empty query or document id", spec, n)
      judged = qrels.setdefault(qid, {})
      if doc_id in judged and judged[doc_id] != rel:
        raise InputError(f"conflicting judgements for ({qid}, {doc_id}): "
                         f"{judged[doc_id]} and {rel}", spec, n)
      judged[doc_id] = rel
  if not qrels:
    raise InputError("no judgements", spec)
  return filter_qrels(qrels, query_ids=query_ids, doc_ids=doc_ids, source=spec)


def filter_qrels(qrels: Mapping[str, Mapping[str, int]], *,
                 query_ids: Optional[Collection[str]] = None,
                 doc_ids: Optional[Collection[str]] = None, source: str = "qrels") -> Qrels:
  """Drops judgements for unknown queries / documents, with one DataWarning per kind.

  Each warning is one line: `<source>: dropped N judgements of M unknown queries (e.g. ...)`.
  """
  query_set = None if query_ids is None else set(query_ids)
  doc_set = None if doc_ids is None else set(doc_ids)
  out: Qrels = {}
  bad_q: List[str] = []
  bad_q_n = 0
  bad_d: Dict[str, None] = {}
  bad_d_n = 0
  for qid, judged in qrels.items():
    if query_set is not None and qid not in query_set:
      bad_q.append(qid)
      bad_q_n += len(judged)
      continue
    kept = {}
    for doc_id, rel in judged.items():
      if doc_set is not None and doc_id not in doc_set:
        bad_d[doc_id] = None
        bad_d_n += 1
      else:
        kept[doc_id] = int(rel)
    if kept:
      out[qid] = kept
  if bad_q:
    warnings.warn(f"{source}: dropped {bad_q_n} judgements of {len(bad_q)} queries not in the "
                  f"query set (e.g. {_examples(bad_q)})", DataWarning, stacklevel=3)
  if bad_d:
    warnings.warn(f"{source}: dropped {bad_d_n} judgements of {len(bad_d)} documents not in "
                  f"the corpus (e.g. {_examples(list(bad_d))})", DataWarning, stacklevel=3)
  return out


# ---------------------------------------------------------------------------
# TREC runs.


def load_run(path: PathLike) -> Run:
  """Reads a TREC run (`qid Q0 doc_id rank score tag`) -> {qid: {doc_id: score}}.

  Only the scores matter (trec_eval re-sorts by score), so the rank column is checked
  to be an integer but otherwise ignored.

  Raises:
    InputError (`path:line: problem`) for a missing file, a wrong column count, a rank or
    score that is not a number, or a document listed twice for one query.
  """
  spec = os.fspath(path)
  run: Run = {}
  for n, line in io.iter_lines(spec):
    if not line.strip():
      continue
    cols = line.split()
    if len(cols) != 6:
      raise InputError(f"expected 6 columns (qid Q0 doc-id rank score tag), found {len(cols)}",
                       spec, n)
    qid, _, doc_id, rank, score, _ = cols
    if _parse_int(rank) is None:
      raise InputError(f"rank must be an integer, found {rank!r}", spec, n)
    try:
      value = float(score)
    except ValueError:
      raise InputError(f"score must be a number, found {score!r}", spec, n) from None
    if not math.isfinite(value):
      raise InputError(f"score must be finite, found {score!r}", spec, n)
    docs = run.setdefault(qid, {})
    if doc_id in docs:
      raise InputError(f"document {doc_id!r} listed twice for query {qid!r}", spec, n)
    docs[doc_id] = value
  return run


def ranked(docs: Mapping[str, float]) -> List[Tuple[str, float]]:
  """(doc_id, score) by score descending, ties by doc_id descending.

  This is the order trec_eval (and so pytrec_eval and ir_measures) uses whatever the
  rank column says, so the ranks written by `write_run` are the ranks that get scored.
  """
  return sorted(docs.items(), key=lambda x: (x[1], x[0]), reverse=True)


def write_run(path: PathLike, run: Mapping[str, Mapping[str, float]], tag: str = "optical",
              *, depth: Optional[int] = None) -> None:
  """Writes a TREC run atomically: `qid Q0 doc_id rank score tag`, ranks from 1.

  Queries appear in `run`'s order; documents in `ranked` order (score descending, ties by
  doc_id descending, as trec_eval orders them). Scores are written with `repr`, which
  round-trips exactly, so no ties are created or broken by rounding. `depth` keeps only
  the top documents of each query.
  """
  if not tag or any(c.isspace() for c in tag):
    raise ValueError(f"run tag must be non-empty without whitespace: {tag!r}")
  lines = []
  for qid, docs in run.items():
    if not qid or any(c.isspace() for c in qid):
      raise ValueError(f"query id must be non-empty without whitespace: {qid!r}")
    items = ranked({d: float(s) for d, s in docs.items()})
    if depth is not None:
      items = items[:depth]
    for rank, (doc_id, score) in enumerate(items, start=1):
      if not doc_id or any(c.isspace() for c in doc_id):
        raise ValueError(f"document id must be non-empty without whitespace: {doc_id!r}")
      if not math.isfinite(score):
        raise ValueError(f"score of ({qid}, {doc_id}) is not finite: {score}")
      lines.append(f"{qid} Q0 {doc_id} {rank} {score!r} {tag}\n")
  with atomic_open(path, "w", encoding="utf-8") as f:
    f.writelines(lines)
