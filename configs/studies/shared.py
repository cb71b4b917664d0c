"""What the study configs share: evaluation datasets, the data-amount cut, tiny models for smoke runs.

Not a config file itself: `configs/studies/data_amount.py`, `language_ratio.py` and
`backbones.py` import it. Data locations come from `configs/common.py`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence

import ml_collections

from configs import common
from configs.tiny import TINY_ARCH  # the tiny random encoder of smoke scales
from optical_jax import evaluator

# What every study evaluation computes (ir_measures names); the summary shows a subset.
MEASURES = ("P@1", "P@5", "R@10", "nDCG@10", "AP")
SCALES = ("smoke", "cpu", "full")

# NTREX-128 codes -> XQuAD-R / MLQA-R codes of the high-resource languages.
LAREQA_CODES = {"ell": "el", "hin": "hi", "tur": "tr", "tha": "th", "ara": "ar", "deu": "de",
                "spa": "es", "rus": "ru", "vie": "vi", "zho": "zh"}
MLQA_LANGS = ("ar", "de", "es", "hi", "vi", "zh")


def check_scale(scale: str) -> str:
  if scale not in SCALES:
    raise ValueError(f"study scale must be one of {', '.join(SCALES)} (e.g. :cpu), got {scale!r}")
  return scale


def split_list(text: str, kind=str) -> tuple:
  """'a+b+c' -> ('a', 'b', 'c') converted by `kind`."""
  return tuple(kind(x) for x in str(text).split("+") if x.strip())


def tiny_spec() -> ml_collections.ConfigDict:
  """A random 2-layer encoder with MiniLM's tokenizer (smoke runs: seconds, no weights)."""
  from optical_jax import models  # pylint: disable=g-import-not-at-top
  return models.model_spec(weights="random", tokenizer="asset:minilm/tokenizer.json",
                           arch=dict(TINY_ARCH), query_max_len=32, doc_max_len=64)


def student_config(model: str, lang: str = "swa", data_root: str = "", tune: bool = False
                   ) -> ml_collections.ConfigDict:
  """The trainer config a study cell starts from: 'tiny' (`configs/tiny.py`, random
  encoders), 'minilm' (`configs/swa_minilm.py`) or 'e5' (`configs/swa_e5.py`) for the
  AfriQA language `lang`; `tune`: its dev questions held out of the bitext (selection
  stages evaluate on them; the tiny config's bitext never holds them)."""
  if model == "tiny":
    from configs import tiny  # pylint: disable=g-import-not-at-top
    return tiny.get_config(f"data_root={data_root}" if data_root else "")
  if model == "minilm":
    from configs import swa_minilm as base  # pylint: disable=g-import-not-at-top
  elif model == "e5":
    from configs import swa_e5 as base  # pylint: disable=g-import-not-at-top
  else:
    raise ValueError(f"model= takes tiny, minilm or e5, got {model!r}")
  return base.get_config(lang + (f",data_root={data_root}" if data_root else "")
                         + (",tune" if tune else ""))


def set_budget(c: ml_collections.ConfigDict, steps: int, tiny: bool = False
               ) -> ml_collections.ConfigDict:
  """A cell's training budget: `steps` steps and one checkpoint kept; a smoke (tiny) cell
  checkpoints once at the end, a real one at mid-run (at most every 200 steps), with
  warm-up at most a fifth of the steps and a log line every 10 steps."""
  c.train.steps = int(steps)
  c.train.keep_checkpoints = 1
  if tiny:
    c.train.checkpoint_every = int(steps)
  else:
    c.optim.warmup_steps = min(int(c.optim.warmup_steps), max(1, steps // 5))
    c.train.checkpoint_every = max(1, min(200, steps // 2))
    c.train.log_every = 10
  return c


def reference_systems(teacher, name: str, oracle: bool = True) -> Dict[str, Any]:
  """The reference lines of a study: `<name>-zeroshot` (the teacher on the native
  questions) and, with `oracle`, `<name>-oracle` (on their English translations)."""
  refs = {f"{name}-zeroshot": evaluator.system(teacher)}
  if oracle:
    refs[f"{name}-oracle"] = evaluator.system(teacher, query_field="text_en")
  return refs


def eval_base(top_k: int = 100) -> ml_collections.ConfigDict:
  c = evaluator.default_config()
  c.measures = MEASURES
  c.top_k = top_k
  return c


def afriqa_eval(lang: str, data_root: str = "", split: str = "test") -> ml_collections.ConfigDict:
  """AfriQA-CLIR `lang` test: native questions over the English passage pool."""
  data = common.afriqa_dir(lang, data_root)
  c = eval_base()
  c.dataset.corpus = os.path.join(data, "corpus.jsonl")
  c.dataset.queries = os.path.join(data, "queries", f"{lang}.{split}.jsonl")
  c.dataset.qrels = os.path.join(data, "qrels", f"{lang}.{split}.tsv")
  return c


def lareqa_eval(which: str, lang: str, data_root: str = "") -> ml_collections.ConfigDict:
  """XQuAD-R (`which='xquad-r'`) or MLQA-R: a `lang` question retrieves its English answer sentence."""
  c = eval_base()
  c.dataset.kind = "lareqa"
  c.dataset.path = common.xquad_r_dir(data_root) if which == "xquad-r" else common.mlqa_r_dir(data_root)
  c.dataset.lang = lang
  return c


def lareqa_evals(which: str, langs, data_root: str = "") -> Dict[str, ml_collections.ConfigDict]:
  """`lareqa_eval` of each language, named `<which>-<lang>` (e.g. xquad-r-el)."""
  return {f"{which}-{lang}": lareqa_eval(which, lang, data_root) for lang in langs}


def bitext_eval(foreign: str, english: str) -> ml_collections.ConfigDict:
  """Bitext retrieval: a foreign sentence retrieves its English translation."""
  c = eval_base()
  c.dataset.kind = "bitext"
  c.dataset.queries = foreign
  c.dataset.corpus = english
  return c


def language_evals(lang: str, data_root: str = "", bitext: bool = True
                   ) -> Dict[str, ml_collections.ConfigDict]:
  """afriqa-<lang> and, when the data has one, the language's bitext-retrieval set."""
  out = {f"afriqa-{lang}": afriqa_eval(lang, data_root)}
  found = common.bitext_retrieval_files(lang, data_root) if bitext else None
  if found:
    name, foreign, english = found
    out[name] = bitext_eval(foreign, english)
  return out


_COUNTS: Dict[str, int] = {}


def source_size(source: Dict[str, Any]) -> int:
  """Pairs a bitext source yields (exclusions applied); memoised per process."""
  from optical_jax.data import bitext  # pylint: disable=g-import-not-at-top
  key = json.dumps(source, sort_keys=True, default=str)
  if key not in _COUNTS:
    _COUNTS[key] = len(bitext.load_source(dict(source, take=None)))
  return _COUNTS[key]


def take_first(sources: Sequence[Dict[str, Any]], amount: Optional[int]) -> List[Dict[str, Any]]:
  """The first `amount` pairs of the sources concatenated in order (None: all of them).

  Each source gets a `take` (`optical_jax.data.bitext`); sources past the cut are
  dropped, so the query-domain pairs listed first are used first.
  """
  if amount is None:
    return [dict(s) for s in sources]
  out, left = [], int(amount)
  for s in sources:
    if left <= 0:
      break
    n = source_size(s)
    out.append(dict(s, take=min(n, left)))
    left -= min(n, left)
  if left > 0:
    raise ValueError(f"only {amount - left} bitext pairs available, {amount} asked for")
  return out


def parse_amount(value) -> Optional[int]:
  """'all' -> None; '1k' / '1000' -> 1000."""
  text = str(value).lower()
  if text == "all":
    return None
  if text.endswith("k"):
    return int(float(text[:-1]) * 1000)
  return int(text)


def ntrex_lang_evals(lang: str, data_root: str = "") -> Dict[str, ml_collections.ConfigDict]:
  """XQuAD-R (and MLQA-R where it has the language) for an NTREX code such as 'ell'."""
  code = LAREQA_CODES[lang]
  out = {f"xquad-r-{code}": lareqa_eval("xquad-r", code, data_root)}
  if code in MLQA_LANGS:
    out[f"mlqa-r-{code}"] = lareqa_eval("mlqa-r", code, data_root)
  return out


def ntrex_source(lang: str, data_root: str = "") -> Dict[str, Any]:
  """NTREX-128 `lang`-English news sentences as one bitext source."""
  d = common.ntrex_dir(lang, data_root)
  return dict(type="lines", label=f"ntrex-{lang}", foreign=os.path.join(d, f"{lang}.txt"),
              english=os.path.join(d, "eng.txt"))


def induced_lexicon(sources: Sequence[Dict[str, Any]], cache_dir: str = "", *,
                    min_count: int = 2, iterations: int = 5) -> str:
  """A foreign -> English lexicon induced from `sources` (IBM Model 1,
  `optical_jax.data.codeswitch.induce_lexicon`), for languages without a MUSE dictionary.

  Written once to `CACHE/lexicons/<hash of the texts and settings>.txt` (CACHE =
  `cache_dir` or the project cache) and reused by every cell and later study.
  """
  from optical_jax import assets, fingerprint  # pylint: disable=g-import-not-at-top
  from optical_jax.data import bitext, codeswitch  # pylint: disable=g-import-not-at-top
  mixture = bitext.load_mixture(dict(sources=[dict(s) for s in sources]))
  foreign = [t for s in mixture.sources for t in s.foreign]
  english = [t for s in mixture.sources for t in s.english]
  key = fingerprint.digest(dict(foreign=fingerprint.texts(foreign), english=fingerprint.texts(english),
                                min_count=min_count, iterations=iterations), n=20)
  path = os.path.join(assets.cache_dir(cache_dir or None), "lexicons", f"induced-{key}.txt")
  if not os.path.exists(path):
    lexicon = codeswitch.induce_lexicon(zip(foreign, english), iterations=iterations,
                                        min_count=min_count)
    codeswitch.write_lexicon(path, lexicon)
  return path
