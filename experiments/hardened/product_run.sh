#!/bin/bash
# One product run of the hardened recipe: `secure-ml fit` (capstone + hardened), then `secure-ml test` with
# configs/full_eval.yaml (the scorecard on all 2,000 test digits: clean, FGSM at 0.0308 and 0.1, PGD-20 at 0.1,
# membership inference, sponges). Writes into experiments/hardened/runs/RUN_NAME/ (fit.log, test.log, times.txt).
#   usage: product_run.sh RUN_NAME [extra fit args]      (TEST_ONLY=1: only the test of the run's last fit)
# Extra test args (e.g. AutoAttack flags) can be passed in TEST_ARGS.
set -e
ROOT="$(cd "$(dirname "$(realpath "$0")")/../.." && pwd)"
NAME="$1"; shift
DIR="$ROOT/experiments/hardened/runs/$NAME"
mkdir -p "$DIR" && cd "$DIR"
export PYTHONPATH="$ROOT" OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore
PY=/work/main/.venv/bin/python
DATA=/work/shared/data
t0=$(date +%s)
if [ -z "$TEST_ONLY" ]; then
  $PY -m secure_ml fit --config "$ROOT/configs/capstone.yaml" --config "$ROOT/configs/hardened.yaml" \
      --data.data_dir $DATA --data.download false --trainer.enable_progress_bar false "$@" > fit.log 2>&1
fi
t1=$(date +%s)
# the latest fit (a test run adds a version folder too)
V=$(dirname "$(dirname "$(ls lightning_logs/version_*/checkpoints/last.ckpt | sort -V | tail -1)")")
# shellcheck disable=SC2086
$PY -m secure_ml test --config "$V/config.yaml" --config "$ROOT/configs/full_eval.yaml" --ckpt_path "$V/checkpoints/last.ckpt" \
    --trainer.enable_progress_bar false $TEST_ARGS > test.log 2>&1
t2=$(date +%s)
echo "fit_s=$((t1-t0)) test_s=$((t2-t1)) version=$V" | tee -a times.txt
