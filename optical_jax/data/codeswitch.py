"""Code-switching augmentation of bitext, bilingual lexicons and lexicon induction.

Code-switching replaces words of one side of each pair (the foreign side, or the
English side) by dictionary translations at a configured rate, before tokenisation:

    pairs --(code-switch)--> tokenise once (cached) --> length buckets --> batches

`code_switch` is a pure function of the texts, the lexicon, the rate and the seed: the
switches of example i are drawn from a Generator seeded by (seed, stream tag, source,
i), so they do not depend on batching, host layout or where a resumed iterator
starts. The switched texts are what the pipeline tokenises, so the token cache and the
data-iterator fingerprint (both keyed by the texts' content hash) change with the rate,
the side, the seed and the dictionary's entries, and only when the texts do. Each pair
is switched once: every epoch sees the same switched sentence.

Lexicons are files of `word translation` pairs, one a line, separated by white space
(the MUSE format), optionally with a third column, a score (the induced lexicons this
module writes); a word's translations are kept in file order (best first). Words are
matched case-insensitively after stripping punctuation and symbols around them
(`word_key`); a switched word keeps that punctuation and an initial capital.

For languages without a MUSE dictionary, `induce_lexicon` estimates one from the bitext
itself (IBM Model 1 both ways, EM in numpy) and `precision_at_1` checks a lexicon
against a gold dictionary (e.g. MUSE's 5000-6500 test split):

    python -m optical_jax.data.codeswitch induce --foreign F.txt --english E.txt --out lex.txt
    python -m optical_jax.data.codeswitch evaluate --lexicon lex.txt --gold de-en.5000-6500.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
import unicodedata
from typing import (Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union)

import numpy as np

from optical_jax import errors
from optical_jax.data import io
from optical_jax.data.bitext import Bitext, Mixture
from optical_jax.data.io import PathLike
from optical_jax.data.pipeline import TAG_CODE_SWITCH, seeded_rng
from optical_jax.errors import InputError

SIDES = ("foreign", "english")
Lexicon = Dict[str, Tuple[str, ...]]
_TOKEN = re.compile(r"\S+")


# --- words --------------------------------------------------------------------------------------


def _is_edge(ch: str) -> bool:
  """Punctuation or symbol: stripped from a word's edges (combining marks are kept)."""
  return unicodedata.category(ch)[0] in "PS"


def split_token(token: str) -> Tuple[str, str, str]:
  """(leading punctuation, core, trailing punctuation) of a white-space token."""
  a, b = 0, len(token)
  while a < b and _is_edge(token[a]):
    a += 1
  while b > a and _is_edge(token[b - 1]):
    b -= 1
  return token[:a], token[a:b], token[b:]


def word_key(word: str) -> str:
  """The lexicon key of a word: its core (see `split_token`), case-folded."""
  return split_token(word)[1].casefold()


def words(text: str) -> List[str]:
  """The lexicon keys of a sentence's words (tokens that are only punctuation left out)."""
  out = []
  for m in _TOKEN.finditer(text):
    key = word_key(m.group())
    if key:
      out.append(key)
  return out


# --- lexicon files ------------------------------------------------------------------------------


def read_lexicon(paths: Union[PathLike, Sequence[PathLike]]) -> Lexicon:
  """A lexicon from `word translation [score]` files (the MUSE format; several are merged).

  Keys are `word_key`s; a word's translations are kept once each, in file order.
  Entries whose word is only punctuation or symbols are skipped (no text matches them).

  Raises:
    InputError: `path: file not found`, `path:line: expected 'word translation' ...`
      for a line with another number of fields, or a score that is not a finite number.
  """
  out: Dict[str, List[str]] = {}
  for path in io.as_paths(paths):
    for n, line in io.iter_lines(path):
      fields = line.split()
      if not fields:
        continue
      if len(fields) not in (2, 3):
        raise InputError(f"expected 'word translation' or 'word translation score' separated by "
                         f"white space, found {len(fields)} fields", path, n)
      if len(fields) == 3:
        try:
          score = float(fields[2])
        except ValueError:
          score = math.nan
        if not math.isfinite(score):
          raise InputError(f"score {fields[2]!r} is not a finite number", path, n)
      key = word_key(fields[0])
      if not key:   # MUSE has a few ('###'): text never matches them (see `switch_text`)
        continue
      seen = out.setdefault(key, [])
      if fields[1] not in seen:
        seen.append(fields[1])
  return {k: tuple(v) for k, v in out.items()}


def write_lexicon(path: PathLike, lexicon: Mapping[str, Sequence[Tuple[str, float]]]) -> None:
  """Writes `word translation score` lines (each word's translations best first), atomically."""
  from optical_jax.fileio import atomic_open  # pylint: disable=g-import-not-at-top
  with atomic_open(path, "w", encoding="utf-8") as f:
    for src, cands in lexicon.items():
      for tgt, score in cands:
        f.write(f"{src} {tgt} {score:.6g}\n")


# --- switching ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CodeSwitchConfig:
  """`data.code_switch`: which side's words are replaced, how often, with which lexicon.

  `rate`: the probability that a switchable word (one the lexicon has) is replaced (0 =
  off). `side`: 'foreign' (foreign words -> English: a foreign->English lexicon such as
  MUSE's `X-en`) or 'english' (English words -> foreign: `en-X`). `dictionary`: the
  lexicon file, or several joined by `os.pathsep`. `seed`: -1 = the data seed.
  `force`: train even when the lexicon covers under `MIN_COVERAGE` of the side's words
  (otherwise an InputError: a dictionary of the wrong direction or language would
  switch nothing and train exactly as without it).
  """

  rate: float = 0.0
  side: str = "foreign"
  dictionary: str = ""
  seed: int = -1
  force: bool = False

  def __post_init__(self):
    problems = errors.field_problems(self, [
        ("rate", "number", dict(low=0.0, high=1.0)),
        ("side", "choice", dict(choices=SIDES)),
        ("seed", "int", dict(low=-1)),
        ("force", "bool", {}),
    ])
    if not isinstance(self.dictionary, str):
      problems.append(f"dictionary must be a path (several joined by {os.pathsep!r}), "
                      f"got {self.dictionary!r}")
    if problems:
      raise InputError("data.code_switch: " + "; ".join(problems))
    if self.rate > 0 and not self.paths:
      raise InputError("data.code_switch.rate > 0 needs data.code_switch.dictionary (a "
                       "'word translation' file, e.g. a MUSE dictionary or an induced lexicon)")

  @property
  def paths(self) -> List[str]:
    return [p for p in self.dictionary.split(os.pathsep) if p]


def switch_text(text: str, lexicon: Mapping[str, Sequence[str]], rate: float,
                rng: np.random.Generator) -> Tuple[str, int, int]:
  """One sentence with each switchable word replaced with probability `rate`.

  A replaced word keeps its surrounding punctuation and spacing, and an initial
  capital; the translation is drawn uniformly from the word's entries.

  Returns:
    (text, switchable words, switched words).
  """
  tokens = list(_TOKEN.finditer(text))
  if not tokens:
    return text, 0, 0
  draw, pick = rng.random(len(tokens)), rng.random(len(tokens))
  parts, last, switchable, switched = [], 0, 0, 0
  for j, m in enumerate(tokens):
    lead, core, trail = split_token(m.group())
    cands = lexicon.get(core.casefold()) if core else None
    if not cands:
      continue
    switchable += 1
    if draw[j] >= rate:
      continue
    switched += 1
    new = cands[min(int(pick[j] * len(cands)), len(cands) - 1)]
    if core[:1].isupper() and new[:1].islower():
      new = new[:1].upper() + new[1:]
    parts.append(text[last:m.start()])
    parts.append(lead + new + trail)
    last = m.end()
  parts.append(text[last:])
  return "".join(parts), switchable, switched


def code_switch(texts: Sequence[str], lexicon: Mapping[str, Sequence[str]], rate: float, seed: int,
                stream: int = 0) -> Tuple[List[str], int, int]:
  """`switch_text` of every text; text i draws from a Generator seeded by (seed, tag, stream, i).

  Returns:
    (texts, switchable words, switched words); rate 0 returns the texts unchanged.
  """
  if rate <= 0:
    return list(texts), 0, 0
  out, total, done = [], 0, 0
  for i, text in enumerate(texts):
    new, a, b = switch_text(text, lexicon, rate, seeded_rng(seed, TAG_CODE_SWITCH, stream, i))
    out.append(new)
    total, done = total + a, done + b
  return out, total, done


MIN_COVERAGE = 0.01   # below this share of the side's words in the lexicon: refused unless forced


def switch_mixture(mixture: Mixture, config: Union[CodeSwitchConfig, Mapping[str, Any]],
                   data_seed: int) -> Mixture:
  """The mixture with `config.side` of every source code-switched (source k is stream k).

  Each source's stats gain `switchable_words` and `switched_words`. Rate 0 returns
  `mixture` itself (the lexicon is not read).
  """
  cfg = errors.build(CodeSwitchConfig, config, "data.code_switch")
  if cfg.rate <= 0:
    return mixture
  lexicon = read_lexicon(cfg.paths)
  seed = data_seed if cfg.seed < 0 else cfg.seed
  sources = []
  words = covered = 0
  for k, s in enumerate(mixture.sources):
    side = s.foreign if cfg.side == "foreign" else s.english
    new, switchable, switched = code_switch(side, lexicon, cfg.rate, seed, stream=k)
    words += sum(len(_TOKEN.findall(t)) for t in side)
    covered += switchable
    stats = dict(s.stats, switchable_words=switchable, switched_words=switched)
    foreign, english = (new, s.english) if cfg.side == "foreign" else (s.foreign, new)
    sources.append(Bitext(s.name, foreign, english, stats))
  if words and covered < MIN_COVERAGE * words and not cfg.force:
    raise InputError(f"data.code_switch: the dictionary covers {covered} of the {words} "
                     f"{cfg.side} words ({covered / words:.2%} < {MIN_COVERAGE:.0%}), so "
                     "code-switching would change almost nothing: is it the "
                     f"{'foreign->English' if cfg.side == 'foreign' else 'English->foreign'} "
                     "direction, of this language? Set data.code_switch.force=True to train "
                     "anyway", cfg.paths[0])
  return Mixture(sources, list(mixture.ratios), mixture.seed)


# --- lexicon induction --------------------------------------------------------------------------


def _vocab(sentences: Sequence[List[str]]) -> Tuple[Dict[str, int], np.ndarray]:
  index: Dict[str, int] = {}
  counts: List[int] = []
  for ws in sentences:
    for w in ws:
      i = index.setdefault(w, len(index))
      if i == len(counts):
        counts.append(0)
      counts[i] += 1
  return index, np.asarray(counts, np.int64)


def _ibm1(f_ids: Sequence[np.ndarray], e_ids: Sequence[np.ndarray], n_f: int, n_e: int,
          iterations: int) -> Tuple[np.ndarray, np.ndarray]:
  """IBM Model 1 t(f | e) by EM, with a NULL word (id `n_e`) on the e side.

  Returns:
    (pair keys `e * n_f + f` of every co-occurring pair, sorted; t(f | e) of each).
  """
  null = np.array([n_e], np.int64)
  fs, es, groups = [], [], []
  base = 0
  for f, e in zip(f_ids, e_ids):
    if len(f) == 0:
      continue
    e = np.concatenate([e, null])
    fs.append(np.repeat(f, len(e)))
    es.append(np.tile(e, len(f)))
    groups.append(base + np.repeat(np.arange(len(f), dtype=np.int64), len(e)))
    base += len(f)
  if not fs:
    return np.zeros(0, np.int64), np.zeros(0)
  f_all, e_all, group = np.concatenate(fs), np.concatenate(es), np.concatenate(groups)
  keys, inv = np.unique(e_all * n_f + f_all, return_inverse=True)
  e_of_key = keys // n_f
  t = np.ones(len(keys))
  for _ in range(iterations):
    p = t[inv]
    post = p / np.bincount(group, p, minlength=base)[group]
    c = np.bincount(inv, post, minlength=len(keys))
    t = c / np.bincount(e_of_key, c, minlength=n_e + 1)[e_of_key]
  return keys, t


def induce_lexicon(pairs: Iterable[Tuple[str, str]], *, iterations: int = 5, min_count: int = 2,
                   top: int = 1) -> Dict[str, List[Tuple[str, float]]]:
  """A source -> target lexicon from sentence pairs (source, target), by IBM Model 1.

  Both directions are estimated by `iterations` rounds of EM (with a NULL word); a pair
  (s, t) scores sqrt(p(t | s) p(s | t)), which keeps translations both models agree on
  and demotes frequent function words. Words are `words(...)` keys; source and target
  words seen fewer than `min_count` times are left out.

  Returns:
    {source word: [(target word, score), ...] best first, at most `top`}, source words
    in order of falling frequency.
  """
  errors.check_int(iterations, "iterations", 1)
  errors.check_int(min_count, "min_count", 1)
  errors.check_int(top, "top", 1)
  src_words, tgt_words = [], []
  for s, t in pairs:
    src_words.append(words(s))
    tgt_words.append(words(t))
  s_index, s_count = _vocab(src_words)
  t_index, t_count = _vocab(tgt_words)
  n_s, n_t = len(s_index), len(t_index)
  if not n_s or not n_t:
    return {}
  s_ids = [np.fromiter((s_index[w] for w in ws), np.int64, len(ws)) for ws in src_words]
  t_ids = [np.fromiter((t_index[w] for w in ws), np.int64, len(ws)) for ws in tgt_words]
  k_st, p_s_given_t = _ibm1(s_ids, t_ids, n_s, n_t, iterations)   # keys t * n_s + s
  k_ts, p_t_given_s = _ibm1(t_ids, s_ids, n_t, n_s, iterations)   # keys s * n_t + t
  t_of, s_of = k_st // n_s, k_st % n_s
  keep = t_of < n_t                                   # drop NULL
  t_of, s_of, p_s_given_t = t_of[keep], s_of[keep], p_s_given_t[keep]
  # The same co-occurring pairs in the other model: look up s * n_t + t among k_ts.
  pos = np.searchsorted(k_ts, s_of * n_t + t_of)
  score = np.sqrt(p_s_given_t * p_t_given_s[pos])
  ok = (s_count[s_of] >= min_count) & (t_count[t_of] >= min_count)
  s_of, t_of, score = s_of[ok], t_of[ok], score[ok]
  order = np.lexsort((t_of, -score, s_of))            # by source, best score first, ties by id
  s_words = list(s_index)
  t_words = list(t_index)
  best: Dict[int, List[Tuple[str, float]]] = {}
  for i in order:
    cands = best.setdefault(int(s_of[i]), [])
    if len(cands) < top:
      cands.append((t_words[int(t_of[i])], float(score[i])))
  by_freq = sorted(best, key=lambda i: (-s_count[i], i))
  return {s_words[i]: best[i] for i in by_freq}


def precision_at_1(lexicon: Mapping[str, Sequence[Any]],
                   gold: Mapping[str, Sequence[str]]) -> Dict[str, float]:
  """Precision@1 of `lexicon` against `gold` over the gold source words it covers.

  `lexicon` maps a word to its translations best first (strings, or (string, score)
  pairs); a word is right when its first translation is one of its gold translations
  (compared case-insensitively). Returns `p_at_1` (nan when nothing is covered),
  `coverage` (covered / gold words), `covered`, `correct` and `gold_words`.
  """
  covered = correct = 0
  for src, golds in gold.items():
    cands = lexicon.get(src)
    if not cands:
      continue
    covered += 1
    first = cands[0][0] if isinstance(cands[0], (tuple, list)) else cands[0]
    correct += first.casefold() in {g.casefold() for g in golds}
  n = len(gold)
  return {"p_at_1": correct / covered if covered else math.nan,
          "coverage": covered / n if n else math.nan,
          "covered": covered, "correct": correct, "gold_words": n}


# --- command line -------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m optical_jax.data.codeswitch",
                                   description="Induce a bilingual lexicon from bitext; check one "
                                               "against a gold dictionary.")
  sub = parser.add_subparsers(dest="cmd", required=True)
  i = sub.add_parser("induce", help="IBM Model 1 lexicon from line-aligned bitext")
  i.add_argument("--foreign", nargs="+", required=True, help="foreign line files")
  i.add_argument("--english", nargs="+", required=True, help="English line files (same order)")
  i.add_argument("--direction", choices=("foreign-english", "english-foreign"),
                 default="foreign-english",
                 help="source -> target (foreign-english: for data.code_switch.side=foreign)")
  i.add_argument("--out", required=True, help="lexicon file to write (word translation score)")
  i.add_argument("--iterations", type=int, default=5)
  i.add_argument("--min-count", type=int, default=2)
  i.add_argument("--top", type=int, default=1, help="translations kept per word")
  e = sub.add_parser("evaluate", help="precision@1 and coverage against a gold dictionary")
  e.add_argument("--lexicon", nargs="+", required=True)
  e.add_argument("--gold", nargs="+", required=True, help="e.g. MUSE X-en.5000-6500.txt")
  args = parser.parse_args(argv)
  from optical_jax.data import bitext as bitext_lib  # pylint: disable=g-import-not-at-top
  try:
    if args.cmd == "induce":
      bt = bitext_lib.read_lines(args.foreign, args.english)
      pairs = bt.pairs() if args.direction == "foreign-english" else zip(bt.english, bt.foreign)
      lex = induce_lexicon(pairs, iterations=args.iterations, min_count=args.min_count,
                           top=args.top)
      write_lexicon(args.out, lex)
      print(f"{args.out}: {len(lex)} source words from {len(bt)} pairs")
    else:
      r = precision_at_1(read_lexicon(args.lexicon), read_lexicon(args.gold))
      print(f"P@1 {r['p_at_1']:.3f} ({r['correct']}/{r['covered']}), coverage "
            f"{r['coverage']:.3f} ({r['covered']}/{r['gold_words']} gold words)")
  except InputError as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
