#!/usr/bin/env bash
# GPU sweep record (issue: sweep and report): a small real sweep on one H100/H200, in ONE call.
#
#   bash benchmarks/gpu_sweep.sh          # writes $OUT (the device tool copies it back) or results/gpu_sweep/<time>/
#
# vgg19 and resnet50 x freeze 11 / 50% / all, 1 seed, 2 epochs, on a synthetic 100-class set at 224 px
# (PER_CLASS images per class, 300 by default: rendering 60,000 224 px JPEGs would take ~5 minutes),
# bf16, channels_last, batch 256 (the recipe's 32 cannot fill an H100). No pretrained weights can be
# fetched on the device machines, so the cells train from scratch (--no-pretrained) and there is no
# zero-training baseline (--no-baseline): the numbers compare speed and the pipeline, not transfer.
# Output (at most 8 files: the device tool's limit): report.md, report.csv, plots.tar.gz, sweep.tar.gz
# (manifest, state, logs, every cell's run directory without its weights), gpu.log. Same python
# requirements as benchmarks/gpu.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PER_CLASS=${PER_CLASS:-300}
BATCH=${BATCH:-256}
EPOCHS=${EPOCHS:-2}
DEVICE=${DEVICE:-cuda}
AMP=${AMP:-bf16}
IMAGE=${IMAGE:-224}
CLASSES=${CLASSES:-100}
BACKBONES=${BACKBONES:-vgg19,resnet50}
# CPU smoke test of this script (what was run without a GPU):
#   DEVICE=cpu AMP=off IMAGE=32 CLASSES=4 PER_CLASS=12 BACKBONES=test_resnet EPOCHS=1 BATCH=8 \
#   OUT=/tmp/gpu-sweep-smoke WORK=/tmp/gpu-sweep-work bash benchmarks/gpu_sweep.sh
WORK=${WORK:-/tmp/tlbench-gpu}
OUT_DIR=${OUT:-results/gpu_sweep/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT_DIR" "$WORK"
export TLBENCH_DATA=$WORK/data TLBENCH_CACHE=$WORK/cache PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
exec > >(tee "$OUT_DIR/gpu.log") 2>&1
"$PY" -c "import torch; print(torch.__version__, torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
DATA=$WORK/synth-${CLASSES}x$PER_CLASS-$IMAGE
[[ -f $DATA/.complete ]] || "$PY" -m tlbench data synth "$DATA" --classes "$CLASSES" --per-class "$PER_CLASS" \
    --size "$IMAGE"
"$PY" -m tlbench sweep --backbones "$BACKBONES" --freeze 11,50%,all --seeds 0 --out "$WORK/sweep" \
    --no-baseline --data "$DATA" --epochs "$EPOCHS" --image-size "$IMAGE" --batch-size "$BATCH" \
    --no-pretrained --device "$DEVICE" --amp "$AMP" --channels-last on
"$PY" -m tlbench report "$WORK/sweep" --format markdown --out "$OUT_DIR/report.md" --plots "$WORK/plots"
"$PY" -m tlbench report "$WORK/sweep" --format csv --out "$OUT_DIR/report.csv"
tar czf "$OUT_DIR/plots.tar.gz" -C "$WORK" plots
# the sweep folder without the weights (they stay in $WORK)
tar czf "$OUT_DIR/sweep.tar.gz" -C "$WORK" --exclude model --exclude checkpoint.pt sweep
echo "done: $OUT_DIR"
