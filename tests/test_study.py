"""Studies (optical_jax.study, study.py): grid and shards, skipping finished cells, aggregation
into the tidy CSV / summary / plots, the study configs, and the command line."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from optical_jax import study
from optical_jax.study import rows as study_rows
from optical_jax.errors import InputError

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


@pytest.fixture(autouse=True)
def _need_tokenizer(minilm_dir):
  del minilm_dir  # tiny encoders use MiniLM's tokenizer


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """One token / embedding cache for every smoke study of this file."""
  return str(tmp_path_factory.mktemp("study_cache"))


def smoke(cache_dir, extra=""):
  from configs.studies import data_amount  # pylint: disable=g-import-not-at-top
  return data_amount.get_config(f"smoke,cache_dir={cache_dir}" + (f",{extra}" if extra else ""))


def _quiet(_):
  pass


def _csv(path):
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def test_grid_is_seed_major_and_shards_cover_it_exactly_once(cache):
  c = smoke(cache)
  cells = study.grid(c)
  keys = [x.key for x in cells]
  assert keys[0] == "reference,lang=swa"
  assert keys[1:5] == ["lang=swa,amount=16,loss=sentence,seed=0", "lang=swa,amount=16,loss=ot,seed=0",
                       "lang=swa,amount=48,loss=sentence,seed=0", "lang=swa,amount=48,loss=ot,seed=0"]
  assert len(keys) == 1 + 2 * 2 * 2 and len(set(keys)) == len(keys)
  for n in (1, 2, 3, 5, 12):
    parts = [study.shard_cells(cells, (i, n)) for i in range(n)]
    flat = [x.key for p in parts for x in p]
    assert sorted(flat) == sorted(keys)
  assert study.parse_shard("1/4") == (1, 4)
  for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
    with pytest.raises(InputError, match="--shard must be i/n"):
      study.parse_shard(bad)


def test_study_config_errors_are_one_line(cache):
  c = smoke(cache)
  c.unlock()
  c.axes.loss = ("ot", "ot")
  with pytest.raises(InputError, match="repeats a value"):
    study.grid(c)
  c = smoke(cache)
  c.unlock()
  c.compare = (("loss=ot", "loss=hard"),)
  with pytest.raises(InputError, match="'hard' is not a value of axis 'loss'"):
    study.grid(c)
  c = smoke(cache)
  c.unlock()
  c.axes.loss = ("ot", "bad name")
  with pytest.raises(InputError, match="must be a string or number made of"):
    study.grid(c)


def test_shards_aggregate_rerun_resume_in_process(tmp_path, cache):
  """Two shards then --aggregate; a run of the whole grid afterwards trains nothing and
  writes the same CSV; a cell whose done.json is gone (a study killed before it finished)
  is the only one rerun; a finished cell with another config stops the run with the
  difference. (Independent one-process and sharded trainings giving the same CSV: the
  slow command-line test below.)"""
  c = smoke(cache, "amounts=16,seeds=1")
  work = tmp_path / "w"
  ran = []
  for i in range(2):
    part = study.run(c, str(work), shard=(i, 2), log=_quiet)
    assert not part.aggregated
    ran += part.ran
  assert sorted(ran) == sorted(x.key for x in study.grid(c)) and len(ran) == 3
  study.aggregate(c, str(work), log=_quiet)
  rows = _csv(work / "results.csv")
  assert set(rows[0]) == {"study", "cell", "kind", "lang", "amount", "loss", "seed", "system",
                          "dataset", "metric", "value", "num_queries"}
  datasets = {x["dataset"] for x in rows}
  assert datasets in ({"afriqa-swa", "tatoeba-swa"}, {"afriqa-swa"})  # Tatoeba: ../shared/data
  assert {x["metric"] for x in rows} == {"P@1", "P@5", "R@10", "nDCG@10", "AP"}
  trained = [x for x in rows if x["kind"] == "trained"]
  assert {x["system"] for x in trained} == {"student"}
  assert len(trained) == 2 * 5 * len(datasets)
  refs = {x["system"] for x in rows if x["kind"] == "reference"}
  assert refs == {"teacher-zeroshot", "teacher-oracle"}
  summary = (work / "summary.md").read_text(encoding="utf-8")
  assert "## afriqa-swa" in summary and "## Paired comparisons" in summary
  assert "| loss=ot | loss=sentence | afriqa-swa | lang=swa,amount=16 | nDCG@10 |" in summary
  assert os.listdir(work / "plots") and all(p.endswith(".png") for p in os.listdir(work / "plots"))
  cell = json.loads((work / "cells" / "lang=swa,amount=16,loss=ot,seed=0" / "cell.json").read_text())
  assert cell["resolved"]["train"]["loss"]["loss"] == "ot"
  assert cell["resolved"]["train"]["data"]["bitext"]["sources"][0]["take"] == 16
  assert cell["resolved"]["evals"]["afriqa-swa"]["dataset"]["queries"].endswith("swa.test.jsonl")
  csv_text = (work / "results.csv").read_text()

  again = study.run(c, str(work), log=_quiet)
  assert again.ran == [] and len(again.skipped) == 3 and again.aggregated
  assert (work / "results.csv").read_text() == csv_text

  # A field added to the library after a cell finished, left at its default, is no change.
  cell_dir = work / "cells" / "lang=swa,amount=16,loss=ot,seed=0"
  saved = json.loads((cell_dir / "cell.json").read_text())
  del saved["resolved"]["train"]["data"]["code_switch"]
  # ... and neither are fields that change how it ran, not what it computed.
  saved["resolved"]["evals"]["afriqa-swa"]["batch_size"] = 7
  saved["resolved"]["train"]["train"]["log_every"] = 3
  (cell_dir / "cell.json").write_text(json.dumps(saved))
  done = json.loads((cell_dir / "done.json").read_text())
  (cell_dir / "done.json").write_text(json.dumps(dict(done, fingerprint="older")))
  assert study.run(c, str(work), log=_quiet).ran == []

  victim = "lang=swa,amount=16,loss=sentence,seed=0"
  os.remove(work / "cells" / victim / "done.json")
  resumed = study.run(c, str(work), log=_quiet)
  assert resumed.ran == [victim]
  assert (work / "results.csv").read_text() == csv_text

  changed = smoke(cache, "amounts=16,seeds=1,steps=5")
  with pytest.raises(InputError) as err:
    study.run(changed, str(work), log=_quiet)
  assert "finished with another config" in str(err.value)
  assert "train.train.steps: 4 -> 5" in str(err.value) and "\n" not in str(err.value)
  with pytest.raises(InputError, match="finished with another config"):
    study.aggregate(changed, str(work), log=_quiet)


@pytest.mark.slow
def test_archive_carries_finished_cells_to_new_workdirs(tmp_path, cache):
  """`--archive`: finished cells' records (configs and metrics, checksummed, the same
  bytes when written again) restore a grid in a new workdir without training, for a run
  or an aggregation alone, with byte-identical results; a damaged record or one made
  with other configs is named in one line and not used."""
  import gzip  # pylint: disable=g-import-not-at-top
  from optical_jax import cell_archive  # pylint: disable=g-import-not-at-top
  c = smoke(cache, "amounts=16,seeds=1")
  arch = tmp_path / "cells"
  keys = sorted(x.key for x in study.grid(c))
  first = study.run(c, str(tmp_path / "a"), log=_quiet, archive=str(arch))
  assert sorted(first.ran) == keys
  assert sorted(os.listdir(arch)) == sorted(k + cell_archive.SUFFIX for k in keys)
  blobs = {n: (arch / n).read_bytes() for n in os.listdir(arch)}
  seen = []
  second = study.run(c, str(tmp_path / "b"), log=seen.append, archive=str(arch))
  assert second.ran == [] and sorted(second.skipped) == keys
  assert any("3 finished cell(s) restored" in s for s in seen)
  assert {n: (arch / n).read_bytes() for n in os.listdir(arch)} == blobs
  for name in ("results.csv", "per_query.csv.gz"):
    assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "a" / name).read_bytes()
  study.aggregate(c, str(tmp_path / "c"), log=_quiet, archive=str(arch))
  assert (tmp_path / "c" / "results.csv").read_bytes() == (tmp_path / "a" / "results.csv").read_bytes()

  key = "lang=swa,amount=16,loss=ot,seed=0"
  plan = study.plan_cell(c, next(x for x in study.grid(c) if x.key == key), str(tmp_path / "d"))
  record = json.loads(gzip.decompress(blobs[key + cell_archive.SUFFIX]))
  metrics_file = next(k for k in record["files"] if k.startswith("eval/"))
  record_files = json.loads(json.dumps(record["files"]))
  record["files"][metrics_file]["aggregate"]["nDCG@10"] = 1.0   # edited, checksum kept
  (arch / (key + cell_archive.SUFFIX)).write_bytes(cell_archive.encode(record))
  seen.clear()
  assert study.restore_cells(c, [plan], str(arch), seen.append) == []
  assert len(seen) == 1 and "checksum mismatch" in seen[0] and key in seen[0]
  (arch / (key + cell_archive.SUFFIX)).write_bytes(blobs[key + cell_archive.SUFFIX][:40])
  seen.clear()
  assert study.restore_cells(c, [plan], str(arch), seen.append) == []
  assert len(seen) == 1 and "not a readable cell record" in seen[0]
  record = json.loads(gzip.decompress(blobs[key + cell_archive.SUFFIX]))
  record["files"]["../outside.json"] = {}
  record["checksum"] = cell_archive.fingerprint.digest(record["files"], n=None)
  assert "leaves the cell directory" in cell_archive.problem(record)
  (arch / (key + cell_archive.SUFFIX)).write_bytes(blobs[key + cell_archive.SUFFIX])
  changed = smoke(cache, "amounts=16,seeds=1,steps=5")
  other = study.plan_cell(changed, next(x for x in study.grid(changed) if x.key == key),
                          str(tmp_path / "d"))
  seen.clear()
  assert study.restore_cells(changed, [other], str(arch), seen.append) == []
  assert len(seen) == 1 and "train.train.steps: 4 -> 5" in seen[0] and "reruns" in seen[0]
  assert study.restore_cells(c, [plan], str(arch), _quiet) == [key]
  assert study.cell_status(plan) == "done"
  # A finished cell whose metrics changed after it finished counts as unfinished (a
  # warning; status checks only read), and its archive record restores it.
  metrics_path = os.path.join(plan.directory, metrics_file)
  changed_metrics = json.loads(open(metrics_path).read())
  changed_metrics["aggregate"]["nDCG@10"] = 0.0
  with open(metrics_path, "w") as f:
    json.dump(changed_metrics, f)
  with pytest.warns(study.CellWarning, match="does not match the checksum"):
    assert study.cell_status(plan) == "todo"
  assert os.path.exists(metrics_path)
  assert study.restore_cells(c, [plan], str(arch), _quiet) == [key]
  assert study.cell_status(plan) == "done"
  # Run without an archive, the damaged cell is redone under its lock (its metrics and
  # done.json dropped first): the same metrics as before.
  with open(metrics_path, "w") as f:
    json.dump(changed_metrics, f)
  seen.clear()
  with pytest.warns(study.CellWarning):
    done = study.run_cell(c, plan, seen.append)
  assert json.loads(open(metrics_path).read())["aggregate"] == record_files[metrics_file]["aggregate"]
  assert study.cell_status(plan) == "done"
  # A cell another process finished after this one planned it is not redone.
  seen.clear()
  done = study.run_cell(c, plan, seen.append)
  assert done["key"] == key and seen == [f"[{key}] finished by another process; not redone"]


@pytest.mark.slow
def test_partial_aggregate_warns_and_summarises_what_finished(tmp_path, cache):
  c = smoke(cache, "amounts=16,seeds=1,losses=ot")
  seen = []
  study.run(c, str(tmp_path), shard=(1, 2), log=seen.append)
  assert any("run study.py with --aggregate" in s for s in seen)
  seen.clear()
  agg = study.aggregate(c, str(tmp_path), log=seen.append)
  assert agg.finished == 1 and agg.total == 2
  assert any("1 of 2 cells are not finished" in s for s in seen)
  assert "1 of 2 cells finished" in (tmp_path / "summary.md").read_text()
  with pytest.raises(InputError, match="study workdir not found"):
    study.aggregate(c, str(tmp_path / "nowhere"), log=_quiet)
  (tmp_path / "empty").mkdir()
  with pytest.raises(InputError, match="none of its 2 cells has finished"):
    study.aggregate(c, str(tmp_path / "empty"), log=_quiet)
  assert not (tmp_path / "empty" / "results.csv").exists()


@pytest.mark.parametrize("name,scale,cells", [("data_amount", "smoke", 9), ("data_amount", "cpu", 13),
                                              ("data_amount", "full", 4 + 4 * 6 * 2 * 5),
                                              ("language_ratio", "smoke", 4),
                                              ("language_ratio", "cpu", 6),
                                              ("language_ratio", "full", 16),
                                              ("code_switch", "smoke", 3),
                                              ("code_switch", "cpu", 9),
                                              ("code_switch", "full", 7 + 7 * 4 * 2 * 3),
                                              ("adversarial", "smoke", 3),
                                              ("adversarial", "cpu", 4),
                                              ("adversarial", "full", 1 + 5 * 2 * 3),
                                              ("ot_variants", "smoke", 1 + 3),
                                              ("ot_variants", "cpu", 2 + 2 * 4 * 2),
                                              ("ot_variants", "full", 12 + 3 * 4 * 8 * 3)])
def test_study_configs_build(shared_data, name, scale, cells):
  """Every scale of both studies builds its grid, one cell's train config and its evals."""
  import importlib  # pylint: disable=g-import-not-at-top
  del shared_data
  from optical_jax.config import base_config  # pylint: disable=g-import-not-at-top
  mod = importlib.import_module(f"configs.studies.{name}")
  c = mod.get_config(scale)
  grid = study.grid(c)
  assert len(grid) == cells
  cell = grid[-1]
  train = c.train(cell.values)
  assert set(train.keys()) <= set(base_config().keys())
  assert train.data.bitext.sources and train.train.steps > 0
  evals = c.evals(cell.values)
  assert all(e.dataset.kind in ("beir", "lareqa", "bitext") for e in evals.values())
  if name == "language_ratio":
    assert any(k.startswith("xquad-r-") for k in evals) and any(k.startswith("afriqa-") for k in evals)
    assert abs(sum(train.data.bitext.ratios) - 1) < 1e-9
    assert train.loss.loss == "ot"   # the study's loss, not the shipped configs' default
  if name == "adversarial":  # native and English questions of each language, and their gap
    assert train.adversarial.weight == max(c.axes.weight) > 0
    assert evals["xquad-r-el.en"].dataset.query_field == "text_en"
    assert ("gap-ell", "xquad-r-el.en", "xquad-r-el") in c.derived
  if name == "ot_variants":  # loss arms and pooled tests over languages
    assert "ot-ranking" in c.axes.loss and train.loss.loss in ("ot+ranking", "barycentric",
                                                                "ot")
    if len(c.axes.lang) > 1:
      assert tuple(c.pool_axes) == ("lang",)
      assert ("loss=ot", "loss=ranking") in c.compare
  if name == "code_switch":  # the last cell switches at the largest rate, with a real lexicon
    assert train.data.code_switch.rate == max(c.axes.rate) > 0
    assert os.path.isfile(train.data.code_switch.dictionary)
    assert all("R@1" in e.measures and "R@100" in e.measures for e in evals.values())
  with pytest.raises(ValueError, match="study scale must be one of"):
    mod.get_config("huge")


def test_language_ratio_mixture_shares(shared_data):
  del shared_data
  from configs.studies import language_ratio  # pylint: disable=g-import-not-at-top
  sources, ratios = language_ratio.mixture(("swa", "hau"), ("ell",), 0.25)
  low = sum(r for s, r in zip(sources, ratios) if not s["label"].startswith("ntrex-ell"))
  assert low == pytest.approx(0.25) and sum(ratios) == pytest.approx(1.0)
  only_high, r = language_ratio.mixture(("swa",), ("ell", "hin"), 0.0)
  assert [s["label"] for s in only_high] == ["ntrex-ell", "ntrex-hin"] and r == (0.5, 0.5)


def _study_cmd(workdir, *extra, config="configs/studies/data_amount.py:smoke"):
  return [sys.executable, os.path.join(ROOT, "study.py"), "--config", os.path.join(ROOT, config),
          "--workdir", str(workdir), *extra]


def _env():
  env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  return env


def test_cli_bad_shard_is_one_line(tmp_path):
  r = subprocess.run(_study_cmd(tmp_path / "w", "--shard=2/2"), cwd=ROOT, env=_env(),
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1] == \
      "error: --shard must be i/n with 0 <= i < n (e.g. 0/4), got '2/2'"


@pytest.mark.slow
def test_cli_acceptance_smoke_rerun_shards_aggregate(tmp_path):
  """The issue's acceptance run, as users type it (each run is a fresh process)."""
  one = tmp_path / "one"
  r = subprocess.run(_study_cmd(one), cwd=ROOT, env=_env(), capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "done: ran 9 cells, 0 already finished" in r.stdout
  assert (one / "results.csv").exists() and (one / "summary.md").exists()
  assert [p for p in os.listdir(one / "plots") if p.endswith(".png")]
  assert "9/9 cells done (100%)" in r.stderr and "ETA 00:00" in r.stderr
  r = subprocess.run(_study_cmd(one), cwd=ROOT, env=_env(), capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0 and "done: ran 0 cells, 9 already finished" in r.stdout
  assert "distill:" not in r.stderr   # nothing trained
  two = tmp_path / "two"
  procs = [subprocess.Popen(_study_cmd(two, f"--shard={i}/2"), cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=900) for p in procs]
  assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
  ran = [int(o[0].split("done: ran ")[1].split()[0]) for o in outs]
  assert ran == [5, 4]
  done = sorted(os.listdir(two / "cells"))
  assert done == sorted(os.listdir(one / "cells")) and len(done) == 9
  r = subprocess.run(_study_cmd(two, "--aggregate"), cwd=ROOT, env=_env(), capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  assert (two / "results.csv").read_text() == (one / "results.csv").read_text()


@pytest.mark.slow
def test_language_ratio_smoke_writes_one_curve_per_dataset(tmp_path, cache, shared_data):
  """Study (b) at smoke scale: a figure per measure with a curve per dataset."""
  del shared_data
  from configs.studies import language_ratio  # pylint: disable=g-import-not-at-top
  c = language_ratio.get_config(f"smoke,cache_dir={cache}")
  r = study.run(c, str(tmp_path), log=_quiet)
  assert len(r.ran) == 4
  rows = _csv(tmp_path / "results.csv")
  assert {x["dataset"] for x in rows} == {"afriqa-swa", "xquad-r-el"}
  assert {x["ratio"] for x in rows if x["kind"] == "trained"} == {"0.0", "0.5", "1.0"}
  assert os.listdir(tmp_path / "plots") == ["nDCG_10.png"]
  summary = (tmp_path / "summary.md").read_text()
  assert "| ratio=0.5 | ratio=1.0 | xquad-r-el |" in summary


@pytest.mark.slow
def test_code_switch_smoke_compares_switched_with_plain(tmp_path, cache, shared_data):
  """Study (c) at smoke scale: rate 0 and 0.5 trained, recall@K reported and compared."""
  del shared_data
  from configs.studies import code_switch  # pylint: disable=g-import-not-at-top
  c = code_switch.get_config(f"smoke,cache_dir={cache}")
  r = study.run(c, str(tmp_path), log=_quiet)
  assert len(r.ran) == 3
  rows = _csv(tmp_path / "results.csv")
  assert {"R@1", "R@5", "R@10", "R@100"} <= {x["metric"] for x in rows}
  cell = json.loads((tmp_path / "cells" / "lang=swa,rate=0.5,loss=ot,seed=0" / "cell.json").read_text())
  assert cell["resolved"]["train"]["data"]["code_switch"]["rate"] == 0.5
  assert "| rate=0.5 | rate=0.0 | afriqa-swa |" in (tmp_path / "summary.md").read_text()


def test_derived_dataset_is_the_per_query_difference(tmp_path):
  """`study.derived`: per-query A - B over shared queries, in the CSV and the summary."""
  c = study.default_config()
  c.derived = (("gap", "a", "b"),)
  results = {("a", "s"): {"per_query": {"P@1": {"q1": 1.0, "q2": 0.0, "q3": 1.0}}},
             ("b", "s"): {"per_query": {"P@1": {"q1": 0.0, "q2": 0.0}}}}
  got = study_rows._derived(c, results)  # pylint: disable=protected-access
  assert got == {("gap", "s"): {"per_query": {"P@1": {"q1": 1.0, "q2": 0.0}},
                                "aggregate": {"P@1": 0.5}, "num_queries": 2}}
  c.derived = (("gap", "a"),)
  c.axes.seed = (0,)
  c.train = c.evals = lambda v: {}
  with pytest.raises(InputError, match="derived entries"):
    study.grid(c)


@pytest.mark.slow
def test_adversarial_smoke_reports_transfer_gaps(tmp_path, cache, shared_data):
  """Study (d) at smoke scale: weight 0 and 0.1, native/English questions and their gap."""
  del shared_data
  from configs.studies import adversarial  # pylint: disable=g-import-not-at-top
  c = adversarial.get_config(f"smoke,cache_dir={cache}")
  r = study.run(c, str(tmp_path), log=_quiet)
  assert len(r.ran) == 3
  rows = _csv(tmp_path / "results.csv")
  assert {"gap-swa", "gap-ell", "xquad-r-el.en", "afriqa-swa"} <= {x["dataset"] for x in rows}
  by = {(x["cell"], x["dataset"], x["metric"]): float(x["value"]) for x in rows}
  key = "weight=0.1,loss=ot,seed=0"
  assert by[(key, "gap-ell", "P@1")] == pytest.approx(
      by[(key, "xquad-r-el.en", "P@1")] - by[(key, "xquad-r-el", "P@1")], abs=1e-9)
  assert "| weight=0.1 | weight=0.0 | gap-swa |" in (tmp_path / "summary.md").read_text()


def _selection_study(tmp_path):
  """lang x loss x seed over the tiny config; test files test.jsonl, selection dev.jsonl."""
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from optical_jax import evaluator  # pylint: disable=g-import-not-at-top

  def evals(split):
    def make(v):
      e = evaluator.default_config()
      e.dataset.corpus = str(tmp_path / "corpus.jsonl")
      e.dataset.queries = str(tmp_path / f"{v['lang']}.{split}.jsonl")
      e.dataset.qrels = str(tmp_path / f"{v['lang']}.{split}.tsv")
      e.measures = ("nDCG@10",)
      return {f"afriqa-{v['lang']}" + ("-dev" if split == "dev" else ""): e}
    return make

  c = study.default_config()
  c.name = "sel"
  c.axes.lang = ("swa", "hau")
  c.axes.loss = ("sentence", "ot", "ranking")
  c.axes.seed = (0, 1)
  c.train = lambda v: tiny.get_config("")
  c.evals = evals("test")
  c.compare = (("loss=ot", "loss=sentence"), ("loss=ranking", "loss=sentence"),
               ("loss=ot", "loss=ranking"))
  c.pool_axes = ("lang",)
  c.measures = ("nDCG@10",)
  c.select.axis = "loss"
  c.select.keep = ("sentence",)
  c.select.axes.lang = ("hau",)
  c.select.axes.seed = (0,)
  c.select.evals = evals("dev")
  return c


def _finish(config, workdir, cell, score_of):
  """Writes a finished cell as the runner would, with per-query values from score_of."""
  plan = study.plan_cell(config, cell, str(workdir))
  datasets = {}
  for name in plan.evals:
    rel = os.path.join("eval", name, "metrics", "student.json")
    pq = {f"q{i}": score_of(cell, i) for i in range(10)}
    path = os.path.join(plan.directory, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      json.dump({"per_query": {"nDCG@10": pq},
                 "aggregate": {"nDCG@10": float(np.mean(list(pq.values())))},
                 "num_queries": 10}, f)
    datasets[name] = {"student": rel}
  with open(os.path.join(plan.directory, "done.json"), "w") as f:
    json.dump({"key": cell.key, "values": cell.values, "reference": False,
               "fingerprint": plan.fingerprint(), "datasets": datasets}, f)


def test_selection_chooses_on_selection_cells_alone(tmp_path):
  """The choice is a function of the selection stage's dev results: test results that
  rank the arms the other way change nothing; the test stage runs the pick and `keep`,
  and its page names the choice."""
  c = _selection_study(tmp_path)
  stage = study.selection_stage(c)
  assert [x.key for x in study.grid(stage)] == [
      "lang=hau,loss=sentence,seed=0", "lang=hau,loss=ot,seed=0", "lang=hau,loss=ranking,seed=0"]
  dev_rank = {"sentence": 0.3, "ot": 0.5, "ranking": 0.4}
  for cell in study.grid(stage):
    _finish(stage, tmp_path / "select", cell,
            lambda cl, i: dev_rank[cl.values["loss"]] + 0.01 * (i % 3))
  with pytest.raises(InputError, match="unfinished"):
    study.choose(c, str(tmp_path / "empty"), log=_quiet)
  only = study.run(c, str(tmp_path), select_only=True, log=_quiet)
  assert only.ran == [] and len(only.skipped) == 3 and not (tmp_path / "cells").exists()
  chosen = study.choose(c, str(tmp_path), log=_quiet)
  assert chosen["chosen"] == "ot" and chosen["keep"] == ["sentence"]
  assert all(".dev." in f for f in chosen["files"]) and len(chosen["files"]) == 2
  assert [x["value"] for x in chosen["candidates"]] == ["sentence", "ot", "ranking"]
  assert chosen["candidates"][1]["score"] == pytest.approx(0.509)
  test = study.test_stage(c, chosen["chosen"])
  assert tuple(test.axes.loss) == ("sentence", "ot") and test.compare == (
      ("loss=ot", "loss=sentence"),)
  # Test results where ranking is best and ot worst: the choice does not move.
  test_rank = {"sentence": 0.5, "ot": 0.1, "ranking": 0.9}
  for pick in ("ranking", "ot"):
    for cell in study.grid(study.test_stage(c, pick)):
      _finish(c, tmp_path, cell,
              lambda cl, i: test_rank[cl.values["loss"]] * (i % 2) + 0.01 * cl.values["seed"])
  again = study.choose(c, str(tmp_path), log=_quiet)
  assert again == chosen
  seen = []
  study.aggregate(c, str(tmp_path), log=seen.append)
  summary = (tmp_path / "summary.md").read_text()
  assert "**loss=ot**" in summary and "loss=ranking" not in summary
  assert any("chose loss=ot" in s for s in seen)
  assert any(s.startswith("### Primary family (1 tests)") and "run Holm p" in s for s in seen)
  assert (tmp_path / "select" / "summary.md").exists()
  assert "| ot | 0.5090 | 1 | lang=hau,seed=0 afriqa-hau-dev: 0.509 |" in (
      tmp_path / "selection.md").read_text()


def test_selection_stage_refuses_test_data_and_leaky_bitext(tmp_path):
  from optical_jax import evaluator  # pylint: disable=g-import-not-at-top
  c = _selection_study(tmp_path)
  c.select.evals = c.evals
  with pytest.raises(InputError, match="reads the test stage's file"):
    study.selection_stage(c)
  c = _selection_study(tmp_path)
  dev = c.select.evals

  def leaky(v):
    t = c.train(v)
    t.data.bitext.sources = [dict(type="jsonl", path=[str(tmp_path / "hau.dev.jsonl")])]
    return t
  c.select.train = leaky
  with pytest.raises(InputError, match="holds its selection queries"):
    study.selection_stage(c)
  c = _selection_study(tmp_path)
  c.select.keep = ("nope",)
  with pytest.raises(InputError, match="select.keep"):
    study.selection_stage(c)
  del dev, evaluator


def test_ot_variants_selection_reads_dev_and_trains_without_it(shared_data):
  """The shipped selection stage: dev qrels of hau and zul, training bitext with the dev
  questions held out (they are the validation pairs), never a test file."""
  from configs.studies import ot_variants  # pylint: disable=g-import-not-at-top
  c = ot_variants.get_config("cpu,settings=e5+minilm,select,langs=swa+hau+yor+zul,"
                             "arms=sentence+ranking+ot+ot-ranking+divergence")
  stage = study.selection_stage(c)
  cells = study.grid(stage)
  assert len(cells) == 2 * 2 * 5 and {x.values["lang"] for x in cells} == {"hau", "zul"}
  for cell in cells[:10:3]:
    plan = study.plan_cell(stage, cell, "")
    (name, e), = plan.evals.items()
    assert name.endswith("-dev") and e.dataset.qrels.endswith(".dev.tsv")
    assert e.dataset.queries.endswith(".dev.jsonl")
    paths = [p for s in plan.train.data.bitext.sources for p in
             (s["path"] if isinstance(s.get("path"), list) else [s.get("path", "")])]
    assert not any(p.endswith(".dev.jsonl") for p in paths)
    assert plan.train.validation.sources[0]["path"] == e.dataset.queries
  assert tuple(study.test_stage(c, "divergence").axes.loss) == (
      "sentence", "ranking", "ot", "ot-ranking", "divergence")
  del shared_data


@pytest.mark.slow
def test_ot_variants_smoke_compares_arms_with_sentence(tmp_path, cache, shared_data):
  """Issue 14's comparison at smoke scale: three loss arms, tests against sentence-level."""
  del shared_data
  from configs.studies import ot_variants  # pylint: disable=g-import-not-at-top
  c = ot_variants.get_config(f"smoke,cache_dir={cache}")
  r = study.run(c, str(tmp_path), log=_quiet)
  assert len(r.ran) == 4
  cell = json.loads((tmp_path / "cells" / "setting=tiny,lang=swa,loss=ot-ranking,seed=0" /
                     "cell.json").read_text())
  assert cell["resolved"]["train"]["loss"]["loss"] == "ot+ranking"
  summary = (tmp_path / "summary.md").read_text()
  assert "| loss=ot-ranking | loss=sentence | afriqa-swa |" in summary


def test_ot_variants_colbert_e5_setting_plans_maxsim_cells(shared_data):
  from configs.studies import ot_variants  # pylint: disable=g-import-not-at-top
  c = ot_variants.get_config("cpu,settings=colbert-e5,langs=swa,arms=sentence+ot-ranking,"
                             "teacher_e5=/t/e5-colbert")
  cells = study.grid(c)
  ref, cell = cells[0], cells[1]
  assert ref.reference and set(study.plan_cell(c, ref, "").references) == {
      "colbert-e5-zeroshot", "colbert-e5-oracle"}
  plan = study.plan_cell(c, cell, "")
  assert plan.train.student.path == "/t/e5-colbert" and plan.train.student.query_prefix == "query: "
  assert plan.evals["afriqa-swa"].scoring == "maxsim"
  del shared_data


def test_decisive_studies_are_ot_variants_grids_that_ask_the_readme_question():
  """Each study docs/decisive.json declares (what scripts/decisive.sh runs) builds, and
  compares OT + ranking with the ranking term pooled over the four languages: a typo
  surfaces here, not hours into the run."""
  from configs.studies import ot_variants  # pylint: disable=g-import-not-at-top
  from optical_jax import report  # pylint: disable=g-import-not-at-top
  root = os.path.join(os.path.dirname(__file__), "..")
  studies = report.decisive_studies(root)
  assert [s["setting"] for s in studies] == ["e5", "colbert-e5", "minilm"]
  for s in studies:
    teacher = ",teacher_e5=/t" if s["setting"] == "colbert-e5" else ""
    c = ot_variants.get_config(f"cpu,langs=swa+hau+yor+zul,settings={s['setting']},"
                               f"seeds={s['seeds']},arms={s['arms']}{teacher}")
    assert set(c.compare) & set(report.QUESTIONS[0][0]), s["setting"]
    assert tuple(c.pool_axes) == ("lang",) and len(c.axes.seed) == s["seeds"]
    assert {"sentence", "ranking", "ot", "ot-ranking"} <= set(c.axes.loss)


def test_ot_variants_sets_each_ot_arm_against_its_own_ranking_term():
  from configs.studies import ot_variants  # pylint: disable=g-import-not-at-top
  c = ot_variants.get_config("cpu,settings=colbert-e5,langs=swa+hau,teacher_e5=/t,arms=sentence+"
                             "ranking+ot+ot-ranking+ranking-maxsim+ot-ranking-maxsim")
  vs_ranking = {a for a, b in c.compare if b != "loss=sentence"}
  assert ("loss=ot-ranking-maxsim", "loss=ranking-maxsim") in c.compare
  assert vs_ranking == {"loss=ot", "loss=ot-ranking", "loss=ot-ranking-maxsim"}
  assert len(c.compare) == 5 + 3
  c = ot_variants.get_config("cpu,settings=colbert,langs=swa,arms=ranking+ot-ranking-maxsim")
  assert c.compare == (("loss=ot-ranking-maxsim", "loss=ranking"),)


def test_a_signal_during_a_cell_stops_the_study_before_the_next(tmp_path, monkeypatch):
  """SIGTERM while a cell evaluates (no trainer guard active) lets that cell finish and
  stops the study with Interrupted (exit 143) before the next cell; a rerun goes on."""
  import signal  # pylint: disable=g-import-not-at-top
  from optical_jax.errors import Interrupted  # pylint: disable=g-import-not-at-top
  from optical_jax.study import runner  # pylint: disable=g-import-not-at-top
  config = _selection_study(tmp_path)
  config.select.axis = ""
  ran = []

  def fake_run_cell(cfg, plan, log):
    del cfg, log
    ran.append(plan.cell.key)
    if len(ran) == 1:
      os.kill(os.getpid(), signal.SIGTERM)      # as if it came during the evaluation
    _finish(config, tmp_path / "w", plan.cell, lambda c, i: 0.5)

  monkeypatch.setattr(runner, "run_cell", fake_run_cell)
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(Interrupted, match="stopped by SIGTERM after cell .*rerun") as e:
    study.run(config, str(tmp_path / "w"), log=_quiet)
  assert e.value.signum == signal.SIGTERM and len(ran) == 1
  assert signal.getsignal(signal.SIGTERM) is before
  monkeypatch.setattr(runner, "run_cell", lambda cfg, plan, log: (
      ran.append(plan.cell.key), _finish(config, tmp_path / "w", plan.cell, lambda c, i: 0.5)))
  study.run(config, str(tmp_path / "w"), log=_quiet, aggregate_after=False)
  assert len(ran) == len(study.grid(config)) and len(set(ran)) == len(ran)


def test_a_signal_after_the_train_loops_last_check_reaches_the_outer_guard():
  """A signal the trainer's guard got too late to act on (its run finished) is passed on
  to the study's guard when the trainer puts the handlers back."""
  import signal  # pylint: disable=g-import-not-at-top
  from optical_jax import checkpoint  # pylint: disable=g-import-not-at-top
  outer = checkpoint.PreemptionGuard(signals=(signal.SIGTERM,))
  try:
    inner = checkpoint.PreemptionGuard(signals=(signal.SIGTERM,))
    os.kill(os.getpid(), signal.SIGTERM)
    assert inner.should_stop() and not outer.should_stop()
    inner.restore()
    assert outer.should_stop() and outer.received == signal.SIGTERM
  finally:
    outer.restore()


def test_drop_trained_deletes_finished_cells_trainer_dirs_and_keeps_their_results(tmp_path,
                                                                                monkeypatch):
  """With drop_trained, a cell's train/ goes once it is finished (run now, or found
  finished by a rerun); a cell stopped before done.json keeps its checkpoints; the
  results stay and a rerun runs nothing."""
  from optical_jax.study import runner  # pylint: disable=g-import-not-at-top
  config = _selection_study(tmp_path)
  config.select.axis = ""
  work = tmp_path / "w"
  cells = [c for c in study.grid(config) if not c.reference]
  first, last = cells[0].key, cells[-1].key

  def fake_run_cell(cfg, plan, log):
    del cfg, log
    ckpt = os.path.join(plan.directory, "train", "checkpoints", "100")
    os.makedirs(ckpt)
    open(os.path.join(ckpt, "params"), "wb").close()
    if plan.cell.key == last:
      raise KeyboardInterrupt   # stopped while training: no done.json
    _finish(config, work, plan.cell, lambda c, i: 0.5)

  monkeypatch.setattr(runner, "run_cell", fake_run_cell)
  # One finished cell from an earlier run without the option keeps its train/ until now.
  study.run(config, str(work), log=_quiet, aggregate_after=False, shard=(0, len(cells)))
  assert os.path.isdir(work / "cells" / first / "train")
  with pytest.raises(KeyboardInterrupt):
    study.run(config, str(work), log=_quiet, aggregate_after=False, drop_trained=True)
  finished = [c.key for c in cells if c.key != last]
  for key in finished:
    assert not os.path.exists(work / "cells" / key / "train"), key
    assert os.path.isfile(work / "cells" / key / "done.json")
  assert os.path.isdir(work / "cells" / last / "train" / "checkpoints" / "100")
  monkeypatch.setattr(runner, "run_cell", lambda cfg, plan, log: _finish(config, work, plan.cell,
                                                                        lambda c, i: 0.5))
  again = study.run(config, str(work), log=_quiet, drop_trained=True)
  assert again.ran == [last] and not os.path.exists(work / "cells" / last / "train")
  rows = _csv(work / "results.csv")   # one dataset and one measure a cell
  assert sorted(r["cell"] for r in rows) == sorted(c.key for c in cells)


def test_selection_margins_average_seeds_per_query_then_test_over_queries(tmp_path):
  """selection.json gives each candidate's margin to the pick: per (language, query) the
  difference averaged over seeds, a paired t-test over those (checked with scipy on the
  hand-built values), and selection.md renders it."""
  from scipy import stats as sps  # pylint: disable=g-import-not-at-top
  c = _selection_study(tmp_path)
  c.select.axes.lang = ("swa", "hau")
  c.select.axes.seed = (0, 1)
  stage = study.selection_stage(c)
  rng = np.random.default_rng(7)
  level = {"sentence": 0.30, "ot": 0.50, "ranking": 0.45}
  value = {(cl.values["lang"], cl.values["loss"], cl.values["seed"], i):
           level[cl.values["loss"]] + float(rng.normal(0, 0.1))
           for cl in study.grid(stage) for i in range(10)}
  for cell in study.grid(stage):
    _finish(stage, tmp_path / "select", cell,
            lambda cl, i: value[(cl.values["lang"], cl.values["loss"], cl.values["seed"], i)])
  result = study.choose(c, str(tmp_path), log=_quiet)
  assert result["chosen"] == "ot"
  by = {x["value"]: x for x in result["candidates"]}
  assert "vs_chosen" not in by["ot"]
  for arm in ("sentence", "ranking"):
    diffs = [np.mean([value[(lang, arm, s, i)] - value[(lang, "ot", s, i)] for s in (0, 1)])
             for lang in ("swa", "hau") for i in range(10)]
    got = by[arm]["vs_chosen"]
    assert got["queries"] == 20 and got["queries_changed"] == 20
    assert got["mean_diff"] == pytest.approx(np.mean(diffs), abs=1e-12)
    assert got["t_test_p"] == pytest.approx(sps.ttest_1samp(diffs, 0.0).pvalue, rel=1e-9)
  md = (tmp_path / "selection.md").read_text()
  assert "| loss | minus ot | queries | changed | t-test p |" in md
  assert f"| ranking | {by['ranking']['vs_chosen']['mean_diff']:+.4f} | 20 | 20 |" in md


def _export_random(out, tokenizer, seed):
  """A tiny random-weight encoder exported to `out` (a stand-in for a teacher trained here)."""
  import jax  # pylint: disable=g-import-not-at-top
  from optical_jax import models  # pylint: disable=g-import-not-at-top
  arch = dict(vocab_size=30522, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
              max_position_embeddings=64)
  m = models.load_model(models.model_spec(weights="random", tokenizer=tokenizer, arch=arch),
                        rng=jax.random.PRNGKey(seed))
  models.export_model(out, m.cfg, m.params, m.spec, m.tokenizer)


def _study_with_teacher(tmp_path, teacher):
  """`_selection_study` whose cells train the tiny config against the export `teacher`."""
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from optical_jax import models  # pylint: disable=g-import-not-at-top

  def train(_):
    cfg = tiny.get_config("")
    cfg.teacher = models.export_spec(teacher)
    return cfg
  c = _selection_study(tmp_path)
  c.train = train
  return c


def test_finished_cells_with_an_exported_teacher_are_redone_when_it_changes(tmp_path, minilm_dir):
  """A cell's configs name an exported teacher by path only: its record keeps the export's
  identity, and the cell counts as finished (in the workdir or restored from an archive)
  only with that same export, or when no export is there to check."""
  import warnings as warnings_lib  # pylint: disable=g-import-not-at-top
  from optical_jax import cell_archive, models  # pylint: disable=g-import-not-at-top
  tok = os.path.join(minilm_dir, "tokenizer.json")
  teacher = str(tmp_path / "teacher")
  _export_random(teacher, tok, 0)
  first = models.export_identity(teacher)
  _export_random(teacher, tok, 0)   # the same weights exported again: the same identity
  assert first and models.export_identity(teacher) == first
  assert models.export_identity(str(tmp_path / "none")) == ""
  c = _study_with_teacher(tmp_path, teacher)
  cell = study.grid(c)[0]
  plan = study.plan_cell(c, cell, str(tmp_path / "w"))
  assert plan.exports() == {teacher: first}
  _finish(c, tmp_path / "w", cell, lambda cl, i: 0.5)
  done_path = os.path.join(plan.directory, "done.json")
  with open(done_path) as f:
    done = json.load(f)

  def status(exports):
    done["exports"] = exports
    if exports is None:
      del done["exports"]
    with open(done_path, "w") as f:
      json.dump(done, f)
    with warnings_lib.catch_warnings(record=True) as seen:
      warnings_lib.simplefilter("always")
      s = study.cell_status(plan)
    return s, " ".join(str(w.message) for w in seen)

  assert status({teacher: first}) == ("done", "")
  s, why = status(None)
  assert s == "todo" and "records no identity of the exported model" in why
  # Archive the finished cell (with its identity), then retrain the teacher.
  status({teacher: first})
  with open(os.path.join(plan.directory, "cell.json"), "w") as f:
    json.dump({"fingerprint": plan.fingerprint(), "resolved": plan.resolved(),
               "exports": {teacher: first}}, f)
  archive = str(tmp_path / "archive")
  cell_archive.save(plan.directory, archive)
  _export_random(teacher, tok, 1)
  assert models.export_identity(teacher) not in ("", first)
  s, why = status({teacher: first})
  assert s == "todo" and "is not the one it ran with" in why
  seen = []
  fresh = study.plan_cell(c, cell, str(tmp_path / "w2"))
  assert study.restore_cells(c, [fresh], archive, seen.append) == []
  assert any("is not the one it ran with" in s and s.endswith("it reruns") for s in seen), seen
  # The same teacher again: restored. With no teacher here to check against, a record is
  # taken as it is, even one without identities.
  _export_random(teacher, tok, 0)
  assert study.restore_cells(c, [fresh], archive, seen.append) == [cell.key]
  assert study.cell_status(fresh) == "done"
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(teacher)
  assert fresh.exports() == {teacher: ""}
  fresh_done = os.path.join(fresh.directory, "done.json")
  with open(fresh_done) as f:
    legacy = {k: v for k, v in json.load(f).items() if k != "exports"}
  with open(fresh_done, "w") as f:
    json.dump(legacy, f)
  assert study.cell_status(fresh) == "done"


def test_run_cell_records_the_teacher_export_and_restarts_training_when_it_changes(
    tmp_path, minilm_dir, monkeypatch):
  """`run_cell` writes the export identities into cell.json and done.json; after the
  teacher is exported again, the cell is todo and its rerun first removes the training
  that ran against the old teacher (it would otherwise resume from its checkpoint)."""
  import warnings as warnings_lib  # pylint: disable=g-import-not-at-top
  from optical_jax import evaluator, models, trainer  # pylint: disable=g-import-not-at-top
  from optical_jax.study import cells as study_cells  # pylint: disable=g-import-not-at-top
  tok = os.path.join(minilm_dir, "tokenizer.json")
  teacher = str(tmp_path / "teacher")
  _export_random(teacher, tok, 0)
  c = _study_with_teacher(tmp_path, teacher)
  plan = study.plan_cell(c, study.grid(c)[0], str(tmp_path / "w"))
  found_checkpoints = []

  def fake_train(cfg, workdir, log_fn):   # a resumed run would find its old checkpoints
    del cfg, log_fn
    ckpt = os.path.join(workdir, "checkpoints")
    found_checkpoints.append(os.path.isdir(ckpt))
    os.makedirs(ckpt, exist_ok=True)

  def fake_eval(ecfg, out, log):
    del ecfg, log
    os.makedirs(os.path.join(out, "metrics"), exist_ok=True)
    with open(os.path.join(out, "metrics", "student.json"), "w") as f:
      json.dump({"per_query": {"nDCG@10": {"q0": 0.5}}, "aggregate": {"nDCG@10": 0.5},
                 "num_queries": 1}, f)
  monkeypatch.setattr(trainer, "run", fake_train)
  monkeypatch.setattr(trainer, "check_complete", lambda result, cfg: None)
  monkeypatch.setattr(study_cells, "_student_system", lambda workdir, cfg: {})
  monkeypatch.setattr(evaluator, "run", fake_eval)
  seen = []
  study.run_cell(c, plan, seen.append)
  identity = models.export_identity(teacher)
  for name in ("cell.json", "done.json"):
    with open(os.path.join(plan.directory, name)) as f:
      assert json.load(f)["exports"] == {teacher: identity}, name
  assert study.cell_status(plan) == "done" and found_checkpoints == [False]
  _export_random(teacher, tok, 1)
  with warnings_lib.catch_warnings(record=True) as caught:
    warnings_lib.simplefilter("always")
    assert study.cell_status(plan) == "todo"
  assert any("is not the one it ran with" in str(w.message) for w in caught)
  with warnings_lib.catch_warnings():
    warnings_lib.simplefilter("ignore", study.CellWarning)   # its own status check, as above
    study.run_cell(c, plan, seen.append)
  assert found_checkpoints == [False, False]
  assert any("is not the one it ran with" in s and "start again" in s for s in seen), seen
  assert study.cell_status(plan) == "done"


def test_the_runner_hands_free_memory_back_after_each_cell(tmp_path, monkeypatch):
  """After every cell it runs (not for cells found finished), the study calls
  `release_free_memory`, which purges jemalloc's kept pages or trims glibc's heap."""
  import platform  # pylint: disable=g-import-not-at-top
  from optical_jax.study import runner  # pylint: disable=g-import-not-at-top
  called = runner.release_free_memory()
  if platform.libc_ver()[0] == "glibc":
    assert called in ("jemalloc", "glibc")
  config = _selection_study(tmp_path)
  config.select.axis = ""
  work = tmp_path / "w"
  calls = []
  monkeypatch.setattr(runner, "release_free_memory", lambda: calls.append(1))
  monkeypatch.setattr(runner, "run_cell", lambda cfg, plan, log: _finish(
      config, work, plan.cell, lambda c, i: 0.5))
  first = study.run(config, str(work), log=_quiet, aggregate_after=False)
  assert len(first.ran) == len(calls) == len(study.grid(config))
  again = study.run(config, str(work), log=_quiet, aggregate_after=False)
  assert again.ran == [] and len(calls) == len(study.grid(config))
