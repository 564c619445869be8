#!/usr/bin/env bash
# One prepared GPU benchmark: benchmarks/train_step.py on CUDA, then the capstone `secure-ml fit` + `secure-ml test`,
# printing absolute ms/step and the ratios. Refuses to run without CUDA; --cpu-dry-run checks the whole script
# on CPU with tiny sizes (smoke config, a few steps) so it is known to work before a GPU is borrowed.
#
#   benchmarks/gpu.sh [--data-dir DIR] [--python PY] [--out DIR] [--steps N] [--cpu-dry-run]
#
# Defaults: --data-dir ../shared/data (or $SECURE_ML_DATA_DIR), --python .venv/bin/python (or python3),
# --out a fresh temporary folder (kept; printed at the end), --steps 100 timed rounds of train_step.py.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${SECURE_ML_DATA_DIR:-$REPO/../shared/data}"
PY="$REPO/.venv/bin/python"
[ -x "$PY" ] || PY="$(command -v python3)"
OUT=""
STEPS=100
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) DATA="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --cpu-dry-run) DRY=1; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "benchmarks/gpu.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
DATA="$(cd "$DATA" 2>/dev/null && pwd)" || { echo "benchmarks/gpu.sh: --data-dir '$DATA' does not exist (it must hold MNIST/raw)" >&2; exit 2; }
[ -f "$DATA/MNIST/raw/train-images-idx3-ubyte" ] || { echo "benchmarks/gpu.sh: no MNIST/raw/train-images-idx3-ubyte under '$DATA'" >&2; exit 2; }
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

if [ "$DRY" = 1 ]; then
  DEVICE=cpu; ACCEL=cpu; TS_ARGS=(--steps 3 --warmup 1 --max-seconds 30); CAP_EXTRA=(--config "$REPO/configs/smoke.yaml")
  echo "== CPU DRY RUN: tiny sizes, the numbers below mean nothing =="
else
  if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)"; then
    echo "benchmarks/gpu.sh: no CUDA device is visible to torch (torch.cuda.is_available() is False); run this on a CUDA machine, or pass --cpu-dry-run to check the script on CPU" >&2
    exit 2
  fi
  DEVICE=cuda; ACCEL=gpu; TS_ARGS=(--steps "$STEPS" --warmup 10 --max-seconds 300); CAP_EXTRA=()
fi
OUT="${OUT:-$(mktemp -d -t secure-ml-gpu-XXXXXX)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

echo "== $(date -u +%Y-%m-%dT%H:%MZ)  $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo no-git)"
"$PY" -c "import torch; print('torch', torch.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU', '| cpu threads', torch.get_num_threads())"
command -v nvidia-smi >/dev/null && [ "$DRY" = 0 ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

echo; echo "== 1/2 one training step per recipe (benchmarks/train_step.py --device $DEVICE)"
"$PY" "$REPO/benchmarks/train_step.py" --device "$DEVICE" --data-dir "$DATA" --json "$OUT/train_step.json" "${TS_ARGS[@]}"

echo; echo "== 2/2 capstone: secure-ml fit + secure-ml test (accelerator $ACCEL)"
CAP=(--config "$REPO/configs/capstone.yaml" "${CAP_EXTRA[@]}" --data.data_dir "$DATA" --data.download false --trainer.accelerator "$ACCEL" --trainer.devices 1)
cd "$OUT"
t0=$(date +%s.%N)
"$PY" -m secure_ml fit "${CAP[@]}" > "$OUT/fit.log" 2>&1 || { tail -20 "$OUT/fit.log"; exit 1; }
t1=$(date +%s.%N)
RUN="$(ls -d "$OUT"/lightning_logs/version_* | sort -V | tail -1)"
BEST="$(ls "$RUN"/checkpoints/best-*.ckpt | head -1)"
"$PY" -m secure_ml test "${CAP[@]}" --ckpt_path "$BEST" > "$OUT/test.log" 2>&1 || { tail -20 "$OUT/test.log"; exit 1; }
t2=$(date +%s.%N)

"$PY" - "$OUT" "$t0" "$t1" "$t2" "$BEST" <<'EOF'
import json, sys, torch
out, t0, t1, t2, best = sys.argv[1], *map(float, sys.argv[2:5]), sys.argv[5]
ts = json.load(open(f"{out}/train_step.json"))
print(f"\n== summary ({ts['device']}, batch {ts['batch_size']}, {ts['steps']} timed rounds, medians)")
print(f"{'recipe':<20} {'ms/step':>9} {'x plain+fgsm':>13}")
for name, ms in ts["median_ms"].items():
    print(f"{name:<20} {ms:9.2f} {ts['ratio_to_plain_fgsm'][name]:12.2f}x")
ck = torch.load(best, map_location="cpu", weights_only=True)
steps = ck["secure_ml_dp"]["selection_steps"] if "secure_ml_dp" in ck else ck["global_step"]
fit, test = t1 - t0, t2 - t1
print(f"capstone fit: {fit:.1f} s for {steps} DP steps ({1e3 * fit / max(steps, 1):.1f} ms/step incl. validation, scorecard, start-up)")
print(f"capstone test: {test:.1f} s   fit+test: {fit + test:.1f} s   logs: {out}")
EOF
