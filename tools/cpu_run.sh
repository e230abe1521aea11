#!/usr/bin/env bash
# The committed CPU run of chapter 6: the phantom IU X-Ray set in full (2,069 training, 296
# validation and 590 test studies), LS and CAME-Grad x 5 seeds, on a 2-core machine in about
# 45 minutes. Its small outputs are committed under results/iu_xray_cpu/ and the chapter reads them.
#
#   bash tools/cpu_run.sh                     # writes runs/cpu_run/ and then results/iu_xray_cpu/
#
# Images: the phantom set (the real R2Gen reports and labels of every study, with drawn images in
# which each finding has a known visual sign; camegrad_mini.rrg.standin), plus the few shipped
# real radiographs. Nothing is downloaded. Two trainings run at a time, one thread each.
# Checkpoints stay in runs/ (git-ignored); only small files are exported.
#
# Knobs (environment): CAMEGRAD_CPU_CONFIG (default cpu_full), CAMEGRAD_METHODS (default
# "ls came"), CAMEGRAD_SEEDS (default "0 1 2 3 4"), CAMEGRAD_JOBS (default 2), CAMEGRAD_OUT
# (default runs/cpu_run), CAMEGRAD_RESULTS_DIR (default results/iu_xray_cpu), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG="${CAMEGRAD_CPU_CONFIG:-cpu_full}"
METHODS="${CAMEGRAD_METHODS:-ls came}"
SEEDS="${CAMEGRAD_SEEDS:-0 1 2 3 4}"
JOBS="${CAMEGRAD_JOBS:-2}"
OUT="${CAMEGRAD_OUT:-runs/cpu_run}"
DEST="${CAMEGRAD_RESULTS_DIR:-results/iu_xray_cpu}"
PY="${PYTHON:-.venv/bin/python}"
export PYTHONUNBUFFERED=1
start=$(date +%s)
mkdir -p "$OUT"

{
  echo "date_utc: $(date -u '+%Y-%m-%d %H:%M:%S')"
  echo "script: tools/cpu_run.sh  config: $CONFIG  methods: $METHODS  seeds: $SEEDS  jobs: $JOBS"
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
  "$PY" -c "import sys, torch, numpy; print('python', sys.version.split()[0], 'torch', torch.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())"
} | tee "$OUT/env.txt"

"$PY" -m camegrad_mini.rrg.experiment run --config "$CONFIG" --methods $METHODS --seeds $SEEDS \
  --out "$OUT/runs" --jobs "$JOBS" --overrides '{"num_threads": 1}'
train_end=$(date +%s)
# clinical efficacy, text metrics (METEOR where Java is installed), diversity, classifier AUROC
"$PY" -m camegrad_mini.rrg.experiment posthoc "$OUT/runs"
end=$(date +%s)
cp "$OUT/env.txt" "$OUT/runs/env.txt"
mkdir -p "$DEST"
"$PY" -m camegrad_mini.rrg.experiment export "$OUT/runs" "$DEST" \
  --meta "{\"wall_time_s\": $((end - start)), \"train_wall_time_s\": $((train_end - start)), \"script\": \"tools/cpu_run.sh\", \"config\": \"$CONFIG\", \"jobs\": $JOBS}"
cp "$OUT/env.txt" "$DEST/env.txt"
"$PY" -m camegrad_mini.rrg.experiment table "$DEST" || true
echo "cpu_run.sh: $((end - start)) s in all ($((train_end - start)) s training); results in $DEST"
