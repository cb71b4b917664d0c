#!/usr/bin/env bash
# Issue 24's decisive comparison at :cpu scale, the runs behind the README's answer to
# "does token-level OT add anything over the ranking term?": sentence-level distillation,
# the ranking term alone, plain OT and OT + ranking on AfriQA swa/hau/yor/zul test, in
#   e5          multilingual-e5-small, dense retrieval, 5 seeds (the shipped setting);
#   colbert-e5  an English ColBERT teacher trained on multilingual-e5-small
#               (configs/teacher_colbert.py:backbone=e5), MaxSim retrieval, 3 seeds, plus
#               the ranking term on MaxSim rows (ranking-maxsim, ot-ranking-maxsim);
#   minilm      all-MiniLM-L6-v2, dense retrieval, 3 seeds (the shipped setting).
# Many hours on 2 CPU cores (e5 cells ~5 min, MiniLM ~3). Safe to stop (SIGTERM/Ctrl-C)
# and rerun: finished cells are kept, and their records are written to the study's cell
# archive (docs/cell-archives/NAME/, or the page's cells/ once it exists), from which a
# fresh clone restores them. When a study has run every cell its page is published to
# docs/studies/NAME/ (`python -m optical_jax.report --publish`); then render the README:
# `python -m optical_jax.report --readme README.md docs/results.md`.
#
#   bash scripts/decisive.sh                        # all three, in this order
#   DECISIVE="minilm" bash scripts/decisive.sh      # some of them
#   OUT=/tmp/runs bash scripts/decisive.sh          # workdirs elsewhere (default outputs/)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs}
STUDIES=${DECISIVE:-e5 colbert-e5 minilm}
PY=.venv/bin/python
[ -x "$PY" ] || { echo "no .venv: run bash scripts/setup.sh first" >&2; exit 2; }
CACHE="$OUT/cache"
SPEC="configs/studies/ot_variants.py:cpu,langs=swa+hau+yor+zul"
ARMS="sentence+ranking+ot+ot-ranking"

study() {   # NAME WORKDIR ARGUMENT
  local page="docs/studies/$1" archive="docs/cell-archives/$1" config="$SPEC,$3,cache_dir=$CACHE"
  local moved=(--cells "$archive")
  [ -d "$page/cells" ] && { archive="$page/cells"; moved=(); }
  echo "== $(date -u +%H:%M) $1 (workdir $2, cell records in $archive)"
  $PY study.py --config "$config" --workdir "$2" --archive "$archive" --drop_trained
  # The page's command names where its records end up: a fresh clone restores from there.
  $PY -m optical_jax.report --publish "$2" "$page" "${moved[@]}" --command \
    "python study.py --config \"$config\" --workdir $2 --archive $page/cells --drop_trained"
}

for s in $STUDIES; do
  case "$s" in
    e5)
      study ot_variants_e5_dense_test_cpu "$OUT/otv_e5_dense" "settings=e5,seeds=5,arms=$ARMS" ;;
    colbert-e5)
      teacher="$OUT/teacher_colbert_e5"
      echo "== $(date -u +%H:%M) ColBERT teacher on e5 (400 steps; resumes)"
      $PY train.py --config configs/teacher_colbert.py:backbone=e5 --workdir "$teacher"
      study ot_variants_colbert_e5_test_cpu "$OUT/otv_colbert_e5" \
        "settings=colbert-e5,teacher_e5=$teacher/teacher,seeds=3,arms=$ARMS+ranking-maxsim+ot-ranking-maxsim" ;;
    minilm)
      study ot_variants_minilm_test_cpu "$OUT/otv_minilm_test" "settings=minilm,seeds=3,arms=$ARMS" ;;
    *) echo "DECISIVE: unknown study '$s' (e5, colbert-e5, minilm)" >&2; exit 2 ;;
  esac
done
echo "== $(date -u +%H:%M) done; render the README: $PY -m optical_jax.report --readme README.md docs/results.md"
