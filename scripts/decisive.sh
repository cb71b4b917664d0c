#!/usr/bin/env bash
# Issue 24's decisive comparison at :cpu scale, the runs behind the README's answer to
# "does token-level OT add anything over the ranking term?": the test stages that
# docs/decisive.json declares (setting, seeds, loss arms, page), in its order:
#   e5          multilingual-e5-small, dense retrieval, 5 seeds (the shipped setting);
#   colbert-e5  an English ColBERT teacher trained here on multilingual-e5-small
#               (configs/teacher_colbert.py:backbone=e5), MaxSim retrieval, 3 seeds, with
#               the ranking term on MaxSim rows too (ranking-maxsim, ot-ranking-maxsim);
#   minilm      all-MiniLM-L6-v2, dense retrieval, 3 seeds (the shipped setting).
# Each is configs/studies/ot_variants.py:cpu on AfriQA swa/hau/yor/zul test. Many hours
# on 2 CPU cores (e5 cells ~5 min, MiniLM ~3). Safe to stop (SIGTERM or Ctrl-C: passed on
# to the running program, which stops after a checkpoint or a cell) and rerun:
# finished cells are kept, and their records are written to the study's cell archive
# (docs/cell-archives/PAGE/, or the page's cells/ once it exists), from which another
# workdir or a fresh clone restores them. When a study has run every cell its page is
# published to docs/studies/PAGE/ (`python -m optical_jax.report --publish`); then render
# the README: `python -m optical_jax.report --readme README.md docs/results.md`.
#
#   bash scripts/decisive.sh                        # all of them, in order
#   DECISIVE="minilm" bash scripts/decisive.sh      # some of them
#   OUT=/tmp/runs bash scripts/decisive.sh          # workdirs OUT/PAGE (default outputs/)
#   OPTICAL_JAX_MALLOC=glibc bash scripts/decisive.sh   # keep glibc's malloc (see below)
#
# Allocator: where Debian's libjemalloc2 is installed, the studies run with it preloaded
# and keeping freed pages (MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1; the runner
# hands them back between cells): glibc returns XLA's per-step buffers to the kernel and
# faults them in again every step. MiniLM training ran 25-42% faster with bit-identical
# weights (benchmarks/allocator.py, docs/performance.md). The ColBERT teacher keeps glibc:
# kept pages took its peak from 13.5 to 19.1 GiB in 6 steps, too close to this machine's
# 24 GiB for 400. Results do not depend on it; an LD_PRELOAD already set is kept.
set -euo pipefail
# Everything runs from main, which bash reads whole before it starts: editing this file
# while it runs (for hours) does not change what the running copy does.
child=0
# Pass a stop on to the running program (bash would die at once and leave it running);
# between programs, stop here.
trap 'if [ "$child" -gt 0 ]; then kill -TERM "$child" 2>/dev/null; else exit 143; fi' TERM INT
run() {   # a program in the background, waited for, so that the trap can reach it
  local rc=0
  "$@" & child=$!
  wait "$child" || rc=$?
  while kill -0 "$child" 2>/dev/null; do rc=0; wait "$child" || rc=$?; done
  child=0
  return "$rc"
}

main() {
  cd "$(dirname "$0")/.."
  OUT=${OUT:-outputs}
  PY=.venv/bin/python
  [ -x "$PY" ] || { echo "no .venv: run bash scripts/setup.sh first" >&2; exit 2; }
  ALLOC=()   # put before the study programs (see the header); the teacher keeps glibc
  case "${OPTICAL_JAX_MALLOC:-jemalloc}" in
    glibc) echo "== allocator: glibc (OPTICAL_JAX_MALLOC=glibc)";;
    jemalloc)
      local lib conf=${MALLOC_CONF:-dirty_decay_ms:-1,muzzy_decay_ms:-1}
      lib=""   # this machine's architecture only (a multiarch host has others)
      for f in "/usr/lib/$(uname -m)-linux-gnu/libjemalloc.so.2" /usr/lib64/libjemalloc.so.2 \
               /usr/lib/libjemalloc.so.2; do
        [ -f "$f" ] && { lib=$f; break; }
      done
      if [ -n "${LD_PRELOAD:-}" ]; then
        echo "== allocator: LD_PRELOAD is set ($LD_PRELOAD); kept as it is"
      elif [ -n "$lib" ]; then
        ALLOC=(env "LD_PRELOAD=$lib" "MALLOC_CONF=$conf")
        echo "== allocator: jemalloc for the studies ($lib, MALLOC_CONF=$conf); glibc for the teacher"
      else
        echo "== allocator: glibc (apt-get install libjemalloc2 for faster CPU training;" \
             "docs/performance.md)"
      fi;;
    *) echo "OPTICAL_JAX_MALLOC: glibc or jemalloc, got '$OPTICAL_JAX_MALLOC'" >&2; exit 2;;
  esac
  CACHE="$OUT/cache"
  SPEC="configs/studies/ot_variants.py:cpu,langs=swa+hau+yor+zul"
  # setting page seeds arms, one study a line
  STUDIES=$($PY -c 'import json; [print(s["setting"], s["page"], s["seeds"], s["arms"])
    for s in json.load(open("docs/decisive.json"))["studies"]]')
  KNOWN=$(echo "$STUDIES" | cut -d" " -f1 | tr "\n" " ")
  WANT=${DECISIVE:-$KNOWN}
  for s in $WANT; do
    case " $KNOWN " in *" $s "*) ;; *)
      echo "DECISIVE: unknown setting '$s' (docs/decisive.json has: ${KNOWN% })" >&2; exit 2;; esac
  done

  study() {   # PAGE WORKDIR ARGUMENT [COMMAND BEFORE IT]
    local page="docs/studies/$1" archive="docs/cell-archives/$1" config="$SPEC,$3,cache_dir=$CACHE"
    local moved="--cells"
    [ -d "$page/cells" ] && { archive="$page/cells"; moved=""; }
    echo "== $(date -u +%H:%M) $1 (workdir $2, cell records in $archive)"
    run ${ALLOC[@]+"${ALLOC[@]}"} $PY study.py --config "$config" --workdir "$2" --archive "$archive" --drop_trained
    # The page's command names where its records end up: a fresh clone restores from there.
    local command="python study.py --config \"$config\" --workdir \"$2\" --archive \"$page/cells\" --drop_trained"
    if [ -n "$moved" ]; then
      run $PY -m optical_jax.report --publish "$2" "$page" --cells "$archive" --command "${4:-}$command"
    else
      run $PY -m optical_jax.report --publish "$2" "$page" --command "${4:-}$command"
    fi
  }

  while read -r -u 3 setting page seeds arms; do
    case " $WANT " in *" $setting "*) ;; *) continue;; esac
    extra="" before=""
    if [ "$setting" = colbert-e5 ]; then
      teacher="$OUT/teacher_colbert_e5"
      echo "== $(date -u +%H:%M) ColBERT teacher on e5 (400 steps; resumes)"
      # A checkpoint every 20 steps (~4 min here; the config's 100 are ~25 min), so a
      # session that ends without a signal loses little. It changes nothing trained.
      local tcfg="configs/teacher_colbert.py:backbone=e5"
      run $PY train.py --config "$tcfg" --workdir "$teacher" --config.train.checkpoint_every=20
      extra=",teacher_e5=$teacher/teacher"
      before="python train.py --config $tcfg --workdir \"$teacher\" --config.train.checkpoint_every=20 && "
    fi
    study "$page" "$OUT/$page" "settings=$setting,seeds=$seeds,arms=$arms$extra" "$before"
  done 3<<< "$STUDIES"
  echo "== $(date -u +%H:%M) done; render the README: $PY -m optical_jax.report --readme README.md docs/results.md"
}
main "$@"; exit   # one line: bash has read it before main starts
