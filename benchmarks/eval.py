"""Evaluation throughput: corpus encoding (Flax vs transformers/PyTorch) and exact dense search (JAX vs numpy).

    python benchmarks/eval.py            # all 5,413 AfriQA passages; search on AfriQA size and 1M
    python benchmarks/eval.py --quick    # 256 passages; search on AfriQA size and 100k

Encoding: all-MiniLM-L6-v2 (real weights from the asset cache) embeds the AfriQA-CLIR
corpus as the evaluator does (`title + " " + text`, max length 256, mean pooling, L2
normalisation, batch 32):
  * jax: `optical_jax.retrieval.encode_texts` with the model's jitted `embed_fn` and the
    evaluator's defaults: doc buckets cut at the max length (multiples of 16) and
    `max_tokens` (padded tokens per batch: 2048, i.e. 32 rows up to 64 tokens, 8 at 256)
    -- texts sorted by length, each batch padded to its bucket. Every bucket is compiled before timing (the
    compile time is reported separately); the timed run includes tokenisation.
  * torch: transformers `BertModel.from_pretrained` (default attention implementation)
    under `torch.no_grad()`, the same token ids (same tokenizer, same truncation), texts
    sorted by length and each batch padded to its own longest text (the best case for
    eager PyTorch, which has nothing to recompile), then mean pooling and normalisation.
    Tokenisation is timed too.
Embeddings of the two are compared (max abs difference, min cosine).

Search: `optical_jax.retrieval.exact_search` (dense dot product, top-100, chunked with
its defaults) vs numpy brute force (query chunks of 64: matmul, `argpartition`, sort of
the top 100) for 1,000 random unit queries against (a) the AfriQA corpus embeddings and
(b) a synthetic corpus of random unit 384-d float32 vectors (1M, 1.5 GB). Peak resident
memory during each search is sampled every 5 ms (and the process's ru_maxrss is
reported): the extra memory above the corpus itself stays bounded by the chunk sizes.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  pylint: disable=g-import-not-at-top

MB = 2 ** 20
DIM = 384


def corpus_texts(args):
  from optical_jax.data import beir  # pylint: disable=g-import-not-at-top
  corpus = beir.load_corpus(os.path.join(C.REPO, "data", "afriqa-clir", "corpus.jsonl"))
  texts = corpus.full_texts(" ")  # the evaluator's passage text: title + " " + text
  return texts[:args.limit] if args.limit else texts


def tokenizer():
  from optical_jax import assets  # pylint: disable=g-import-not-at-top
  from optical_jax.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  return Tokenizer(assets.resolve("asset:minilm/tokenizer.json"))


def encode_jax(args, log=print):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from optical_jax import buckets as buckets_lib, evaluator, models, retrieval  # pylint: disable=g-import-not-at-top
  texts = corpus_texts(args)
  spec = models.model_spec(weights="hf", path="asset:minilm", tokenizer="asset:minilm/tokenizer.json",
                           doc_max_len=args.max_len, pooling="mean", normalize=True)
  model = models.load_model(spec)
  tokenize = model.tokenize_fn("doc")
  embed = model.embed_fn()
  bs = args.batch_size
  defaults = evaluator.default_config()  # the evaluator's doc buckets and token budget
  buckets = tuple(b for b in defaults.length_buckets.doc if b < args.max_len) + (args.max_len,)
  max_tokens = args.max_tokens if args.max_tokens is not None else int(defaults.max_tokens)
  lengths = np.array([len(s) for s in tokenize(texts)])
  n_tokens = int(lengths.sum())
  log(f"{len(texts)} passages, {n_tokens} tokens (mean {lengths.mean():.0f}, "
      f"{(lengths == args.max_len).mean():.0%} truncated at {args.max_len})")
  t0 = time.perf_counter()  # compile every bucket first
  for b in buckets:
    rows = retrieval.batch_rows(b, bs, max_tokens or None)
    embed(np.zeros((rows, b), np.int32), np.ones((rows, b), np.int32))
  compile_s = time.perf_counter() - t0
  log(f"  jax: {len(buckets)} buckets compiled in {compile_s:.1f} s", flush=True)
  with C.Contention() as cj:  # timed: tokenisation + bucketed batches + embedding
    emb = retrieval.encode_texts(texts, tokenize, embed, batch_size=bs, length_buckets=buckets,
                                 pad_id=model.tokenizer.pad_id, progress=False,
                                 max_tokens=max_tokens or None)
  order, padded, i = np.argsort(-lengths, kind="stable"), 0, 0
  while i < len(order):  # padded tokens of real rows, as encode_texts batches them
    width = buckets_lib.width(int(lengths[order[i]]), buckets)
    rows = retrieval.batch_rows(width, bs, max_tokens or None)
    padded += width * len(order[i:i + rows])
    i += rows
  log(f"  jax:   {len(texts) / cj.wall_s:7.1f} passages/s ({cj.wall_s:.1f} s)", flush=True)
  row = {"framework": "jax", "passages": len(texts), "seconds": cj.wall_s,
         "passages_per_s": len(texts) / cj.wall_s, "tokens_per_s": n_tokens / cj.wall_s,
         "padded_tokens": int(padded), "compile_s": compile_s,
         "passages_per_s_incl_compile": len(texts) / (cj.wall_s + compile_s), **cj.summary()}
  info = {"passages": len(texts), "tokens": n_tokens, "mean_length": float(lengths.mean()),
          "truncated_fraction": float((lengths == args.max_len).mean()),
          "max_len": args.max_len, "batch_size": bs, "max_tokens": max_tokens, "buckets": buckets}
  return row, info, emb


def encode_torch(args, log=print):
  """transformers BertModel, no_grad, sorted by length, each batch padded to its longest text."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from optical_jax import assets  # pylint: disable=g-import-not-at-top
  transformers.logging.set_verbosity_error()
  texts = corpus_texts(args)
  tok = tokenizer()
  bs = args.batch_size
  tm = transformers.BertModel.from_pretrained(assets.resolve("asset:minilm"),
                                              add_pooling_layer=False).eval()
  pad_id = tok.pad_id
  with torch.no_grad():  # warm-up: one batch at the longest length (allocator, threads)
    tm(input_ids=torch.full((bs, args.max_len), 1000, dtype=torch.long),
       attention_mask=torch.ones((bs, args.max_len), dtype=torch.long))

  def run():
    ids = tok.encode_batch(texts, args.max_len)  # the same ids and truncation as the JAX side
    lens = np.array([len(s) for s in ids])
    order = np.argsort(-lens, kind="stable")
    out = np.empty((len(texts), tm.config.hidden_size), np.float32)
    padded = 0
    with torch.no_grad():
      for start in range(0, len(texts), bs):
        rows = order[start:start + bs]
        width = int(lens[rows].max())
        padded += width * len(rows)
        ids_b = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
          ids_b[r, :lens[i]] = torch.tensor(ids[i])
          mask[r, :lens[i]] = 1
        h = tm(input_ids=ids_b, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        out[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out, int(lens.sum()), padded

  with C.Contention() as ct:
    emb, n_tokens, padded = run()
  log(f"  torch: {len(texts) / ct.wall_s:7.1f} passages/s ({ct.wall_s:.1f} s)", flush=True)
  row = {"framework": "torch", "passages": len(texts), "seconds": ct.wall_s,
         "passages_per_s": len(texts) / ct.wall_s, "tokens_per_s": n_tokens / ct.wall_s,
         "padded_tokens": padded, "attn_implementation": getattr(tm.config, "_attn_implementation", None),
         "threads": torch.get_num_threads(), **ct.summary()}
  return row, emb


def numpy_topk(q, d, k, chunk=64):
  import numpy as np  # pylint: disable=g-import-not-at-top
  scores = np.empty((len(q), k), np.float32)
  idx = np.empty((len(q), k), np.int64)
  for s in range(0, len(q), chunk):
    sc = q[s:s + chunk] @ d.T
    part = np.argpartition(-sc, k - 1, axis=1)[:, :k]
    ps = np.take_along_axis(sc, part, axis=1)
    o = np.argsort(-ps, axis=1, kind="stable")
    scores[s:s + chunk] = np.take_along_axis(ps, o, axis=1)
    idx[s:s + chunk] = np.take_along_axis(part, o, axis=1)
  return scores, idx


def search_one(name, method, fn, d, q, args, log=print):
  with C.PeakRSS() as mem:
    t = time.perf_counter()
    result = fn()  # first call (compiles for jax)
    first = time.perf_counter() - t
    reps = C.repeats_for(first, args.search_budget, 1, 5)
    with C.Contention() as cont:
      times = C.time_calls(fn, reps)
  st = C.stats(times)
  log(f"  {name:8s} {method:18s} {st['median_s']:8.3f} s  ({len(q) / st['median_s']:.0f} "
      f"queries/s), peak extra {(mem.peak - mem.start) / MB:.0f} MB", flush=True)
  return {"corpus": name, "docs": len(d), "queries": len(q), "method": method,
          "first_call_s": first, "median_s": st["median_s"], "n": st["n"],
          "queries_per_s": len(q) / st["median_s"],
          "gflops_per_s": 2.0 * len(q) * len(d) * d.shape[1] / st["median_s"] / 1e9,
          "rss_start_mb": mem.start / MB, "peak_extra_mb": (mem.peak - mem.start) / MB,
          **cont.summary()}, result


def big_corpus(args):
  import numpy as np  # pylint: disable=g-import-not-at-top
  big = np.random.default_rng(1).standard_normal((args.big, DIM), np.float32)
  big /= np.linalg.norm(big, axis=1, keepdims=True)
  return big


def big_name(args):
  return f"{args.big // 1000}k" if args.big < 10**6 else f"{args.big // 10**6}M"


def baselines_worker(args):
  """Child process: PyTorch encoding and numpy brute-force search (no JAX in this process)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  payload = {}
  if args.encode:
    print("encoding with transformers/PyTorch (separate process):", flush=True)
    row, emb = encode_torch(args)
    np.save(args.worker_out + ".torch_emb.npy", emb)
    payload["torch_row"] = row
  with np.load(args.worker_out + ".in.npz") as z:
    q, afriqa = z["queries"], z["afriqa"]
  print("numpy brute-force search (separate process):", flush=True)
  rows, idx = [], {}
  r, (_, i1) = search_one("afriqa", "numpy brute force", lambda: numpy_topk(q, afriqa, args.top_k),
                          afriqa, q, args)
  rows.append(r)
  big = big_corpus(args)
  r, (_, i2) = search_one(big_name(args), "numpy brute force",
                          lambda: numpy_topk(q, big, args.top_k), big, q, args)
  rows.append(r)
  np.savez(args.worker_out + ".idx.npz", afriqa=i1, big=i2)
  payload["search_rows"] = rows
  payload["maxrss_mb"] = C.maxrss_bytes() / MB
  C.worker_done(args, payload)


def main():
  p = C.parser("eval", __doc__)
  p.add_argument("--limit", type=int, default=None, help="passages to encode (0 = all 5,413)")
  p.add_argument("--max-len", type=int, default=256)
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--max-tokens", type=int, default=None,
                 help="padded tokens per JAX batch (default: the evaluator's; 0 = no limit)")
  p.add_argument("--queries", type=int, default=1000)
  p.add_argument("--top-k", type=int, default=100)
  p.add_argument("--big", type=int, default=None, help="synthetic corpus size (default 1M)")
  p.add_argument("--search-budget", type=float, default=None, help="timed seconds per search")
  p.add_argument("--no-encode", dest="encode", action="store_false")
  args = p.parse_args()
  q_ = args.quick
  args.limit = args.limit if args.limit is not None else (256 if q_ else 0)
  args.big = args.big or (100_000 if q_ else 1_000_000)
  args.search_budget = args.search_budget or (1.0 if q_ else 10.0)

  if args.worker == "baselines":
    baselines_worker(args)
    return

  out = C.header(args, "eval")
  out["load"] = C.wait_for_quiet(args)
  import numpy as np  # pylint: disable=g-import-not-at-top
  import jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from optical_jax import retrieval  # pylint: disable=g-import-not-at-top
  out["machine"] = C.machine_info()
  out["settings"] = {k: getattr(args, k) for k in ("limit", "max_len", "batch_size", "queries",
                                                   "top_k", "big", "search_budget")}
  print(f"machine: {out['machine']['cpu_model']}, {out['machine']['cpu_cores']} cores; "
        f"load {out['load']['at_start']}")
  rng = np.random.default_rng(0)
  if args.encode:
    print("encoding the AfriQA corpus with all-MiniLM-L6-v2 (JAX):", flush=True)
    jax_row, info, corpus_emb = encode_jax(args)
  else:
    corpus_emb = rng.standard_normal((5413, DIM), np.float32)
    corpus_emb /= np.linalg.norm(corpus_emb, axis=1, keepdims=True)
  corpus_emb = np.ascontiguousarray(corpus_emb, np.float32)
  queries = rng.standard_normal((args.queries, DIM), np.float32)
  queries /= np.linalg.norm(queries, axis=1, keepdims=True)

  # PyTorch encoding and numpy search run in a fresh process (see _common.run_worker).
  import tempfile, subprocess, json, shutil  # pylint: disable=g-import-not-at-top,multiple-imports
  tmp = tempfile.mkdtemp(prefix="bench-eval-")
  base = os.path.join(tmp, "w.json")
  np.savez(base + ".in.npz", queries=queries, afriqa=corpus_emb)
  subprocess.run([sys.executable, os.path.abspath(__file__)] + sys.argv[1:] +
                 ["--no-wait", "--worker", "baselines", "--worker-out", base], check=True)
  with open(base, encoding="utf-8") as f:
    child = json.load(f)
  if args.encode:
    torch_row = child["torch_row"]
    emb_torch = np.load(base + ".torch_emb.npy")
    jax_row["jax_over_torch"] = jax_row["passages_per_s"] / torch_row["passages_per_s"]
    cos = np.sum(corpus_emb * emb_torch, axis=1)
    info["rows"] = [jax_row, torch_row]
    info["agreement"] = {"max_abs_diff": float(np.max(np.abs(corpus_emb - emb_torch))),
                         "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}
    out["encode"] = info
  with np.load(base + ".idx.npz") as z:
    np_idx = {"afriqa": z["afriqa"], "big": z["big"]}
  child_rows = child["search_rows"]

  print(f"exact dense top-{args.top_k} search, {args.queries} queries (JAX):", flush=True)
  rows = []
  k = args.top_k
  for key, name, d in (("afriqa", "afriqa", corpus_emb), ("big", big_name(args), None)):
    if d is None:
      t = time.perf_counter()
      d = big_corpus(args)
      print(f"  (synthetic corpus of {args.big:,} x {DIM} float32 = {d.nbytes / 2**30:.2f} GiB, "
            f"made in {time.perf_counter() - t:.1f} s)")
    r, (_, idx) = search_one(name, "jax exact_search",
                             lambda d=d: retrieval.exact_search(queries, d, k), d, queries, args)
    overlap = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(idx, np_idx[key])]))
    r["topk_overlap_with_numpy"] = overlap
    rows.append(r)
    nr = next(c for c in child_rows if c["corpus"] == name)
    nr["topk_overlap_with_numpy"] = overlap
    rows.append(nr)
    r["jax_over_numpy"] = nr["median_s"] / r["median_s"]
    del d
  shutil.rmtree(tmp, ignore_errors=True)
  out["search"] = rows
  out["maxrss_mb"] = {"jax_process": C.maxrss_bytes() / MB, "baseline_process": child["maxrss_mb"]}
  out["load"]["at_end"] = C.load_avg()
  print()
  if args.encode:
    print(C.table(out["encode"]["rows"], ["framework", "passages", "seconds", "passages_per_s",
                                          "tokens_per_s", "padded_tokens", "jax_over_torch",
                                          "compile_s", "load1", "others_cores"]))
    a = out["encode"]["agreement"]
    print(f"embeddings jax vs torch: max abs diff {a['max_abs_diff']:.2e}, min cosine "
          f"{a['min_cosine']:.6f}\n")
  print(C.table(rows, ["corpus", "docs", "method", "median_s", "n", "queries_per_s", "gflops_per_s",
                       "jax_over_numpy", "first_call_s", "peak_extra_mb", "topk_overlap_with_numpy",
                       "load1", "others_cores"]))
  print(f"peak RSS (ru_maxrss): JAX process {out['maxrss_mb']['jax_process']:.0f} MB, "
        f"baseline process {out['maxrss_mb']['baseline_process']:.0f} MB")
  C.write(args.out or C.default_out("eval", q_), out)


if __name__ == "__main__":
  main()
