#!/bin/bash
# One product run of the hardened recipe: secure-ml fit (capstone + hardened) then secure-ml test on all 2,000 test
# digits (FGSM at both radii and PGD-20 on all of them, not the per-epoch subsets). usage: product_run.sh RUN_NAME [extra fit args]
set -e
ROOT="$(cd "$(dirname "$(realpath "$0")")/../.." && pwd)"
NAME="$1"; shift
DIR="$ROOT/experiments/hardened/runs/$NAME"
mkdir -p "$DIR" && cd "$DIR"
export PYTHONPATH="$ROOT" OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore
PY=/work/main/.venv/bin/python
DATA=/work/shared/data
t0=$(date +%s)
$PY -m secure_ml fit --config "$ROOT/configs/capstone.yaml" --config "$ROOT/configs/hardened.yaml" \
    --data.data_dir $DATA --data.download false --trainer.enable_progress_bar false "$@" > fit.log 2>&1
t1=$(date +%s)
V=$(ls -d lightning_logs/version_* | sort -V | tail -1)
$PY -m secure_ml test --config "$V/config.yaml" --ckpt_path "$V/checkpoints/last.ckpt" --trainer.enable_progress_bar false \
    --robustness.max_samples 2000 --robustness.pgd_max_samples 2000 --robustness.pgd_steps 20 > test.log 2>&1
t2=$(date +%s)
echo "fit_s=$((t1-t0)) test_s=$((t2-t1)) version=$V" | tee times.txt
