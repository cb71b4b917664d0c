"""What the cache integrity contract costs (optical_jax.array_cache): checksums against the work an entry saves.

    python benchmarks/caches.py           # 1,024 English rows of the swa bitext
    python benchmarks/caches.py --quick   # 256 rows

Two caches of a distillation run, on real data (the swa bitext of
`configs.common.bitext_sources`, the multilingual-e5-small teacher):
  * the teacher-token cache (`teacher_cache`, float16: the largest entries, 59 MiB for
    the swa bitext), whose work is the teacher's forward pass over the English rows;
  * the token cache (`data.pipeline.tokenize_texts`), whose work is tokenising them.
For each: the work (computing the entry), writing it with the contract (`array_cache.store`:
sha256 while writing, manifest, atomic rename) against plain `np.save`, and reading it
verified (`array_cache.load`, which reads every byte once for the checksum) against plain
`np.load`, both read in full. `checksum_pct`: hashing the entry's bytes twice (written,
read) as a share of the work (the issue's target: under 2%); `overhead_pct`: all the
contract's extra write and read time (manifest, fsync, rename, verification) as a share
of the work, which for tiny entries is mostly a fixed few milliseconds of fsync. Entry sizes grow with the rows
like the work does, so the share does not depend on `--rows`. Each file operation is
timed `--repeats` times (median), with the page cache warm as in a real run.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _common as C  # noqa: E402  pylint: disable=g-import-not-at-top


def _median_time(fn, repeats):
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return sorted(times)[len(times) // 2]


def _io_row(name, arrays, work_s, repeats):
  """Plain vs contract write and read times of `arrays`; the overhead vs `work_s`."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from optical_jax import array_cache  # pylint: disable=g-import-not-at-top
  tmp = tempfile.mkdtemp(prefix="bench-caches-")
  try:
    plain_dir = os.path.join(tmp, "plain")
    os.makedirs(plain_dir)

    def save_plain():
      for k, a in arrays.items():
        np.save(os.path.join(plain_dir, f"{k}.npy"), a)

    def read_full(values):
      return sum(float(np.asarray(v).ravel()[-1]) for v in values)

    def load_plain():
      read_full([np.load(os.path.join(plain_dir, f"{k}.npy"), mmap_mode="r") for k in arrays])

    n = [0]

    def store():
      n[0] += 1
      array_cache.store(tmp, name, f"k{n[0]}", arrays)

    def load():
      hit = array_cache.load(tmp, name, "k1", mmap=True)
      assert hit is not None
      read_full(hit[0].values())

    save_s = _median_time(save_plain, repeats)
    store_s = _median_time(store, repeats)
    load_plain_s = _median_time(load_plain, repeats)
    load_s = _median_time(load, repeats)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  import hashlib  # pylint: disable=g-import-not-at-top

  def checksums():   # what the contract hashes: each array's bytes, once written, once read
    for a in arrays.values():
      hashlib.sha256(np.ascontiguousarray(a).data).hexdigest()

  sha_s = 2 * _median_time(checksums, repeats)
  mib = sum(a.nbytes for a in arrays.values()) / 2**20
  extra = max(store_s - save_s, 0.0) + max(load_s - load_plain_s, 0.0)
  return {"cache": name, "entry_mib": mib, "work_s": work_s, "np_save_s": save_s,
          "store_s": store_s, "np_load_s": load_plain_s, "load_verified_s": load_s,
          "sha256_s": sha_s, "checksum_pct": 100.0 * sha_s / work_s,
          "overhead_s": extra, "overhead_pct": 100.0 * extra / work_s}


def main():
  p = C.parser("caches", __doc__)
  p.add_argument("--rows", type=int, default=None, help="English rows (default 1024; quick 256)")
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args()
  args.rows = args.rows or (256 if args.quick else 1024)
  out = C.header(args, "caches")
  out["load"] = C.wait_for_quiet(args)
  out["machine"] = C.machine_info()
  out["settings"] = {"rows": args.rows, "repeats": args.repeats}

  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import common  # pylint: disable=g-import-not-at-top
  from optical_jax import models, teacher_cache  # pylint: disable=g-import-not-at-top
  from optical_jax.data import bitext as bitext_lib, pipeline  # pylint: disable=g-import-not-at-top

  teacher = models.load_model(common.e5(), where="teacher")
  mixture = bitext_lib.load_mixture(dict(sources=common.bitext_sources("swa"), ratios=None))
  pairs = [p for s in mixture.sources for p in zip(s.foreign, s.english)][:args.rows]
  data = bitext_lib.mix([bitext_lib.Bitext("swa", [f for f, _ in pairs], [e for _, e in pairs])])
  english = [e for _, e in pairs]
  tok = teacher.tokenizer
  max_len = teacher.max_len("query")

  t = time.perf_counter()
  ragged = pipeline.tokenize_texts(english, tok, max_len, teacher.prefix("query"))
  tokenize_s = time.perf_counter() - t
  cfg = pipeline.PipelineConfig(global_batch=32, src_max_length=max_len, tgt_max_length=max_len,
                                buckets=(16, 32, 64), src_prefix=teacher.prefix("query"),
                                tgt_prefix=teacher.prefix("query"), remainder="drop", seed=0)
  batches = pipeline.BitextBatches(data, tok, tok, cfg)
  teacher_cache.compute(teacher, batches, "float16", log=lambda *_: None)   # compile first
  t = time.perf_counter()
  vectors = teacher_cache.compute(teacher, batches, "float16", log=lambda *_: None)
  teacher_s = time.perf_counter() - t

  rows = [_io_row("teacher", {"flat": np.asarray(vectors.flat), "offsets": vectors.offsets},
                  teacher_s, args.repeats),
          _io_row("tok", {"flat": ragged.flat, "offsets": ragged.offsets}, tokenize_s,
                  args.repeats)]
  out["rows"] = rows
  print(C.table(rows, ["cache", "entry_mib", "work_s", "np_save_s", "store_s", "np_load_s",
                       "load_verified_s", "sha256_s", "checksum_pct", "overhead_s",
                       "overhead_pct"]))
  C.write(args.out or C.default_out("caches", args.quick), out)


if __name__ == "__main__":
  main()
