"""Evaluation runs: systems (query + document encoder) on a BEIR dataset -> runs, metrics, comparison.

`run(config, out_dir)` is what `eval.py` calls. It wires the library together and does
no retrieval math of its own:

    dataset (optical_jax.data.beir) --> per system: queries --query model--> embeddings
    corpus --doc model--> embeddings (cached on disk, shared by every system with that doc model)
    --> exact top-k search or rerank (optical_jax.retrieval) --> runs/<system>.trec
    --> metrics/<system>.json (optical_jax.metrics) --> comparison.{md,json,png}

The config schema (`default_config`) lists the dataset (a BEIR directory, explicit files
or `irds:` ids), an ordered mapping `systems` of name -> `system(query_model, doc_model,
query_field)` (model specs as in `optical_jax.models.model_spec`), the baselines for
significance tests, the mode ('full' search or 'rerank' of a TREC run) and encoding
settings.

Rerunning into the same out directory is cheap: `manifest.json` records, per system, a
key over everything its run depends on (model files and text settings of both sides,
query and corpus content, mode, top_k, input run); a system whose run file exists with a
matching key is not recomputed, and its metrics are recomputed from the run only when
the qrels or measures changed. Passage and query embeddings are cached separately (see
`optical_jax.retrieval.cached`), keyed by the model fingerprint of that side, the
content fingerprint, the max length and the prefix, so a second out directory or a new
system reuses them too.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np

from optical_jax import assets, embedder, fileio, fingerprint, metrics, models, retrieval, scoring
from optical_jax import mesh as mesh_lib
from optical_jax import monitor, paths, plain, stats
from optical_jax.data import beir, xtreme
from optical_jax.data.beir import passage_text
from optical_jax.errors import InputError
from optical_jax.fileio import write_json, write_text

MODES = ("full", "rerank")
TESTS = ("t-test", "permutation")
CORRECTIONS = tuple(stats.CORRECTIONS) + ("none",)
EMBEDDING_DTYPES = embedder.EMBEDDING_DTYPES
SYSTEM_FIELDS = ("query_model", "doc_model", "query_field")
MANIFEST = "manifest.json"
# Bumped when the way runs are produced changes, so old manifests stop matching.
RUN_FORMAT = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")

Log = Callable[[str], None]


# ---------------------------------------------------------------------------
# Config schema.


# Fields that change how an evaluation runs, not what it computes (batching, buckets,
# caches, progress, process layout): a finished study cell stays valid when they change.
HARMLESS_FIELDS = ("batch_size", "max_tokens", "length_buckets.", "cache_dir", "progress",
                   "distributed.")


def default_config() -> ml_collections.ConfigDict:
  """The eval config with documented defaults; config files fill `dataset` and `systems`.

  Fields:
    dataset.kind: 'beir' (below), 'lareqa' (XQuAD-R / MLQA-R: a question in language
      `dataset.lang` retrieves its English answer sentence; `path` = the directory of
      `<lang>.json` files, or `queries` = the question file and `corpus` = `en.json`) or
      'bitext' (Tatoeba, FLORES: `queries` = foreign lines, `corpus` = English lines); see
      `optical_jax.data.xtreme`. Both give fields 'text' and 'text_en' (oracle).
    dataset.path: a BEIR directory (`corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`)
      or an `irds:<id>`; each of dataset.corpus / .queries / .qrels overrides its part.
    dataset.query_field: JSONL field of the query text (a system may override it, e.g.
      'text_en' for an oracle-translation system).
    dataset.titles / title_sep: passage text = title + title_sep + text (as in training,
      `optical_jax.data.beir.passage_text`); titles=False uses the text only.
    dataset.judged_only: retrieve only for queries that have judgements.
    systems: name -> `system(...)`, in the order of the table and chart.
    baselines: system names the others are tested against (default: the first system).
    mode: 'full' (exact top-k over the corpus) or 'rerank' (rescore `rerank_run`, a
      TREC run, keeping each query's top `depth` documents; 0 = all).
    top_k: documents kept per query in the written run.
    batch_size: texts per encoder call (split over all devices when it divides evenly).
    max_tokens: padded tokens per encoder call at most (0 = no limit): long buckets get
      fewer than batch_size texts (a multiple of the device count), which encodes faster
      on CPU (`retrieval.batch_rows`, docs/performance.md).
    length_buckets.query / .doc: padded lengths; each model's max length is added and
      longer buckets dropped, so every text fits.
    cache_dir: embedding cache ('' = $OPTICAL_JAX_CACHE/embeddings or
      ~/.cache/optical_jax/embeddings; 'none' disables it).
    embedding_dtype: storage of dense (one-vector) embeddings in memory and in the cache:
      'float32', or 'float16' (half the memory of a large corpus; scores are still
      computed in float32, from the rounded vectors). Token vectors (MaxSim) are float16.
    measures: ir_measures names; test: 't-test' or 'permutation' for the markers (both
      p-values are in comparison.json); alpha, n_permutations, seed: test settings;
      correction: 'holm' (default), 'bh' or 'none', the adjustment of the markers'
      p-values over every test of the comparison table.
    scoring: '' (each model's own) or 'dense' / 'maxsim': score every system that way
      (late interaction over the same encoders: `optical_jax.scoring`).
    progress: show progress bars while encoding.
  """
  c = ml_collections.ConfigDict()
  c.dataset = ml_collections.ConfigDict(dict(
      kind="beir", lang="", path="", corpus="", queries="", qrels="", split="test",
      query_field="text", titles=True, title_sep=" ", judged_only=False))
  c.systems = ml_collections.ConfigDict()
  c.baselines = ()
  c.mode = "full"
  c.rerank_run = ""
  c.depth = 100
  c.top_k = 100
  c.batch_size = 32
  c.max_tokens = 2048
  c.length_buckets = ml_collections.ConfigDict(dict(
      query=(16, 32, 64, 128, 256, 512),
      doc=tuple(range(16, 257, 16)) + (320, 384, 448, 512)))
  c.cache_dir = ""
  c.embedding_dtype = "float32"
  c.measures = tuple(metrics.DEFAULT_MEASURES)
  c.test = "t-test"
  c.alpha = 0.05
  c.correction = "holm"
  c.n_permutations = metrics.DEFAULT_PERMUTATIONS
  c.seed = metrics.DEFAULT_SEED
  c.scoring = ""
  c.progress = True
  # Several hosts (as for training): each encodes and searches its share of the corpus.
  c.distributed = mesh_lib.distributed_config()
  return c


def system(query_model, doc_model=None, query_field: str = "") -> ml_collections.ConfigDict:
  """One system: a query encoder, a document encoder (default: the query encoder) and
  optionally the query field it reads ('' = dataset.query_field)."""
  s = ml_collections.ConfigDict()
  s.query_model = _as_spec(query_model)
  s.doc_model = None if doc_model is None else _as_spec(doc_model)
  s.query_field = query_field
  return s


def _as_spec(spec) -> ml_collections.ConfigDict:
  if isinstance(spec, ml_collections.ConfigDict):
    return spec
  return models.model_spec(**dict(spec))


# ---------------------------------------------------------------------------
# Resolution and validation (all before anything heavy runs).


@dataclasses.dataclass
class SystemPlan:
  """A validated system with the fingerprints its outputs depend on."""

  name: str
  query_spec: ml_collections.ConfigDict
  doc_spec: ml_collections.ConfigDict
  query_field: str
  query_fp: str = ""
  doc_fp: str = ""


@dataclasses.dataclass
class Dataset:
  corpus: beir.Corpus
  passages: List[str]
  queries: Dict[str, beir.Queries]       # by field
  qrels: beir.Qrels
  paths: Dict[str, str]
  rerank_run: Optional[beir.Run] = None
  rerank_fp: str = ""


@dataclasses.dataclass
class EvalResult:
  """What `run` produced: per-system `evaluate` results, the table and what was recomputed."""

  out_dir: str
  results: Dict[str, Dict[str, Any]]
  markdown: str
  comparison: Dict[str, Any]
  computed: List[str]
  reused: List[str]
  timings: Dict[str, Dict[str, float]]


_SPEC_FIELDS = tuple(models.model_spec().keys())


def _check_spec(spec, where: str) -> ml_collections.ConfigDict:
  if isinstance(spec, Mapping) and not isinstance(spec, ml_collections.ConfigDict):
    spec = ml_collections.ConfigDict(dict(spec))
  if not isinstance(spec, ml_collections.ConfigDict):
    raise InputError(f"{where} must be a model spec (models.model_spec(...)), "
                     f"found {type(spec).__name__}")
  unknown = [k for k in spec.keys() if k not in _SPEC_FIELDS]
  if unknown:
    raise InputError(f"{where}: unknown field {unknown[0]!r} (model spec fields: "
                     f"{', '.join(sorted(_SPEC_FIELDS))})")
  full = models.model_spec()
  full.update(spec.to_dict())
  models.validate_spec(full, where)
  for side in ("query", "doc"):
    if int(full[f"{side}_max_len"]) < 2:
      raise InputError(f"{where}.{side}_max_len must be >= 2, got {full[f'{side}_max_len']}")
  return full


def _check_name(name: str, what: str) -> None:
  if not isinstance(name, str) or not _NAME_RE.match(name):
    raise InputError(f"bad {what} name {name!r}: use letters, digits and . _ + - "
                     "(it names files)")


def _plan_systems(config) -> List[SystemPlan]:
  systems = config.systems
  names = plain.keys_in_order(systems)
  if not names:
    raise InputError("config.systems is empty: add at least one system "
                     "(evaluator.system(query_model, doc_model, query_field))")
  plans = []
  for name in names:
    _check_name(name, "system")
    where = f"systems['{name}']"
    entry = systems[name]
    if not isinstance(entry, Mapping) and not isinstance(entry, ml_collections.ConfigDict):
      raise InputError(f"{where} must be evaluator.system(...), found {type(entry).__name__}")
    keys = plain.keys_in_order(entry)
    unknown = [k for k in keys if k not in SYSTEM_FIELDS]
    if unknown:
      raise InputError(f"{where}: unknown field {unknown[0]!r} (allowed: "
                       f"{', '.join(SYSTEM_FIELDS)})")
    if entry.get("query_model") is None:
      raise InputError(f"{where}.query_model is missing")
    q = _check_spec(entry["query_model"], f"{where}.query_model")
    d_raw = entry.get("doc_model")
    d = q if d_raw is None else _check_spec(d_raw, f"{where}.doc_model")
    if config.scoring:   # one scoring for every system, e.g. late interaction
      scoring.check(config.scoring, "config.scoring", InputError)
      q, d = q.copy_and_resolve_references(), d.copy_and_resolve_references()
      q.scoring = d.scoring = config.scoring
    if q.scoring != d.scoring:
      raise InputError(f"{where}: query_model.scoring {q.scoring!r} and doc_model.scoring "
                       f"{d.scoring!r} differ")
    field = entry.get("query_field") or config.dataset.query_field
    if not isinstance(field, str) or not field:
      raise InputError(f"{where}.query_field must be a non-empty string")
    plan = SystemPlan(name, q, d, field)
    plan.query_fp = models.model_fingerprint(q, "query")
    plan.doc_fp = models.model_fingerprint(d, "doc")
    plans.append(plan)
  return plans


def _check_settings(config, plans: Sequence[SystemPlan]) -> List[str]:
  """Range checks of the eval settings (ml_collections checks their names and types)."""
  if config.mode not in MODES:
    raise InputError(f"config.mode must be one of {MODES}, got {config.mode!r}")
  if config.mode == "rerank" and not config.rerank_run:
    raise InputError("config.mode is 'rerank' but config.rerank_run (a TREC run) is empty")
  if int(config.top_k) < 1:
    raise InputError(f"config.top_k must be >= 1, got {config.top_k}")
  if int(config.depth) < 0:
    raise InputError(f"config.depth must be >= 0 (0 = all), got {config.depth}")
  if int(config.batch_size) < 1:
    raise InputError(f"config.batch_size must be >= 1, got {config.batch_size}")
  if int(config.max_tokens) < 0:
    raise InputError(f"config.max_tokens must be >= 0 (0 = no limit), got {config.max_tokens}")
  for side in ("query", "doc"):
    b = list(config.length_buckets[side])
    if not b or any(int(x) < 1 for x in b):
      raise InputError(f"config.length_buckets.{side} must be positive lengths, got {b}")
  if config.embedding_dtype not in EMBEDDING_DTYPES:
    raise InputError(f"config.embedding_dtype must be one of {tuple(EMBEDDING_DTYPES)}, "
                     f"got {config.embedding_dtype!r}")
  if config.test not in TESTS:
    raise InputError(f"config.test must be one of {TESTS}, got {config.test!r}")
  if config.correction not in CORRECTIONS:
    raise InputError(f"config.correction must be one of {CORRECTIONS}, got {config.correction!r}")
  if not config.measures:
    raise InputError("config.measures is empty")
  metrics.parse_measures(list(config.measures))
  names = [p.name for p in plans]
  baselines = list(config.baselines) or names[:1]
  for b in baselines:
    if b not in names:
      raise InputError(f"config.baselines: {b!r} is not a system (systems: {', '.join(names)})")
  if len(baselines) > len(metrics.MARKERS):
    raise InputError(f"config.baselines: at most {len(metrics.MARKERS)} baselines")
  return baselines


def dataset_paths(ds) -> Dict[str, str]:
  """corpus / queries / qrels files from dataset.path (BEIR dir or irds id) and overrides."""
  base = ds.path or ""
  files = {"corpus": "", "queries": "", "qrels": ""}
  if base.startswith(beir.IRDS_PREFIX):
    files = {k: base for k in files}
  elif base:
    base = assets.resolve(base)
    if not os.path.isdir(base):
      raise InputError("dataset.path is not a directory (a BEIR dataset) or irds: id", base)
    files = {"corpus": os.path.join(base, "corpus.jsonl"),
             "queries": os.path.join(base, "queries.jsonl"),
             "qrels": os.path.join(base, "qrels", f"{ds.split}.tsv")}
  for k in files:
    if ds[k]:
      files[k] = ds[k] if ds[k].startswith(beir.IRDS_PREFIX) else assets.resolve(ds[k])
    if not files[k]:
      raise InputError(f"dataset.{k} is empty (set dataset.path to a BEIR directory, or "
                       f"dataset.{k})")
  return files


def _load_dataset(config, plans: Sequence[SystemPlan]) -> Dataset:
  ds = config.dataset
  fields = [ds.query_field] + [p.query_field for p in plans]
  queries: Dict[str, beir.Queries] = {}
  if ds.kind != "beir":  # XTREME-R-style sets, read into the same form
    loaded = xtreme.load(ds.kind, path=assets.resolve(ds.path) if ds.path else "", lang=ds.lang,
                         queries=assets.resolve(ds.queries) if ds.queries else "",
                         corpus=assets.resolve(ds.corpus) if ds.corpus else "")
    corpus, qrels, files = loaded.corpus, loaded.qrels, loaded.paths
    queries = {f: loaded.field(f) for f in dict.fromkeys(fields)}
  else:
    files = dataset_paths(ds)
    corpus = beir.load_corpus(files["corpus"])
    for f in dict.fromkeys(fields):
      queries[f] = beir.load_queries(files["queries"], f)
    all_ids = set().union(*(q.ids for q in queries.values()))
    qrels = beir.load_qrels(files["qrels"], query_ids=all_ids, doc_ids=corpus.ids)
  sep = ds.title_sep if ds.titles else None
  passages = [passage_text(t, x, sep) for t, x in zip(corpus.titles, corpus.texts)]
  if not qrels:
    raise InputError("no judgements left after dropping unknown queries and documents",
                     files["qrels"])
  if ds.judged_only:
    queries = {f: beir.Queries([i for i in q.ids if i in qrels],
                               [t for i, t in q.items() if i in qrels])
               for f, q in queries.items()}
  data = Dataset(corpus, passages, queries, qrels, files)
  if config.mode == "rerank":
    path = assets.resolve(config.rerank_run)
    data.rerank_run = beir.load_run(path)
    if not data.rerank_run:
      raise InputError("the run to rerank is empty", path)
    data.rerank_fp = fingerprint.file(path)
  return data


def resolved_config(config, plans: Sequence[SystemPlan], baselines: Sequence[str],
                    data: Dataset, cache_dir: Optional[str]) -> Dict[str, Any]:
  """The config as evaluated: defaults filled, paths resolved, doc models spelled out."""
  out = plain.plain(config)
  out["dataset"].update({k: v for k, v in data.paths.items()})
  out["systems"] = {p.name: {"query_model": p.query_spec.to_dict(),
                             "doc_model": p.doc_spec.to_dict(), "query_field": p.query_field}
                    for p in plans}
  out["baselines"] = list(baselines)
  out["cache_dir"] = cache_dir or "none"
  out["devices"] = [str(d) for d in jax.devices()]
  return out


def _cache_dir(config) -> Optional[str]:
  if config.cache_dir == "none":
    return None
  if config.cache_dir:
    return paths.require_local(config.cache_dir, "config.cache_dir")
  return os.path.join(assets.cache_dir(), "embeddings")


# ---------------------------------------------------------------------------
# The run.


def _run_key(plan: SystemPlan, config, data: Dataset, title_sep) -> Dict[str, Any]:
  parts = {"format": RUN_FORMAT, "query_model": plan.query_fp, "doc_model": plan.doc_fp,
           "query_field": plan.query_field,
           "queries": data.queries[plan.query_field].fingerprint(),
           "corpus": data.corpus.fingerprint(), "title_sep": title_sep,
           "mode": config.mode, "top_k": int(config.top_k)}
  if config.embedding_dtype != "float32":
    parts["embedding_dtype"] = config.embedding_dtype
  if config.mode == "rerank":
    parts.update(rerank_run=data.rerank_fp, depth=int(config.depth))
  return parts


def _doc_rows(data: Dataset, depth: int) -> List[int]:
  """Corpus rows of the documents a rerank needs (the top `depth` of each run query)."""
  rows = set()
  index = data.corpus.index
  for docs in data.rerank_run.values():
    items = beir.ranked(docs)
    for doc_id, _ in (items[:depth] if depth else items):
      if doc_id in index:
        rows.add(index[doc_id])
  return sorted(rows)


def run(config, out_dir: str, *, log: Log = monitor.stderr_line) -> EvalResult:
  """Evaluates every system of `config` into `out_dir` (see the module docstring).

  Raises InputError (one line) for bad config or input files before anything is
  written or encoded. Then the out directory is held by this evaluation alone (a second
  one on it stops at once, naming the holder).
  """
  mesh_lib.initialize_distributed(config.distributed)
  plans = _plan_systems(config)
  baselines = _check_settings(config, plans)
  data = _load_dataset(config, plans)
  out_dir = paths.resolve(out_dir)
  # Several hosts: process 0 holds the out directory and writes every output; all hosts
  # encode and search their share (the out directory should be on a shared file system).
  hold = (fileio.hold_directory(out_dir, "out directory", report=log)
          if jax.process_index() == 0 else None)
  try:
    return _evaluate(config, out_dir, plans, baselines, data, log)
  finally:
    if hold is not None:
      hold.release()


def _evaluate(config, out_dir: str, plans: Sequence[SystemPlan], baselines: Sequence[str],
              data: Dataset, log: Log) -> EvalResult:
  """The body of `run`: per system, reuse its up-to-date run or encode, search and score
  (`_reuse`, `_search`), then compare the systems (`_compare`) (out directory held)."""
  cache_dir = _cache_dir(config)
  primary = jax.process_index() == 0
  if primary:
    paths.makedirs(paths.join(out_dir, "runs"))
    paths.makedirs(paths.join(out_dir, "metrics"))
    write_json(paths.join(out_dir, "config.json"),
               resolved_config(config, plans, baselines, data, cache_dir))
  title_sep = config.dataset.title_sep if config.dataset.titles else None
  measures = list(config.measures)
  qrels_fp = fingerprint.digest(data.qrels, n=24)
  manifest_path = paths.join(out_dir, MANIFEST)
  manifest = fileio.read_json(manifest_path) or {}
  entries = manifest.get("systems", {}) if isinstance(manifest.get("systems"), dict) else {}
  log(f"dataset: {len(data.corpus)} passages, "
      + ", ".join(f"{len(q)} queries ({f})" for f, q in data.queries.items())
      + f", {len(data.qrels)} judged; {len(plans)} systems; mode {config.mode}")

  enc = embedder.Embedder(config, cache_dir, log)
  results: Dict[str, Dict[str, Any]] = {}
  computed, reused = [], []
  timings: Dict[str, Dict[str, float]] = {}
  doc_rows = _doc_rows(data, int(config.depth)) if config.mode == "rerank" else None
  if doc_rows is not None and not doc_rows:
    raise InputError("none of the documents in the run to rerank are in the corpus",
                     config.rerank_run)
  for plan in plans:
    run_path = paths.join(out_dir, "runs", f"{plan.name}.trec")
    metrics_path = paths.join(out_dir, "metrics", f"{plan.name}.json")
    run_key = fingerprint.digest(_run_key(plan, config, data, title_sep), n=24)
    metrics_key = fingerprint.digest({"run": run_key, "qrels": qrels_fp, "measures": measures}, n=24)
    old = entries.get(plan.name) or {}
    res = _reuse(plan, old, run_key, metrics_key, run_path, metrics_path, data, measures,
                 out_dir, primary, log)
    if res is not None:
      results[plan.name] = res
      reused.append(plan.name)
      entries[plan.name] = {**old, "metrics_key": metrics_key}
      timings[plan.name] = {"query_encode_s": 0.0, "doc_encode_s": 0.0, "search_s": 0.0}
      if primary:
        _write_manifest(manifest_path, entries)
      continue
    result_run, t = _search(plan, config, data, enc, doc_rows, title_sep)
    res = metrics.evaluate(result_run, data.qrels, measures)
    results[plan.name] = res
    computed.append(plan.name)
    timings[plan.name] = t
    if primary:
      beir.write_run(run_path, result_run, tag=plan.name, depth=int(config.top_k))
      write_json(metrics_path, {"system": plan.name, **res})
      entries[plan.name] = {"run_key": run_key, "metrics_key": metrics_key,
                            "run_sha256": fingerprint.file(run_path),
                            "timings": {k: round(v, 3) for k, v in t.items()}}
      _write_manifest(manifest_path, entries)
    agg = results[plan.name]["aggregate"]
    log(f"{plan.name}: " + ", ".join(f"{m} {agg[m]:.4f}" for m in measures))
  markdown, comparison = _compare(config, out_dir, results, baselines, measures, data, primary)
  return EvalResult(out_dir, results, markdown, comparison, computed, reused, timings)


def _reuse(plan: SystemPlan, old: Mapping[str, Any], run_key: str, metrics_key: str,
           run_path: str, metrics_path: str, data: Dataset, measures: Sequence[str],
           out_dir: str, primary: bool, log: Log) -> Optional[Dict[str, Any]]:
  """The metrics of a system whose run file is up to date (its key and checksum match the
  manifest; every host takes process 0's decision), recomputed from the run when the
  qrels or measures changed; None when the run must be computed."""
  fresh = (old.get("run_key") == run_key and paths.exists(run_path)
           and old.get("run_sha256") == fingerprint.file(run_path))
  if jax.process_count() > 1:   # every host takes process 0's decision
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    fresh = bool(multihost_utils.broadcast_one_to_all(np.asarray(fresh)))
  if not fresh:
    return None
  saved = fileio.read_json(metrics_path) if old.get("metrics_key") == metrics_key else None
  if saved and all(m in saved.get("aggregate", {}) for m in measures):
    log(f"{plan.name}: up to date, reused {paths.relpath(run_path, out_dir)}")
    return saved
  res = metrics.evaluate(beir.load_run(run_path), data.qrels, measures)
  if primary:
    write_json(metrics_path, {"system": plan.name, **res})
  log(f"{plan.name}: reused the run, recomputed metrics")
  return res


def _search(plan: SystemPlan, config, data: Dataset, enc: embedder.Embedder,
            doc_rows: Optional[List[int]], title_sep) -> Tuple[beir.Run, Dict[str, float]]:
  """One system's run: its passages and queries encoded (cached), then full search
  (sharded over hosts when there are several) or reranking; with the seconds spent."""
  t = {"query_encode_s": 0.0, "doc_encode_s": 0.0, "search_s": 0.0}
  queries = data.queries[plan.query_field]
  q_where = f"systems['{plan.name}'].query_model"
  d_where = (f"systems['{plan.name}'].doc_model" if embedder.spec_key(plan.doc_spec) !=
             embedder.spec_key(plan.query_spec) else f"systems['{plan.name}'] (doc side)")
  if config.mode == "full":
    d_texts = data.passages
    d_subset = None
  else:
    d_texts = [data.passages[i] for i in doc_rows]
    d_subset = fingerprint.texts([data.corpus.ids[i] for i in doc_rows])
  d_key = {"kind": "doc", "model": plan.doc_fp, "corpus": data.corpus.fingerprint(),
           "subset": d_subset, "max_len": int(plan.doc_spec.doc_max_len),
           "prefix": plan.doc_spec.doc_prefix, "title_sep": title_sep}
  # Several hosts: each encodes and searches its share of the corpus (full search).
  sharded = config.mode == "full" and jax.process_count() > 1
  d_emb, t["doc_encode_s"] = enc.encode(plan.doc_spec, d_where, "doc", d_texts, d_key,
                                        "passages", shard=sharded)
  d_rows = None
  if sharded:
    d_rows, d_emb = d_emb
  q_key = {"kind": "query", "model": plan.query_fp, "queries": queries.fingerprint(),
           "field": plan.query_field, "max_len": int(plan.query_spec.query_max_len),
           "prefix": plan.query_spec.query_prefix}
  q_emb, t["query_encode_s"] = enc.encode(plan.query_spec, q_where, "query", queries.texts,
                                          q_key, f"queries ({plan.query_field})")
  q_arr, q_mask = embedder.split(q_emb)
  d_arr, d_mask = embedder.split(d_emb)
  if len(d_arr) and q_arr.shape[-1] != d_arr.shape[-1]:
    raise InputError(f"systems['{plan.name}']: query embeddings have {q_arr.shape[-1]} "
                     f"dimensions but passage embeddings {d_arr.shape[-1]}")
  t0 = time.perf_counter()
  how = plan.query_spec.scoring
  if sharded:
    result_run = embedder.sharded_search(queries.ids, q_arr, q_mask, data.corpus.ids, d_rows, d_arr,
                                 d_mask, int(config.top_k), how)
  elif config.mode == "full":
    result_run = retrieval.search(queries.ids, q_arr, data.corpus.ids, d_arr,
                                  int(config.top_k), scoring=how, q_mask=q_mask,
                                  d_mask=d_mask)
  else:
    result_run = retrieval.rerank(data.rerank_run, queries.index, q_arr,
                                  [data.corpus.ids[i] for i in doc_rows], d_arr,
                                  scoring=how, q_mask=q_mask, d_mask=d_mask,
                                  depth=int(config.depth) or None,
                                  batch_size=int(config.batch_size))
    # Score what gets written (the top_k of each query), so the metrics of a run read
    # back from its file on a later rerun are the same.
    result_run = {q: dict(beir.ranked(d)[:int(config.top_k)]) for q, d in result_run.items()}
  t["search_s"] = time.perf_counter() - t0
  return result_run, t


def _compare(config, out_dir: str, results, baselines: Sequence[str], measures: Sequence[str],
             data: Dataset, primary: bool) -> Tuple[str, Dict[str, Any]]:
  """The comparison table of the systems against the baselines (paired tests, adjusted),
  written by process 0 as comparison.md / .json / .png; returns (markdown, data)."""
  markdown, comparison = metrics.comparison_table(
      results, baselines, measures, test=config.test, alpha=float(config.alpha),
      correction=config.correction, n_permutations=int(config.n_permutations),
      seed=int(config.seed))
  header = (f"Dataset: `{data.paths['queries']}` ({len(data.qrels)} judged queries), "
            f"{len(data.corpus)} passages; mode {config.mode}, top {int(config.top_k)}.\n\n")
  comparison = {"dataset": data.paths, "num_judged_queries": len(data.qrels),
                "num_passages": len(data.corpus), "mode": config.mode,
                "top_k": int(config.top_k), **comparison}
  if primary:
    write_text(paths.join(out_dir, "comparison.md"), header + markdown)
    write_json(paths.join(out_dir, "comparison.json"), comparison)
    metrics.bar_chart(results, measures, paths.join(out_dir, "comparison.png"),
                      title=paths.basename(data.paths["queries"]))
  return markdown, comparison


def _write_manifest(path: str, entries: Dict[str, Any]) -> None:
  write_json(path, {"format": RUN_FORMAT, "systems": entries})
