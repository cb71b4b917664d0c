"""Bitext sources of (foreign, English) sentence pairs: files, TFDS, filters, config-driven loading."""

from __future__ import annotations

import dataclasses
import os
import unicodedata
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from optical_jax import errors, fingerprint
from optical_jax.data import io
from optical_jax.data.io import PathLike
from optical_jax.errors import InputError

SOURCE_TYPES = ("lines", "tsv", "jsonl", "tfds")


@dataclasses.dataclass
class Bitext:
  """Aligned (foreign, English) sentence pairs from one source, with counts for logging.

  `stats` holds: `read` (pairs read, before any filter), `skipped_empty` (pairs dropped
  because a side was empty under the 'skip' policy), `excluded` (dropped by `exclude`),
  `taken_from` (pairs available when `take` cut the source; absent if never cut) and
  `pairs` (pairs kept).
  """

  name: str
  foreign: List[str]
  english: List[str]
  stats: Dict[str, int] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if len(self.foreign) != len(self.english):
      raise ValueError(f"{len(self.foreign)} foreign vs {len(self.english)} English sentences")
    self.stats = dict(self.stats)
    self.stats.setdefault("read", len(self.foreign))
    self.stats.setdefault("skipped_empty", 0)
    self.stats.setdefault("excluded", 0)
    self.stats["pairs"] = len(self.foreign)

  def __len__(self) -> int:
    return len(self.foreign)

  def pairs(self) -> Iterator[Tuple[str, str]]:
    return zip(self.foreign, self.english)

  def content_hash(self) -> str:
    """sha256 of the pairs' text (order-sensitive); keys tokenisation caches."""
    return "sha256:" + fingerprint.texts(self.foreign + self.english, n=None)


def normalize_text(text: str) -> str:
  """Matching key for `exclude`: Unicode NFKC, case-folded, whitespace runs collapsed to one space, stripped.

  Punctuation and diacritics are kept: "Who is X?" and "who  is x?" match, "Who is X" does not.
  """
  return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


# --- reading -------------------------------------------------------------------------------


class _Collector(io.EmptyPolicy):
  """Accumulates pairs, applying the empty-sentence policy with file:line reporting."""

  def __init__(self, empty: str):
    super().__init__(empty, "pairs")
    self.foreign: List[str] = []
    self.english: List[str] = []

  def add(self, foreign: str, english: str, path: Optional[str], line: Optional[int],
          sides: Tuple[str, str] = ("foreign", "English"), where: str = "") -> None:
    foreign, english = foreign.strip(), english.strip()
    problem = None
    if not foreign or not english:
      problem = f"{where}empty {sides[0] if not foreign else sides[1]} sentence"
    if self.admit(problem, path, line):
      self.foreign.append(foreign)
      self.english.append(english)

  def result(self, name: str) -> Bitext:
    return Bitext(name, self.foreign, self.english,
                  {"read": self.read, "skipped_empty": self.skipped})


def read_lines(foreign_path: Union[PathLike, Sequence[PathLike]],
               english_path: Union[PathLike, Sequence[PathLike]], *,
               empty: str = "skip", name: Optional[str] = None) -> Bitext:
  """Line-aligned text files: line i of `foreign_path` translates line i of `english_path`.

  Lists of paths are zipped and concatenated in order. Unequal line counts raise an
  InputError naming both files and both counts.
  """
  fps, eps = io.as_paths(foreign_path), io.as_paths(english_path)
  if len(fps) != len(eps):
    raise InputError(f"{len(fps)} foreign files but {len(eps)} English files")
  col = _Collector(empty)
  for fp, ep in zip(fps, eps):
    f_lines, e_lines = io.read_text_lines(fp), io.read_text_lines(ep)
    if len(f_lines) != len(e_lines):
      raise InputError(f"has {len(f_lines)} lines but {ep} has {len(e_lines)} lines; "
                       "line-aligned bitext needs equal counts", fp)
    for i, (f, e) in enumerate(zip(f_lines, e_lines)):
      if not f.strip():
        col.add(f, e, fp, i + 1)
      else:
        col.add(f, e, ep, i + 1)
  return col.result(name or os.path.basename(fps[0]))


def read_tsv(path: Union[PathLike, Sequence[PathLike]], *, foreign_column: int = 0,
             english_column: int = 1, num_columns: Optional[int] = None,
             skip_header: bool = False, empty: str = "skip",
             name: Optional[str] = None) -> Bitext:
  """Tab-separated pairs; every line must have exactly `num_columns` fields.

  `num_columns` defaults to `max(foreign_column, english_column) + 1` (2 for the
  default columns 0 and 1), so a stray tab inside a sentence is reported, not misread.
  Blank lines are empty pairs (subject to `empty`).
  """
  if min(foreign_column, english_column) < 0 or foreign_column == english_column:
    raise InputError(f"bad TSV columns foreign={foreign_column} english={english_column}")
  need = max(foreign_column, english_column) + 1
  ncol = need if num_columns is None else int(num_columns)
  if ncol < need:
    raise InputError(f"num_columns={ncol} but column {need - 1} is used")
  col = _Collector(empty)
  paths = io.as_paths(path)
  for p in paths:
    for n, fields in io.iter_tsv(p, ncol, keep_blank=True, header=skip_header):
      if not fields:
        col.add("", "", p, n)
      else:
        col.add(fields[foreign_column], fields[english_column], p, n)
  return col.result(name or os.path.basename(paths[0]))


def read_jsonl(path: Union[PathLike, Sequence[PathLike]], *, foreign_field: str = "text",
               english_field: str = "text_en", empty: str = "skip",
               name: Optional[str] = None) -> Bitext:
  """JSON Lines, one object per line; defaults fit AfriQA queries (`text`, `text_en`).

  Blank lines are ignored; a `null` field counts as an empty sentence.
  """
  col = _Collector(empty)
  paths = io.as_paths(path)
  for p in paths:
    for line, obj in io.iter_json_objects(p):
      col.add(io.string_field(obj, foreign_field, p, line), io.string_field(obj, english_field, p, line),
              p, line, sides=(f"field {foreign_field!r}", f"field {english_field!r}"))
  return col.result(name or os.path.basename(paths[0]))


def _decode(value: Any, key: str, where: str) -> str:
  if isinstance(value, bytes):
    try:
      return value.decode("utf-8")
    except UnicodeDecodeError:
      raise InputError(f"key {key!r} is not valid UTF-8", where) from None
  if isinstance(value, str):
    return value
  if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy scalar
    return _decode(value.item(), key, where)
  raise InputError(f"key {key!r} holds {type(value).__name__}, expected text "
                   "(a Translation feature)", where)


def read_tfds(name: str, *, src_key: str, tgt_key: str = "en", split: str = "train",
              data_dir: Optional[PathLike] = None, download: bool = False,
              empty: str = "skip") -> Bitext:
  """A TensorFlow Datasets translation dataset (e.g. `ted_hrlr_translate/pt_to_en`).

  Read through `tfds.data_source` (ArrayRecord random access; TensorFlow not needed).
  The dataset must already be prepared in ArrayRecord format under `data_dir`
  unless `download=True`. `src_key`/`tgt_key` pick the foreign and English languages
  of each example dict; bytes are decoded as UTF-8.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  where = f"tfds:{name}[{split}]"
  try:
    source = tfds.data_source(name, split=split, data_dir=None if data_dir is None else os.fspath(data_dir),
                              download=download)
  except (ValueError, RuntimeError, AssertionError, ImportError, OSError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    hint = "" if download else " (download=False: the dataset must be prepared as array_record in data_dir)"
    raise InputError(f"cannot open TFDS dataset: {first}{hint}", where) from None
  col = _Collector(empty)
  for i in range(len(source)):
    example = source[i]
    if not isinstance(example, Mapping):
      raise InputError(f"record {i}: expected a dict of languages, got {type(example).__name__}", where)
    for key in (src_key, tgt_key):
      if key not in example:
        raise InputError(f"record {i}: no key {key!r} (keys: {sorted(example)})", where)
    col.add(_decode(example[src_key], src_key, where), _decode(example[tgt_key], tgt_key, where),
            where, None, sides=(f"key {src_key!r}", f"key {tgt_key!r}"), where=f"record {i}: ")
  return col.result(f"{name}[{split}]")


# --- filters -------------------------------------------------------------------------------


def take(bitext: Bitext, n: int) -> Bitext:
  """The first `n` pairs (all of them if fewer); for data-amount studies."""
  errors.check_int(n, "take")
  stats = dict(bitext.stats)
  if n < len(bitext):
    stats["taken_from"] = len(bitext)
  return Bitext(bitext.name, bitext.foreign[:n], bitext.english[:n], stats)


def exclude(bitext: Bitext, texts: Iterable[str]) -> Tuple[Bitext, int]:
  """Drops pairs whose foreign or English side equals any of `texts` under `normalize_text`.

  Returns (kept bitext, number dropped); the count is added to `stats['excluded']`.
  """
  banned = {normalize_text(t) for t in texts}
  banned.discard("")
  keep_f, keep_e = [], []
  for f, e in zip(bitext.foreign, bitext.english):
    if normalize_text(f) in banned or normalize_text(e) in banned:
      continue
    keep_f.append(f)
    keep_e.append(e)
  dropped = len(bitext) - len(keep_f)
  stats = dict(bitext.stats)
  stats["excluded"] = stats.get("excluded", 0) + dropped
  return Bitext(bitext.name, keep_f, keep_e, stats), dropped


def read_texts(spec: Mapping[str, Any]) -> List[str]:
  """Texts to exclude, from a config dict.

  Forms: `{'texts': [...]}`; `{'type': 'lines', 'path': P}` (every line);
  `{'type': 'jsonl', 'path': P, 'fields': ['text', 'text_en']}` (each field of each
  record); `{'type': 'tsv', 'path': P, 'columns': [0, 1]}`. `path` may be a list.
  """
  errors.check_mapping(spec, "exclude entry")
  kind = spec.get("type", "texts" if "texts" in spec else None)
  allowed = {"texts": {"type", "texts"}, "lines": {"type", "path"},
             "jsonl": {"type", "path", "fields"}, "tsv": {"type", "path", "columns"}}
  if kind not in allowed:
    raise InputError(f"exclude type must be one of {sorted(allowed)}, got {kind!r}")
  errors.check_keys(spec, allowed[kind], f"exclude ({kind})", required=() if kind == "texts" else ("path",))
  if kind == "texts":
    texts = spec["texts"]
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
      raise InputError("exclude texts must be a list of strings")
    return list(texts)
  out: List[str] = []
  for p in io.as_paths(spec["path"]):
    if kind == "lines":
      out.extend(io.read_text_lines(p))
    elif kind == "jsonl":
      fields = spec.get("fields", ["text", "text_en"])
      for line, obj in io.iter_json_objects(p):
        out.extend(io.string_field(obj, f, p, line) for f in fields)
    else:
      for line, fields in io.iter_tsv(p):
        for c in spec.get("columns", [0, 1]):
          if c >= len(fields):
            raise InputError(f"no column {c} (found {len(fields)})", p, line)
          out.append(fields[c])
  return out


# --- config-driven loading ----------------------------------------------------------------

_TYPE_KEYS = {
    "lines": {"foreign", "english"},
    "tsv": {"path", "foreign_column", "english_column", "num_columns", "skip_header"},
    "jsonl": {"path", "foreign_field", "english_field"},
    "tfds": {"name", "split", "data_dir", "src_key", "tgt_key", "download"},
}
_REQUIRED = {"lines": ("foreign", "english"), "tsv": ("path",), "jsonl": ("path",),
             "tfds": ("name", "src_key")}
_COMMON_KEYS = {"type", "empty", "take", "exclude", "label"}


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """One bitext source from config.

  `type` is one of 'lines' (keys `foreign`, `english`: paths or lists of paths),
  'tsv' (`path`, `foreign_column`=0, `english_column`=1, `num_columns`, `skip_header`),
  'jsonl' (`path`, `foreign_field`='text', `english_field`='text_en') or 'tfds'
  (`name`, `src_key`, `tgt_key`='en', `split`='train', `data_dir`, `download`=False).
  Common: `empty` ('skip' | 'error'), `exclude` (list of `read_texts` specs),
  `take` (first N pairs, applied after exclusion), `label` (name for logs).
  """

  type: str
  options: Mapping[str, Any]
  empty: str = "skip"
  take: Optional[int] = None
  exclude: Tuple[Mapping[str, Any], ...] = ()
  label: Optional[str] = None

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "SourceSpec":
    if isinstance(d, SourceSpec):
      return d
    kind = errors.check_mapping(d, "a bitext source").get("type")
    if kind not in SOURCE_TYPES:
      raise InputError(f"bitext source type must be one of {SOURCE_TYPES}, got {kind!r}")
    what = f"bitext source ({kind})"
    errors.check_keys(d, _COMMON_KEYS | _TYPE_KEYS[kind], what, required=_REQUIRED[kind])
    empty = io.check_empty_policy(d.get("empty", "skip"))
    n = d.get("take")
    if n is not None:
      errors.check_int(n, f"{what}: take")
    excl = d.get("exclude", ()) or ()
    if isinstance(excl, Mapping):
      excl = (excl,)
    return cls(type=kind, options={k: d[k] for k in _TYPE_KEYS[kind] if k in d}, empty=empty,
               take=n, exclude=tuple(excl), label=d.get("label"))


def load_source(spec: Union[SourceSpec, Mapping[str, Any]]) -> Bitext:
  """Reads a source, then drops excluded pairs, then keeps the first `take` pairs."""
  spec = SourceSpec.from_dict(spec)
  o = dict(spec.options)
  if spec.type == "lines":
    bt = read_lines(o["foreign"], o["english"], empty=spec.empty)
  elif spec.type == "tsv":
    bt = read_tsv(o["path"], foreign_column=o.get("foreign_column", 0),
                  english_column=o.get("english_column", 1), num_columns=o.get("num_columns"),
                  skip_header=bool(o.get("skip_header", False)), empty=spec.empty)
  elif spec.type == "jsonl":
    bt = read_jsonl(o["path"], foreign_field=o.get("foreign_field", "text"),
                    english_field=o.get("english_field", "text_en"), empty=spec.empty)
  else:
    bt = read_tfds(o["name"], src_key=o["src_key"], tgt_key=o.get("tgt_key", "en"),
                   split=o.get("split", "train"), data_dir=o.get("data_dir"),
                   download=bool(o.get("download", False)), empty=spec.empty)
  if spec.exclude:
    texts: List[str] = []
    for e in spec.exclude:
      texts.extend(read_texts(e))
    bt, _ = exclude(bt, texts)
  if spec.take is not None:
    bt = take(bt, spec.take)
  if spec.label:
    bt.name = spec.label
  return bt


@dataclasses.dataclass
class Mixture:
  """Several bitexts sampled with fixed ratios (normalised to sum 1) under one seed."""

  sources: List[Bitext]
  ratios: List[float]
  seed: int = 0

  def stats(self) -> List[Dict[str, Any]]:
    return [{"name": s.name, "ratio": r, **s.stats} for s, r in zip(self.sources, self.ratios)]


def mix(sources: Sequence[Union[Bitext, SourceSpec, Mapping[str, Any]]],
        ratios: Optional[Sequence[float]] = None, seed: int = 0) -> Mixture:
  """A mixture description; `ratios` default to proportional to size (plain concatenation)."""
  loaded = [s if isinstance(s, Bitext) else load_source(s) for s in sources]
  if not loaded:
    raise InputError("a bitext mixture needs at least one source")
  for s in loaded:
    if len(s) == 0:
      raise InputError(f"bitext source {s.name!r} has no pairs (stats: {s.stats})")
  if ratios is None:
    ratios = [float(len(s)) for s in loaded]
  ratios = [float(r) for r in ratios]
  if len(ratios) != len(loaded):
    raise InputError(f"{len(loaded)} bitext sources but {len(ratios)} ratios")
  if any(not r > 0 or r != r or r == float("inf") for r in ratios):
    raise InputError(f"mixture ratios must be positive and finite, got {ratios}")
  total = sum(ratios)
  errors.check_int(seed, "mixture seed", None)
  return Mixture(loaded, [r / total for r in ratios], seed)


def load_mixture(config: Mapping[str, Any]) -> Mixture:
  """`{'sources': [spec, ...], 'ratios': [...] (optional), 'seed': 0}` -> Mixture."""
  if not isinstance(config, Mapping) or "sources" not in config:
    raise InputError("bitext config needs a 'sources' list")
  errors.check_keys(config, ("sources", "ratios", "seed"), "bitext config")
  sources = config["sources"]
  if isinstance(sources, Mapping):
    sources = [sources]
  return mix(sources, config.get("ratios"), config.get("seed", 0))
