#!/usr/bin/env bash
# The prepared GPU run of chapter 6: every method x 3 seeds on ONE GPU in ONE invocation (<= 7 min).
#
# The GPU machine receives only the repository working tree (no internet, no pip): it has torch,
# numpy and matplotlib, but not pycocoevalcap or Java, and the package is not installed there, so
# this script runs it from the tree (PYTHONPATH). Data: the shipped data_samples/iu_xray (the real
# R2Gen reports of all 2,955 studies; stand-in images except for a few real sample radiographs).
# Text metrics are computed afterwards, on a CPU, from the saved generations.
#
#   bash tools/gpu_run.sh OUT                 # on the GPU machine (OUT, or $OUT, is the output folder)
#   python -m camegrad_mini.rrg.experiment posthoc OUT/results      # then on a CPU with pycocoevalcap
#   cp -r OUT/results/. results/iu_xray_gpu/ && git add results/iu_xray_gpu
#
# The runs go concurrently as separate processes on the one GPU (a 7 M-parameter model leaves an
# H100 mostly idle). Each training stops early if it would overrun the budget (recorded as
# stopped_early in its summary). Checkpoints are deleted at the end: only small files come back.
#
# Knobs (environment): CAMEGRAD_GPU_CONFIG (default gpu_full; cpu_reduced checks the script on a
# CPU), CAMEGRAD_METHODS, CAMEGRAD_SEEDS, CAMEGRAD_JOBS, CAMEGRAD_BUDGET_S (whole script, default
# 420), CAMEGRAD_OVERRIDES (JSON of TrainConfig fields), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${1:-${OUT:-runs/gpu_run}}"
CONFIG="${CAMEGRAD_GPU_CONFIG:-gpu_full}"
METHODS="${CAMEGRAD_METHODS:-ls came pcgrad cagrad}"
SEEDS="${CAMEGRAD_SEEDS:-0 1 2}"
BUDGET_S="${CAMEGRAD_BUDGET_S:-420}"
OVERRIDES="${CAMEGRAD_OVERRIDES:-}"
[ -n "$OVERRIDES" ] || OVERRIDES='{}'
PY="${PYTHON:-python3}"
n_runs=$(( $(wc -w <<<"$METHODS") * $(wc -w <<<"$SEEDS") ))
JOBS="${CAMEGRAD_JOBS:-$n_runs}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# the image cache must be writable even where HOME is not
export CAMEGRAD_MINI_CACHE="${CAMEGRAD_MINI_CACHE:-${TMPDIR:-/tmp}/camegrad_mini_cache}"
start=$(date +%s)
mkdir -p "$OUT"
# checkpoints never leave the machine, even if a step below fails
trap 'find "$OUT" -name "*.pt" -delete 2>/dev/null || true' EXIT

{
  echo "date_utc: $(date -u '+%Y-%m-%d %H:%M:%S')"
  echo "config: $CONFIG  methods: $METHODS  seeds: $SEEDS  jobs: $JOBS  budget_s: $BUDGET_S"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"
  "$PY" -c "import sys, torch, numpy; print('python', sys.version.split()[0], 'torch', torch.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())"
} | tee "$OUT/env.txt"

# fail fast, with a readable message, if the tree or the environment is incomplete
"$PY" -c "import camegrad_mini.optim, camegrad_mini.rrg.train, camegrad_mini.rrg.experiment" \
  || { echo "error: cannot import camegrad_mini from the working tree" >&2; exit 2; }

# step time per method on the idle device first (LS without the wrapper, LS, CAME-Grad, ...)
"$PY" -m camegrad_mini.rrg.experiment bench --config "$CONFIG" --overrides "$OVERRIDES" --steps 30 --out "$OUT/bench.json"

# leave about 2.5 minutes for start-up, validation, test decoding and the export
elapsed=$(( $(date +%s) - start ))
max_train=$(( BUDGET_S - 150 - elapsed ))
[ "$max_train" -gt 30 ] || max_train=30
"$PY" -m camegrad_mini.rrg.experiment run --config "$CONFIG" --methods $METHODS --seeds $SEEDS \
  --out "$OUT/runs" --jobs "$JOBS" --max-train-seconds "$max_train" --overrides "$OVERRIDES" --no-resume

end=$(date +%s)
wall=$(( end - start ))
mkdir -p "$OUT/results"
cp "$OUT/env.txt" "$OUT/bench.json" "$OUT/results/"
"$PY" -m camegrad_mini.rrg.experiment export "$OUT/runs" "$OUT/results" \
  --meta "{\"wall_time_s\": $wall, \"script\": \"tools/gpu_run.sh\", \"config\": \"$CONFIG\", \"jobs\": $JOBS, \"budget_s\": $BUDGET_S}"
"$PY" -m camegrad_mini.rrg.experiment table "$OUT/results" || true
echo "gpu_run.sh: ${wall} s for the runs; results in $OUT/results"
