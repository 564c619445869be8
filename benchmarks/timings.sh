#!/usr/bin/env bash
# Every timing benchmark of the README's table in one go, one after the other (run it on a quiet machine:
# each script prints ratios measured side by side, but a busy machine still widens their spread).
#   benchmarks/timings.sh [--data-dir DIR] [--out DIR]      (default: ../shared/data, benchmarks/out/<date>)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data
OUT=benchmarks/out/$(date -u +%Y%m%dT%H%M)
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) DATA="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "benchmarks/timings.sh: unknown option '$1' (expected --data-dir DIR or --out DIR)" >&2; exit 2 ;;
  esac
done
[ -d "$DATA/MNIST/raw" ] || { echo "benchmarks/timings.sh: '$DATA/MNIST/raw' not found; pass --data-dir DIR" >&2; exit 2; }
mkdir -p "$OUT"
PY=${PYTHON:-python}
export PYTHONWARNINGS=ignore
run() {  # name, command...
  local name=$1; shift
  echo "== $name: $*" | tee "$OUT/$name.log"
  local t0=$SECONDS
  "$@" 2>&1 | grep -v -i "warn" | tee -a "$OUT/$name.log" || echo "   $name FAILED (see $OUT/$name.log); going on" | tee -a "$OUT/$name.log"
  echo "   ($((SECONDS - t0)) s, load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$OUT/$name.log"
}
startup() {  # median of 3 wall times of `secure-ml fit --help` and of importing the service
  "$PY" - <<'PYEOF'
import statistics, subprocess, sys, time
for label, cmd in (("secure-ml fit --help", [sys.executable, "-m", "secure_ml", "fit", "--help"]),
                   ("import secure_ml.serving.app", [sys.executable, "-c", "import secure_ml.serving.app"])):
    times = []
    for _ in range(3):
        t = time.perf_counter(); subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    print(f"{label}: median {statistics.median(times):.2f} s of {', '.join(f'{x:.2f}' for x in times)}")
PYEOF
}
run startup startup
run train_step "$PY" benchmarks/train_step.py --data-dir "$DATA" --steps 30
run callback_share "$PY" benchmarks/callback_share.py --data-dir "$DATA" --rounds 4 --threads 2
run end_to_end "$PY" benchmarks/end_to_end.py --data-dir "$DATA" --rounds 2
run phase_times "$PY" benchmarks/phase_times.py --data-dir "$DATA"
run serve_load "$PY" benchmarks/serve_load.py --duration 15 --rounds 2
echo "logs in $OUT"
