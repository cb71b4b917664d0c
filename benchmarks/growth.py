"""Growth with data size: time to the first training step and peak memory for bitext of
0.1M, 1M and 5M pairs.

    python benchmarks/growth.py                     # 0.1M, 1M, 5M pairs (~15 min here)
    python benchmarks/growth.py --pairs 100000      # one size
    python benchmarks/growth.py --quick             # 20k and 100k pairs

The bitext is real: the 1,997 NTREX-128 swa/eng lines repeated, each copy's lines ending
in a marker (` #<copy>`), so every pair is distinct and tokenisation does real work. Each
size runs `train.py` with the tiny config (`configs/tiny.py`: random 2-layer encoders,
MiniLM's tokenizer) for one step in a fresh process with an empty token cache and no
teacher-token cache (`data.teacher_cache=""`: that cache stores the teacher's vectors
of every English token, ~5M x 30 x D values at 5M pairs, and is a choice to make per
run), so what is timed is reading the files, tokenising both sides, building the
length buckets and the sampler, loading the models, compiling and running step 1.

Reported per size: seconds from process start to the first logged step (`metrics.jsonl`
gains its first line), the whole process's wall time, and its peak resident memory
(`wait4`'s ru_maxrss for that process alone); and the ratios between sizes (linear
growth: time and memory above the fixed part grow like the pairs).

    python benchmarks/growth.py --passages 1000000  # corpus encoding + search instead

`--passages N`: `eval.py` over a corpus of N passages (the 5,413 AfriQA passages repeated,
each copy's ids and texts marked) with the swa test queries, the tiny random encoder
(hidden 32, documents cut at 64 tokens) and no embedding cache: the whole process's time
and peak memory (reading, tokenising and encoding the corpus, exact search, scoring).
Embedding memory grows with the model's width (N x D x 4 bytes; 32 here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  pylint: disable=g-import-not-at-top

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _ntrex() -> str:
  sys.path.insert(0, ROOT)
  from configs import common  # pylint: disable=g-import-not-at-top
  return common.locate("ntrex")


def make_bitext(pairs: int, directory: str) -> tuple:
  """Files of `pairs` lines each (swa, eng): NTREX repeated with a per-copy marker."""
  src = os.path.join(_ntrex(), "swa.txt")
  eng = os.path.join(_ntrex(), "eng.txt")
  with open(src, encoding="utf-8") as f:
    s_lines = f.read().splitlines()
  with open(eng, encoding="utf-8") as f:
    e_lines = f.read().splitlines()
  out_s, out_e = os.path.join(directory, "swa.txt"), os.path.join(directory, "eng.txt")
  with open(out_s, "w", encoding="utf-8") as fs, open(out_e, "w", encoding="utf-8") as fe:
    n, copy = 0, 0
    while n < pairs:
      for s, e in zip(s_lines, e_lines):
        if n == pairs:
          break
        fs.write(f"{s} #{copy}\n")
        fe.write(f"{e} #{copy}\n")
        n += 1
      copy += 1
  return out_s, out_e


CONFIG = """
from configs import tiny

def get_config():
  c = tiny.get_config("")
  c.data.bitext.sources = [dict(type="lines", foreign={src!r}, english={eng!r}, label="growth")]
  c.data.teacher_cache = ""
  c.data.cache_dir = {cache!r}
  c.train.steps = 1
  c.train.checkpoint_every = 1000
  return c
"""


def run_size(pairs: int, work: str) -> dict:
  os.makedirs(work, exist_ok=True)
  t_data = time.perf_counter()
  src, eng = make_bitext(pairs, work)
  data_s = time.perf_counter() - t_data
  cfg = os.path.join(work, "growth_config.py")
  with open(cfg, "w", encoding="utf-8") as f:
    f.write(CONFIG.format(src=src, eng=eng, cache=os.path.join(work, "cache")))
  run_dir = os.path.join(work, "run")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_NUM_CPU_DEVICES="1")
  env.pop("XLA_FLAGS", None)
  cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config", cfg, "--workdir", run_dir,
         "--config.train.devices=1"]
  log = open(os.path.join(work, "train.log"), "w", encoding="utf-8")
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
  metrics = os.path.join(run_dir, "metrics.jsonl")
  first = None
  while True:
    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    if first is None and os.path.exists(metrics) and os.path.getsize(metrics) > 0:
      first = time.perf_counter() - t0
    if pid:
      break
    time.sleep(0.1)
  total = time.perf_counter() - t0
  log.close()
  code = os.waitstatus_to_exitcode(status)
  if code != 0:
    with open(os.path.join(work, "train.log"), encoding="utf-8") as f:
      tail = f.read()[-2000:]
    raise SystemExit(f"train.py failed at {pairs} pairs (exit {code}):\n{tail}")
  return {"pairs": pairs, "make_files_s": round(data_s, 2),
          "first_step_s": round(first if first is not None else total, 2),
          "process_s": round(total, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


EVAL_CONFIG = """
from optical_jax import evaluator, models

def get_config():
  c = evaluator.default_config()
  c.dataset.corpus = {corpus!r}
  c.dataset.queries = {queries!r}
  c.dataset.qrels = {qrels!r}
  c.cache_dir = "none"
  c.systems["tiny"] = evaluator.system(models.model_spec(
      weights="random", tokenizer="asset:minilm/tokenizer.json", query_max_len=32,
      doc_max_len=64, arch=dict(vocab_size=30522, hidden_size=32, num_layers=2, num_heads=4,
                                intermediate_size=64, max_position_embeddings=64)))
  return c
"""


def run_corpus(passages: int, work: str) -> dict:
  """eval.py over `passages` passages (AfriQA's repeated): time and peak memory."""
  os.makedirs(work, exist_ok=True)
  afriqa = os.path.join(ROOT, "data", "afriqa-clir")
  with open(os.path.join(afriqa, "corpus.jsonl"), encoding="utf-8") as f:
    docs = [json.loads(line) for line in f if line.strip()]
  corpus = os.path.join(work, "corpus.jsonl")
  with open(corpus, "w", encoding="utf-8") as f:
    n, copy = 0, 0
    while n < passages:
      for d in docs[:passages - n]:
        mark = "" if copy == 0 else f"#{copy}"
        f.write(json.dumps({"_id": d["_id"] + mark, "title": d.get("title", ""),
                            "text": d["text"] + (f" {mark}" if mark else "")}) + "\n")
      n += min(len(docs), passages - n)
      copy += 1
  cfg = os.path.join(work, "eval_config.py")
  with open(cfg, "w", encoding="utf-8") as f:
    f.write(EVAL_CONFIG.format(corpus=corpus, queries=os.path.join(afriqa, "queries", "swa.test.jsonl"),
                               qrels=os.path.join(afriqa, "qrels", "swa.test.tsv")))
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_NUM_CPU_DEVICES="1")
  env.pop("XLA_FLAGS", None)
  cmd = [sys.executable, os.path.join(ROOT, "eval.py"), f"--config={cfg}",
         f"--out={os.path.join(work, 'out')}"]
  log = open(os.path.join(work, "eval.log"), "w", encoding="utf-8")
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
  _, status, usage = os.wait4(proc.pid, 0)
  total = time.perf_counter() - t0
  log.close()
  if os.waitstatus_to_exitcode(status) != 0:
    with open(os.path.join(work, "eval.log"), encoding="utf-8") as f:
      raise SystemExit(f"eval.py failed at {passages} passages:\n{f.read()[-2000:]}")
  return {"passages": passages, "process_s": round(total, 2),
          "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def _measure(args, name: str, unit: str, run, sizes):
  """`run(n, directory)` for each size in a fresh temporary directory, with the machine's
  load around each: (the output header with its rows, the rows)."""
  out = C.header(args, name)
  out["load"] = C.wait_for_quiet(args)
  out["machine"] = C.machine_info()
  rows = []
  with tempfile.TemporaryDirectory(prefix="optical_growth.") as tmp:
    for n in sizes:
      print(f"{n} {unit} ...", flush=True)
      with C.Contention() as cont:
        row = run(n, os.path.join(tmp, str(n)))
      row.update(cont.summary())
      rows.append(row)
      print("  " + json.dumps(row), flush=True)
      if args.keep:
        os.system(f"cp -r {tmp}/{n} /tmp/growth_{n}")  # noqa: S605
  out["rows"] = rows
  out["load"]["at_end"] = C.load_avg()
  return out, rows


def main():
  p = C.parser("growth", __doc__)
  p.add_argument("--pairs", default=None, help="comma list of bitext sizes (pairs)")
  p.add_argument("--keep", action="store_true", help="keep the generated files and runs")
  p.add_argument("--passages", default=None,
                 help="comma list of corpus sizes: measure eval.py (encoding + search) instead")
  args = p.parse_args()
  if args.passages:
    out, rows = _measure(args, "growth-corpus", "passages", run_corpus,
                         [int(x) for x in args.passages.split(",")])
    C.write(args.out or C.default_out("growth-corpus", args.quick), out)
    return
  sizes = [int(x) for x in (args.pairs or ("20000,100000" if args.quick
                                           else "100000,1000000,5000000")).split(",")]
  out, rows = _measure(args, "growth", "pairs", run_size, sizes)
  base = rows[0]
  for r in rows:
    r["pairs_ratio"] = r["pairs"] / base["pairs"]
    r["first_step_ratio"] = r["first_step_s"] / base["first_step_s"]
    r["rss_ratio"] = r["peak_rss_mib"] / base["peak_rss_mib"]
  print()
  print(C.table(rows, ["pairs", "first_step_s", "process_s", "peak_rss_mib", "pairs_ratio",
                       "first_step_ratio", "rss_ratio", "load1", "others_cores"]))
  C.write(args.out or C.default_out("growth", args.quick), out)


if __name__ == "__main__":
  main()
