#!/usr/bin/env bash
# Issue 18's GPU check, on a machine with a CUDA GPU, in under 8 minutes (an H200):
#   1. install the project from this working tree: a fresh venv that sees the machine's own
#      torch, timm, pandas and numpy (--system-site-packages), or PYTHON=/path/python to
#      install into that interpreter;
#   2. benchmarks/dp_overhead.py on CUDA: time and peak memory (max_memory_allocated) of a DP
#      step over a non-private one, ViT-B/16 and NFNet-F0 at 224 px batch 64, the CNN at 512;
#   3. a short nfnet_cifar-shaped search (dm_nfnet_f0, random weights, synthetic CIFAR-sized
#      data, 4 trials) with two trials sharing the GPU (--gpus-per-trial 0.5);
#   4. one JSON of both: $OUT/gpu_check.json when OUT is set, else the path given.
# Each part has its own `timeout`; a part that fails or runs out is recorded (its status and
# the tail of its log in the JSON) and the next still runs. Exit status 0: all parts passed.
#
#   benchmarks/gpu_check.sh [--dry-run] [OUTPUT.json]
#   DRY_RUN=1 benchmarks/gpu_check.sh OUTPUT.json   # the same steps on CPU at toy size, no
#                                                   # install (this checkout's .venv): a test
#
# The GPU machine has no internet: bring wheels of what it lacks (ray, opacus, optuna,
# dp-accounting and their dependencies), made on a machine with internet from this project's
# tested environment, for the GPU machine's Python version (`python3 -V` there: 3.12 on this
# workplace's H200 machines, 3.11 here), and point WHEELS there:
#   .venv/bin/pip freeze --all --exclude-editable \
#       | grep -viE '^(pip|torch|torchvision|triton|timm|numpy|pandas|nvidia-|cuda-)' > reqs.txt
#   pip download -d wheels --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -r reqs.txt
#   WHEELS=wheels OUT=out benchmarks/gpu_check.sh
# (setuptools is in the list: pip builds the project with it. Without WHEELS, pip uses PyPI.)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DRY_RUN="${DRY_RUN:-0}"
if [[ "${1:-}" == "--dry-run" ]]; then
    DRY_RUN=1
    shift
fi
if [[ $# -gt 0 ]]; then
    OUTPUT="$1"
elif [[ -n "${OUT:-}" ]]; then
    OUTPUT="$OUT/gpu_check.json"
else
    echo "error: give the output JSON's path, or set OUT to a folder for gpu_check.json." >&2
    exit 2
fi
mkdir -p "$(dirname "$OUTPUT")"
# The work folder holds the search's checkpoints (hundreds of MB with NFNet-F0): it stays out
# of OUT and goes at the end (KEEP_WORK=1 keeps it); the parts' logs go beside the JSON.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
LOGS="${OUTPUT%.json}_logs"
finish() {
    mkdir -p "$LOGS" && cp "$WORK"/*.log "$LOGS"/ 2>/dev/null || true
    [[ "${KEEP_WORK:-0}" == 1 ]] && echo "work folder kept: $WORK" || rm -rf "$WORK"
}
trap finish EXIT
export RAY_USAGE_STATS_ENABLED=0 PYTHONWARNINGS=ignore

# part NAME SECONDS COMMAND…: run it under its own timeout, log it, record status and time.
part() {
    local name="$1" limit="$2" started status=0
    shift 2
    started="$(date +%s.%N)"
    printf '%q ' "$@" >"$WORK/$name.command"
    echo "== $name (at most $limit s)"
    timeout --kill-after=15 "$limit" "$@" >"$WORK/$name.log" 2>&1 || status=$?
    tail -n 25 "$WORK/$name.log"
    printf '%s\t%s\t%s\n' "$name" "$status" \
        "$(awk "BEGIN { print $(date +%s.%N) - $started }")" >>"$WORK/parts.tsv"
    echo "== $name: exit status $status"
}

if [[ "$DRY_RUN" == 1 ]]; then
    touch "$WORK/dry_run"
    PY="${PYTHON:-$ROOT/.venv/bin/python}"
    [[ -x "$PY" ]] || PY="$(command -v python3)"
    # Opacus's engines are left out of the dry run (15 fresh processes become 6): it checks
    # this script's parts, not the benchmark's figures; a real run has them.
    DP_ARGS=(--dry-run --device cpu --jobs 2 --skip-opacus)
    SEARCH_FLAGS=(--gpus-per-trial 0 --num-cpus 2 --num-samples 2)
    SEARCH_SETTINGS=(device=cpu model=test_nfnet synthetic_examples=256 image_size=32
        batch_size=64 max_physical_batch_size=32 augmult=2)
    DP_LIMIT=240 SEARCH_LIMIT=240
else
    if [[ -n "${PYTHON:-}" ]]; then
        PY="$PYTHON"
    else
        python3 -m venv --system-site-packages "$WORK/venv" || {
            echo "error: python3 -m venv failed; set PYTHON to an interpreter to install into." >&2
            exit 2
        }
        PY="$WORK/venv/bin/python"
    fi
    PIP=("$PY" -m pip install --disable-pip-version-check -e "$ROOT")
    [[ -n "${WHEELS:-}" ]] && PIP+=(--no-index --find-links "$WHEELS")
    # Budgets: 90 + 240 + 120 s, and a few seconds around them: under 8 minutes.
    part install 90 "${PIP[@]}"
    # ViT first: the model this check is most about; Opacus's slow engines last per model,
    # and each mode gives up after 40 s (a row with an error) so the three models fit.
    DP_ARGS=(--device cuda --models vit,nfnet,cnn --steps 10 --warmup 3 --opacus-steps 3
        --mode-timeout 40)
    SEARCH_FLAGS=(--gpus-per-trial 0.5 --num-samples 4)
    SEARCH_SETTINGS=(device=cuda model=dm_nfnet_f0 synthetic_examples=1024 image_size=128
        batch_size=256 augmult=4)
    DP_LIMIT=240 SEARCH_LIMIT=120
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
            >"$WORK/gpu.txt" || true
    fi
fi
git -C "$ROOT" rev-parse HEAD >"$WORK/commit.txt" 2>/dev/null || rm -f "$WORK/commit.txt"

part dp_overhead "$DP_LIMIT" "$PY" benchmarks/dp_overhead.py "${DP_ARGS[@]}" \
    --json "$WORK/dp_overhead.json"

# nfnet_cifar's recipe (the space's fixed settings and searched ranges), on synthetic
# CIFAR-sized images (3 × 32 × 32, resized to image_size) and no pretrained weights (offline).
part search "$SEARCH_LIMIT" "$PY" search/run.py --space nfnet_cifar "${SEARCH_FLAGS[@]}" \
    --storage-path "$WORK/search" --name nfnet_cifar_check --seed 0 \
    --set dataset=synthetic synthetic_channels=3 synthetic_image_size=32 pretrained=false \
    epochs=1 validation_fraction=0.2 "${SEARCH_SETTINGS[@]}"

"$PY" benchmarks/gpu_check.py "$WORK" "$OUTPUT"
