"""Study pages (optical_jax.report): rendered from a study's data files alone, tests with
the training run as the unit, families and adjusted p-values; every committed page is
what its committed data renders."""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os

import numpy as np
import pytest
from scipy import stats as sp

from optical_jax import report

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
COMMITTED = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(ROOT, "docs", "studies",
                                                                        "*", "report.json")))


def test_every_study_has_its_data_files():
  dirs = sorted(glob.glob(os.path.join(ROOT, "docs", "studies", "*", "")))
  assert dirs and len(COMMITTED) == len(dirs)


@pytest.mark.parametrize("directory", COMMITTED, ids=os.path.basename)
def test_committed_page_is_what_its_data_renders(directory):
  assert report.check(directory) is None, f"python -m optical_jax.report {directory}"


def _t_p(d):
  d = np.asarray(d, float)
  t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
  return 2 * sp.t.sf(abs(t), d.size - 1)


def _write_page(directory, rows, meta, pq_rows=None):
  """A study's data files: results.csv from `rows`, report.json, per_query.csv.gz."""
  os.makedirs(directory, exist_ok=True)
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
  w.writeheader()
  w.writerows(rows)
  with open(os.path.join(directory, "results.csv"), "w") as f:
    f.write(buf.getvalue())
  if pq_rows is not None:
    with open(os.path.join(directory, "per_query.csv.gz"), "wb") as f:
      f.write(report.per_query_bytes(pq_rows))
  with open(os.path.join(directory, "report.json"), "w") as f:
    json.dump(meta, f)


def _synthetic(tmp_path, per_query=True):
  """lang x loss x seed, P@1 and nDCG@10 over 30 queries a language; ot is better."""
  rng = np.random.default_rng(0)
  rows, pq_rows, values = [], [], {}
  for seed in (0, 1):
    for lang in ("swa", "hau"):
      for loss in ("ot", "sentence"):
        key = f"lang={lang},loss={loss},seed={seed}"
        for m in ("P@1", "nDCG@10"):
          v = {f"q{i}": float(rng.random() < (0.6 if loss == "ot" else 0.4)) for i in range(30)}
          values[(lang, loss, seed, m)] = v
          rows.append(dict(study="s", cell=key, kind="trained", lang=lang, loss=loss,
                           seed=str(seed), system="student", dataset=f"afriqa-{lang}",
                           metric=m, value=repr(float(np.mean(list(v.values())))),
                           num_queries="30"))
          pq_rows += [(key, f"afriqa-{lang}", "student", m, q, x) for q, x in sorted(v.items())]
  rows.append(dict(study="s", cell="reference,lang=swa", kind="reference", lang="swa", loss="",
                   seed="", system="zeroshot", dataset="afriqa-swa", metric="P@1",
                   value="0.25", num_queries="30"))
  meta = dict(name="s", axes={"lang": ["swa", "hau"], "loss": ["ot", "sentence"],
                              "seed": ["0", "1"]},
              seed_axis="seed", system="student", compare=[["loss=ot", "loss=sentence"]],
              pool_axes=["lang"], measures=["P@1", "nDCG@10"], primary_measure="",
              confidence=0.95, alpha=0.05, correction="holm", n_permutations=2000,
              permutation_seed=0, finished=8, cells=10)
  _write_page(str(tmp_path), rows, meta, pq_rows if per_query else None)
  return values


def test_pooled_test_takes_runs_as_units_and_queries_once(tmp_path):
  values = _synthetic(tmp_path)
  comps = report.comparisons(report.load(str(tmp_path)))
  pooled = [c for c in comps if c["context"]["lang"] == "pooled"]
  per_lang = [c for c in comps if c["context"]["lang"] != "pooled"]
  assert {(c["dataset"], c["measure"]) for c in pooled} == {("afriqa-*", "P@1"),
                                                           ("afriqa-*", "nDCG@10")}
  assert len(per_lang) == 4
  for c in pooled:
    m = c["measure"]
    cells = [np.mean(list(values[(l, "ot", s, m)].values()))
             - np.mean(list(values[(l, "sentence", s, m)].values()))
             for s in (0, 1) for l in ("swa", "hau")]
    assert c["runs"] == 4 and c["mean_diff"] == pytest.approx(np.mean(cells))
    assert c["run_t_p"] == pytest.approx(_t_p(cells), rel=1e-10)
    per_query = [np.mean([values[(l, "ot", s, m)][q] - values[(l, "sentence", s, m)][q]
                          for s in (0, 1)]) for l in ("hau", "swa") for q in sorted(
                              values[(l, "ot", 0, m)])]
    assert c["queries"] == 60
    assert c["query_mean_diff"] == pytest.approx(np.mean(per_query))
    assert c["query_t_p"] == pytest.approx(_t_p(per_query), rel=1e-10)
  # Families: the primary family is nDCG@10 pooled (one test: nothing to adjust); the
  # secondary holds the other five, Holm-adjusted among themselves.
  primary = [c for c in comps if c["family"] == "primary"]
  assert [(c["measure"], c["context"]["lang"]) for c in primary] == [("nDCG@10", "pooled")]
  assert primary[0]["run_t_p_adj"] == primary[0]["run_t_p"]
  secondary = [c for c in comps if c["family"] == "secondary"]
  assert len(secondary) == 5
  raw = np.array([c["run_t_p"] for c in secondary])
  m = len(raw)
  order = np.argsort(raw)
  want = np.empty(m)
  running = 0.0
  for i, j in enumerate(order):
    running = max(running, min(1.0, (m - i) * raw[j]))
    want[j] = running
  np.testing.assert_allclose([c["run_t_p_adj"] for c in secondary], want, rtol=1e-12)
  for c in comps:
    assert c["significant"] == (c["run_t_p_adj"] < 0.05)


def test_page_renders_from_files_and_check_sees_any_change(tmp_path):
  _synthetic(tmp_path)
  text = report.write(str(tmp_path))
  assert report.check(str(tmp_path)) is None
  assert "### Primary family (1 tests)" in text and "run Holm p" in text
  assert "| zeroshot (lang=swa) | 0.250 |" in text
  strict = json.loads((tmp_path / "summary.json").read_text(),
                      parse_constant=lambda c: pytest.fail(f"summary.json holds {c}"))
  assert strict["comparisons"]
  results = (tmp_path / "results.csv").read_text()
  (tmp_path / "results.csv").write_text(results.replace(",0.25,30", ",0.35,30"))
  assert "line" in report.check(str(tmp_path))
  assert report.main(["--check", str(tmp_path)]) == 1
  assert report.main([str(tmp_path)]) == 0 and report.check(str(tmp_path)) is None


def test_without_per_query_values_the_page_says_so(tmp_path):
  _synthetic(tmp_path, per_query=False)
  text, data = report.render(str(tmp_path))
  assert "Query level: not available" in text
  assert all(c["queries"] == 0 and math.isnan(c["query_t_p"]) for c in data["comparisons"])
  report.write(str(tmp_path))      # summary.json is strict JSON: nan as null
  strict = json.loads((tmp_path / "summary.json").read_text(),
                      parse_constant=lambda c: pytest.fail(f"summary.json holds {c}"))
  assert all(c["query_t_p"] is None for c in strict["comparisons"])


def test_missing_report_json_is_one_line(tmp_path):
  assert report.main([str(tmp_path)]) == 2
  with pytest.raises(Exception, match="report.json"):
    report.load(str(tmp_path))


def test_readme_blocks_are_what_the_committed_data_renders():
  readme = os.path.join(ROOT, "README.md")
  text = open(readme, encoding="utf-8").read()
  assert "<!-- generated: answer " in text and "<!-- generated: demo " in text
  assert report.render_readme(readme) == text, "python -m optical_jax.report --readme README.md"
  results = os.path.join(ROOT, "docs", "results.md")
  text = open(results, encoding="utf-8").read()
  assert "<!-- generated: answer-table " in text and "](studies/ot_variants_cpu/summary.md)" in text
  assert report.render_readme(results) == text, ("python -m optical_jax.report --readme "
                                                 "docs/results.md")
  demo = os.path.join(ROOT, "docs", "demo")
  with open(os.path.join(demo, "demo.json"), encoding="utf-8") as f:
    want = report.demo_markdown(json.load(f))
  with open(os.path.join(demo, "results.md"), encoding="utf-8") as f:
    assert f.read() == want


def test_readme_is_the_front_door():
  """Issue 26: the README stays short (what it is, install, the main job, the tests, the
  headline results, a how-do-I list); manuals live in docs/."""
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    lines = f.read().splitlines()
  assert len(lines) <= 200, f"README.md has {len(lines)} lines (at most 200: move detail to docs/)"


def _anchors(path):
  """GitHub's heading anchors of a Markdown page (outside code fences)."""
  import re  # pylint: disable=g-import-not-at-top
  out, fence = set(), False
  for line in open(path, encoding="utf-8"):
    if line.startswith("```"):
      fence = not fence
    elif not fence and line.startswith("#"):
      title = line.lstrip("#").strip().lower()
      out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
  return out


def test_relative_links_in_readme_and_docs_resolve():
  """Every relative link of the README, the changelog and docs/ names a file that exists,
  and a #anchor into a Markdown page names one of its headings."""
  import re  # pylint: disable=g-import-not-at-top
  pages = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "CHANGELOG.md")] + glob.glob(
      os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)
  for page in pages:
    text = open(page, encoding="utf-8").read()
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text):
      if "://" in target or (not target and not anchor):
        continue
      path = os.path.normpath(os.path.join(os.path.dirname(page), target)) if target else page
      assert os.path.exists(path), f"{page}: link to {target} does not resolve"
      if anchor and path.endswith(".md"):
        assert anchor in _anchors(path), f"{page}: no heading #{anchor} in {target or 'itself'}"


def test_demo_tables_render_from_demo_json(tmp_path):
  from optical_jax import metrics  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(2)
  base = rng.uniform(0, 1, 40)

  def res(v):
    return {"per_query": {"nDCG@10": {f"q{i}": float(x) for i, x in enumerate(v)}},
            "aggregate": {"nDCG@10": float(np.mean(v))}, "num_queries": len(v)}
  results = {"e5-zeroshot": res(base), "e5-sentence": res(base + 0.1),
             "e5-ranking": res(base + 0.15), "e5-ot-ranking": res(base + 0.16)}
  _, comp = metrics.comparison_table(results, ["e5-zeroshot", "e5-sentence", "e5-ranking"],
                                     n_permutations=10)
  comp = dict(comp, dataset={"queries": "/somewhere/swa.test.jsonl"}, num_judged_queries=40,
              num_passages=100)
  (tmp_path / "eval-e5").mkdir()
  (tmp_path / "eval-e5" / "comparison.json").write_text(json.dumps(comp))
  (tmp_path / "eval-e5" / "shipped_loss.txt").write_text("ot+ranking\n")
  text = report.write_demo(str(tmp_path), ["e5"], "swa", 125)
  assert "Shipped loss of `configs/swa_e5.py`: `ot+ranking` (row `e5-ot-ranking`)" in text
  assert "2 min 5 s" in text and metrics.comparison_markdown(comp).splitlines()[0] in text
  data = json.loads((tmp_path / "demo.json").read_text())
  assert data["settings"]["e5"]["comparison"]["dataset"]["queries"] == "swa.test.jsonl"
  assert report.demo_markdown(data) == (tmp_path / "results.md").read_text()
  with pytest.raises(Exception, match="no finished evaluation"):
    report.demo_data(str(tmp_path), ["minilm"], "swa", 1)


def test_cost_sheet_is_what_its_data_renders():
  """docs/cost.md is rendered from benchmarks/results/cost.json (`benchmarks/cost.py
  --render`): no typed number."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("cost", os.path.join(ROOT, "benchmarks", "cost.py"))
  cost = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(cost)
  with open(cost.RESULTS, encoding="utf-8") as f:
    data = json.load(f)
  with open(cost.PAGE, encoding="utf-8") as f:
    assert f.read() == cost.render(data, data["mfu"]), "python benchmarks/cost.py --render"


def test_publish_makes_the_committed_page_from_a_study_workdir(tmp_path):
  """A workdir holding a committed page's data (report.json without its command, plots,
  selection) and an archive of its cells' records, published: the page's bytes, the
  records moved; a stale selection page goes when the study has no selection; a failing
  publish (stray record, bad data, the workdir itself as page) leaves the page as it was."""
  import shutil
  page = os.path.join(ROOT, "docs", "studies", "ot_variants_e5_select_cpu")
  work, archive, out = tmp_path / "work", tmp_path / "archive", tmp_path / "page"
  shutil.copytree(page, work, ignore=shutil.ignore_patterns("summary.*", "selection.md", "*.png"))
  pngs = sorted(n for n in os.listdir(page) if n.endswith(".png"))
  (work / "plots").mkdir()
  for name in pngs:
    shutil.copy(os.path.join(page, name), work / "plots" / name)
  meta = json.loads((work / "report.json").read_text())
  command = meta.pop("command")
  (work / "report.json").write_text(json.dumps(meta))
  selection = json.loads((work / "selection.json").read_text())
  records = sorted(f"{k}.json.gz" for c in selection["candidates"] for k in c["cells"])[:2]
  (archive / "select").mkdir(parents=True)
  for name in records:   # publish moves records; reading them is the study's job
    (archive / "select" / name).write_bytes(name.encode())
  assert report.main(["--publish", str(work), str(out), "--command", command,
                      "--cells", str(archive)]) == 0
  for rel in ["report.json", "results.csv", "per_query.csv.gz", "selection.json",
              "selection.md", "summary.md", "summary.json"] + pngs:
    with open(os.path.join(page, rel), "rb") as a, open(out / ("plots/" * rel.endswith(".png") + rel), "rb") as b:
      assert a.read() == b.read(), rel
  assert sorted(os.listdir(out / "cells" / "select")) == records
  assert not os.listdir(archive / "select")

  def snapshot():
    return {p: open(os.path.join(r, p), "rb").read() for r, _, fs in os.walk(out) for p in fs}
  before = snapshot()
  (archive / "select" / "lang=xx.json.gz").write_bytes(b"x")   # no cell of this study
  assert report.main(["--publish", str(work), str(out), "--command", command,
                      "--cells", str(archive)]) == 2
  results = (work / "results.csv").read_text()
  (work / "results.csv").write_text(results.replace(",nDCG@10,0.", ",nDCG@10,x0.", 1))
  assert report.main(["--publish", str(work), str(out), "--command", command]) == 2
  (work / "results.csv").write_text("study,cell\n")
  assert report.main(["--publish", str(work), str(out), "--command", command]) == 2
  assert report.main(["--publish", str(out), str(out) + "/", "--command", command]) == 2
  assert snapshot() == before and (archive / "select" / "lang=xx.json.gz").exists()
  shutil.copy(out / "results.csv", work / "results.csv")
  (work / "selection.json").unlink()
  shutil.rmtree(work / "plots")
  assert report.main(["--publish", str(work), str(out), "--command", command]) == 0
  assert not any((out / n).exists() for n in ("selection.json", "selection.md", "plots"))
  assert sorted(os.listdir(out / "cells" / "select")) == records     # kept
  assert report.main(["--publish", str(work), str(out), "--command", " "]) == 2
  assert report.main(["--publish", str(tmp_path / "none"), str(out), "--command", "x"]) == 2
  assert report.main(["--publish", str(work), str(out), "--commnd", "x"]) == 2


ARMS = ("ranking", "ot-ranking", "ranking-maxsim", "ot-ranking-maxsim")


def _ranking_page(directory, effect=0.2, seed=1, setting="a", finished=24, pooled=0.0):
  """A study page of one setting, 2 languages x 3 seeds, with pooled and MaxSim ranking
  arms, each with OT added; OT on MaxSim rows moves nDCG@10 by `effect`, pooled OT by
  `pooled` (None: exactly 1/16 in every run, a constant difference that has no t-test)."""
  rng = np.random.default_rng(seed)
  shift = {"ot-ranking-maxsim": effect, "ot-ranking": pooled or 0.0}
  rows = []
  for s in range(3):
    for lang in ("swa", "hau"):
      for loss in ARMS:
        value = 0.5 + shift.get(loss, 0.0) + rng.normal(0, 0.01)
        if pooled is None and loss in ("ranking", "ot-ranking"):   # dyadic: exact sums
          value = (0.5 + int(rng.integers(16)) / 64 if loss == "ranking"
                   else float(rows[-1]["value"]) + 1 / 16)
        rows.append(dict(study="s", cell=f"setting={setting},lang={lang},loss={loss},seed={s}",
                         kind="trained", setting=setting, lang=lang, loss=loss, seed=str(s),
                         system="student", dataset=f"afriqa-{lang}", metric="nDCG@10",
                         value=repr(value), num_queries="30"))
  meta = dict(name="s", axes={"setting": [setting], "lang": ["swa", "hau"], "loss": list(ARMS),
                              "seed": ["0", "1", "2"]},
              seed_axis="seed", system="student",
              compare=[["loss=ot-ranking", "loss=ranking"],
                       ["loss=ot-ranking-maxsim", "loss=ranking-maxsim"]],
              pool_axes=["lang"], measures=["nDCG@10"], primary_measure="", confidence=0.95,
              alpha=0.05, correction="holm", n_permutations=200, permutation_seed=0,
              finished=finished, cells=24)
  _write_page(directory, rows, meta)


def test_answer_counts_the_maxsim_ranking_pair_under_the_same_question(tmp_path):
  """OT + ranking vs the ranking term asks the same question with pooled or MaxSim
  ranking rows; a study with both pairs gives that question two primary tests."""
  _ranking_page(str(tmp_path))
  lines = report.answer_markdown([str(tmp_path)], ["s"]).splitlines()
  assert lines[0].startswith("- **Token-level OT added to the ranking term")
  assert lines[0].endswith("holds in 1 of 2 primary test(s).") and len(lines) == 1
  table = report.answer_table_markdown([str(tmp_path)], ["s"])
  assert "| loss=ot-ranking-maxsim vs loss=ranking-maxsim | [s]" in table


def test_decisive_block_answers_from_the_declared_pages_only(tmp_path):
  """The README's yes/no line reads the pages docs/decisive.json declares: not yet while
  one has no page or an unfinished one, then yes, no, or in some settings only."""
  studies = [dict(setting=x, label=f"Setting {x.upper()}", page=f"p{x}", seeds=3,
                  arms="+".join(ARMS)) for x in ("a", "b")]
  studies_dir = tmp_path / "docs" / "studies"
  studies_dir.mkdir(parents=True)
  (tmp_path / "docs" / "decisive.json").write_text(json.dumps({"studies": studies}))
  _ranking_page(str(studies_dir / "other"))   # not declared: not read
  assert report.decisive_markdown(str(tmp_path)).startswith(
      "**Not answered yet**: 0 of the 2 settings have a finished, testable test stage.")
  _ranking_page(str(studies_dir / "pa"))
  text = report.decisive_markdown(str(tmp_path), "studies")
  assert text.splitlines()[0] == (
      "**Not answered yet**: 1 of the 2 settings has a finished, testable test stage; the "
      "corrected run-level test puts OT + ranking above the ranking term alone in 1 of them; "
      "in Setting A for ot-ranking-maxsim − ranking-maxsim only, not for ot-ranking − ranking.")
  assert "- **Setting A** ([pa](studies/pa/summary.md)): ot-ranking − ranking = " in text
  assert "OT + ranking significantly above." in text and "no significant difference" in text
  assert "- **Setting B**, 3 seeds: no page yet." in text
  _ranking_page(str(studies_dir / "pb"), effect=0.0, seed=5, setting="b", finished=20)
  text = report.decisive_markdown(str(tmp_path))
  assert text.startswith("**Not answered yet**: 1 of the 2") and ", only 20 of 24 cells)" in text
  _ranking_page(str(studies_dir / "pb"), effect=0.0, seed=5, setting="b")
  text = report.decisive_markdown(str(tmp_path))
  assert text.splitlines()[0] == (
      "**In 1 of 2 settings only**: there the corrected run-level test puts OT + ranking "
      "above the ranking term alone, elsewhere not; in Setting A for ot-ranking-maxsim − "
      "ranking-maxsim only, not for ot-ranking − ranking (Holm within each study; nothing "
      "corrects across the settings).")
  assert "no page yet" not in text
  _ranking_page(str(studies_dir / "pa"), effect=-0.2, seed=3)
  assert report.decisive_markdown(str(tmp_path)).startswith(
      "**No**: in none of the 2 settings does the corrected run-level test put OT + ranking "
      "above the ranking term alone; significantly below it in 1 (Holm")
  _ranking_page(str(studies_dir / "pa"), effect=0.2, seed=3)
  _ranking_page(str(studies_dir / "pb"), effect=0.2, seed=4, setting="b")
  # OT helps the MaxSim ranking term in both settings but the pooled one in neither: not "yes"
  first = report.decisive_markdown(str(tmp_path)).splitlines()[0]
  assert first.startswith("**In all 2 settings, but not for every ranking term**: the "
                          "corrected run-level test puts OT + ranking above the ranking term "
                          "alone; in Setting A for ot-ranking-maxsim − ranking-maxsim only, "
                          "not for ot-ranking − ranking; in Setting B for ")
  _ranking_page(str(studies_dir / "pb"), effect=0.2, seed=4, setting="b", pooled=0.2)
  first = report.decisive_markdown(str(tmp_path)).splitlines()[0]
  assert first.startswith("**In all 2 settings, but not for every ranking term**: ")
  assert "in Setting A for" in first and "Setting B" not in first
  _ranking_page(str(studies_dir / "pa"), effect=0.2, seed=3, pooled=0.2)
  assert report.decisive_markdown(str(tmp_path)).startswith(
      "**Yes**: in all 2 settings the corrected run-level test puts OT + ranking above the "
      "ranking term alone (Holm")
  studies[1]["seeds"] = 5     # the page is not what the file declares
  (tmp_path / "docs" / "decisive.json").write_text(json.dumps({"studies": studies}))
  with pytest.raises(Exception, match="seed axes are not what"):
    report.decisive_markdown(str(tmp_path))
  del studies[1]["arms"]
  (tmp_path / "docs" / "decisive.json").write_text(json.dumps({"studies": studies}))
  with pytest.raises(Exception, match="study 2: no arms"):
    report.decisive_markdown(str(tmp_path))


def test_decisive_line_names_each_pair_of_a_setting_whose_pairs_disagree(tmp_path):
  """A setting where OT + ranking holds for one ranking term and is significantly below,
  or untestable, for the other is named with both pairs, and neither counts as "yes"."""
  studies = [dict(setting=x, label=f"Setting {x.upper()} (details)", page=f"p{x}", seeds=3,
                  arms="+".join(ARMS)) for x in ("a", "b")]
  studies_dir = tmp_path / "docs" / "studies"
  studies_dir.mkdir(parents=True)
  (tmp_path / "docs" / "decisive.json").write_text(json.dumps({"studies": studies}))
  _ranking_page(str(studies_dir / "pb"), effect=0.2, seed=4, setting="b", pooled=0.2)
  _ranking_page(str(studies_dir / "pa"), effect=0.2, seed=3, pooled=-0.2)
  first = report.decisive_markdown(str(tmp_path)).splitlines()[0]
  assert first == (
      "**In all 2 settings, but not for every ranking term**: the corrected run-level test "
      "puts OT + ranking above the ranking term alone; in Setting A for ot-ranking-maxsim − "
      "ranking-maxsim only, significantly below for ot-ranking − ranking (Holm within each "
      "study; nothing corrects across the settings).")
  _ranking_page(str(studies_dir / "pa"), effect=0.2, seed=3, pooled=None)
  text = report.decisive_markdown(str(tmp_path))
  assert "ot-ranking − ranking = +0.062 nDCG@10 over 6 runs, run-level p — (Holm —): " \
      "not testable (one run per arm, or tied runs)" in text
  assert text.splitlines()[0].startswith(
      "**In all 2 settings, but not for every ranking term**: the corrected run-level test "
      "puts OT + ranking above the ranking term alone; in Setting A for ot-ranking-maxsim − "
      "ranking-maxsim only, not testable for ot-ranking − ranking (Holm")
  assert report._series(["a", "b", "c"]) == "a, b and c" and report._series(["a"]) == "a"


def test_readme_render_tests_each_page_once_and_names_a_bad_report(tmp_path, monkeypatch):
  """One render of the generated blocks reads and tests each study page once, though the
  answer, its table and the decisive block all use it; a page whose report.json is not
  JSON is named as such, not as missing."""
  studies = [dict(setting="a", label="A", page="pa", seeds=3, arms="+".join(ARMS))]
  (tmp_path / "docs" / "studies").mkdir(parents=True)
  (tmp_path / "docs" / "decisive.json").write_text(json.dumps({"studies": studies}))
  _ranking_page(str(tmp_path / "docs" / "studies" / "pa"))
  _ranking_page(str(tmp_path / "docs" / "studies" / "other"), setting="b")
  calls = []
  real = report.comparisons
  monkeypatch.setattr(report, "comparisons", lambda data: calls.append(data.axes["setting"])
                      or real(data))
  blocks = report._blocks(str(tmp_path), str(tmp_path))
  assert blocks["decisive"].startswith("**In the 1 setting, but not for every ranking term**")
  assert "| [pa](docs/studies/pa/summary.md) |" in blocks["answer-table"]
  assert sorted(calls) == [["a"], ["b"]]
  (tmp_path / "docs" / "studies" / "other" / "report.json").write_text("{not json")
  with pytest.raises(Exception, match="report.json is not a JSON object"):
    report._blocks(str(tmp_path), str(tmp_path))
