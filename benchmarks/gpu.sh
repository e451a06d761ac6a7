#!/usr/bin/env bash
# GPU record: tlbench's throughput on one H100 / H200, in ONE call, in well under 8 minutes.
#
#   bash benchmarks/gpu.sh                  # from anywhere; it cd's to the repository root
#
# What it measures (all bf16 autocast, channels_last, 224 px, synthetic input on the GPU unless said):
#   1. `tlbench bench` train + infer, eager: vgg19 --freeze 11, resnet50 --freeze none, resnet50 --freeze all
#   2. the same three with --compile
#   3. `tlbench data synth` (100 classes x PER_CLASS, 224 px, imagefolder; rendered in the background
#      during 1-2, on 2-3 of the machine's cores) and a 2-epoch `tlbench run vgg19 --freeze 11
#      --no-pretrained --channels-last on --compile off --amp bf16 --device cuda` on it: the end-to-end epoch
#   4. `tlbench bench vgg19 --freeze 11 --data <that set>`: loader + augmentation alone, the step alone,
#      both together (data- or step-bound?)
#   5. the pytest-benchmark suites with --device cuda --record (data pipeline; model step)
#   6. summary.md: GPU, driver, versions, settings, vgg19 freeze-11 train MFU against the 60 % target,
#      end-to-end epoch images/s against the bench step at the same batch (target >= 90 %)
#   7. scaling, on a machine with 2 or more GPUs: `tlbench bench --nproc N --mode train` for vgg19
#      --freeze 11 and resnet50 --freeze none, N = 2, 4, 8 (as many as the machine has): the train step
#      under DDP (nccl, batch BATCH per GPU) against one GPU in the same call (scaling_efficiency)
# Run order: 1, compiled vgg19, 3 (once the data set is there), 4, compiled resnet50 x 2, 7, 5, 6; a step
# that would start after BUDGET_S is skipped (and listed as skipped), so the least important go last.
#
# Output: $OUT if set (the device tool copies it back), else results/gpu/<time>/:
#   summary.md, bench_all.csv (every bench row), bench/*.{csv,json}, run/ (config, metrics, summary),
#   bench_data_gpu.{json,md}, steps.tsv (each step's status and seconds), gpu.log (everything printed).
# The data set, the decode cache and the run's weights stay in $WORK (default /tmp/tlbench-gpu): they
# are large (30,000 JPEGs; a 4.5 GB uint8 cache) and never go to $OUT.
#
# Python: the machine's python3 (>= 3.11) with torch + CUDA preinstalled. The repository is installed
# with `python3 -m pip install -e . --no-deps --no-build-isolation` (so pip never touches torch), and
# timm typer rich pandas matplotlib safetensors pyarrow huggingface_hub pytest pytest-benchmark are
# installed only if missing. Without network (the device machines have none) a missing package cannot
# be installed: the script says which and stops; the repository itself also runs from PYTHONPATH, so a
# failed editable install is not fatal.
#
# Time (H100, 16 cores; estimates, each step also has its own timeout and the whole script a budget,
# BUDGET_S, after which the remaining steps are skipped and marked so in steps.tsv):
#   setup ~10 s; eager benches 3 x ~20 s; compiled benches 3 x ~40-80 s (inductor, cold cache; the
#   resnet50 inference graph is reused from the FX graph cache by the second resnet50 run); data synth
#   ~2-3 min in the background (30,000 images: PER_CLASS=300 instead of 600 because rendering + JPEG
#   encoding of 60,000 images takes ~5 min on the 2 threads `data synth` uses); decode into the cache
#   ~15 s; run 2 epochs x ~4 s + validation; data-mode bench ~20 s; pytest suites ~60 s; scaling ~40 s per
#   call (N rank processes start, build and warm up; then one GPU), 2 calls per N: on an 8-GPU machine
#   give it BUDGET_S=700.
#
# Knobs (environment): PYTHON (python3), BATCH (256: the recipe's 32 cannot fill an H100; the run uses
# the same batch so that its epoch and the bench step compare), PER_CLASS (300), CLASSES (100),
# IMAGE (224), DEVICE (cuda), AMP (bf16), VGG (vgg19), RESNET (resnet50), EPOCHS (2), WARMUP (5),
# STEPS (20), REPEATS (3), SKIP_COMPILE (0), SKIP_PYTEST (0), SKIP_SCALING (0), BUDGET_S (420),
# WORK (/tmp/tlbench-gpu). Scaling needs DEVICE=cuda (the CPU smoke test below never runs it).
# SMOKE=1: the same script on the CPU at tiny sizes (vgg11 and test_resnet at 32 px, 10 x 12 images,
# one epoch, no compile, no pytest suites, no scaling), so that a broken script fails CI
# (tests/test_gpu_script.py runs it) rather than its next run on a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

if [[ ${SMOKE:-0} == 1 ]]; then
    : "${DEVICE:=cpu}" "${AMP:=off}" "${IMAGE:=32}" "${BATCH:=4}" "${PER_CLASS:=8}" "${CLASSES:=10}"
    : "${VGG:=vgg11}" "${RESNET:=test_resnet}" "${EPOCHS:=1}" "${WARMUP:=0}" "${STEPS:=1}" "${REPEATS:=1}"
    : "${SKIP_COMPILE:=1}" "${SKIP_PYTEST:=1}" "${SKIP_SCALING:=1}" "${BUDGET_S:=600}"
fi

PY=${PYTHON:-python3}
BATCH=${BATCH:-256}
PER_CLASS=${PER_CLASS:-300}
CLASSES=${CLASSES:-100}
IMAGE=${IMAGE:-224}
DEVICE=${DEVICE:-cuda}
AMP=${AMP:-bf16}
VGG=${VGG:-vgg19}
RESNET=${RESNET:-resnet50}
EPOCHS=${EPOCHS:-2}
WARMUP=${WARMUP:-5}
STEPS=${STEPS:-20}
REPEATS=${REPEATS:-3}
SKIP_COMPILE=${SKIP_COMPILE:-0}
SKIP_PYTEST=${SKIP_PYTEST:-0}
SKIP_SCALING=${SKIP_SCALING:-0}
BUDGET_S=${BUDGET_S:-420}
WORK=${WORK:-${TMPDIR:-/tmp}/tlbench-gpu}
OUT_DIR=${OUT:-results/gpu/$(date +%Y%m%d-%H%M%S)}

mkdir -p "$OUT_DIR/bench" "$OUT_DIR/run" "$WORK"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
exec > >(tee -a "$OUT_DIR/gpu.log") 2>&1

export HF_HUB_OFFLINE=1                      # benchmarks use random weights; never wait on the hub
export TLBENCH_CACHE=$WORK/cache             # the packed decode cache (GBs): not under $OUT
export TLBENCH_DATA=$WORK/data
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

START=$(date +%s)
STEPS_TSV=$OUT_DIR/steps.tsv
printf 'step\tstatus\tseconds\n' >"$STEPS_TSV"
say() { printf '\n== [%4ss] %s\n' "$(($(date +%s) - START))" "$*"; }
left() { echo $((BUDGET_S - ($(date +%s) - START))); }

# step NAME LIMIT_S CMD...: run CMD with a timeout of min(LIMIT_S, what is left of the budget),
# record its status; skip it when less than 20 s are left. Never stops the script.
step() {
    local name=$1 limit=$2 rc t0
    shift 2
    local remaining
    remaining=$(left)
    if ((remaining < 20)); then
        say "SKIP $name (budget of ${BUDGET_S}s spent)"
        printf '%s\tskipped (budget)\t0\n' "$name" >>"$STEPS_TSV"
        return 0
    fi
    ((limit > remaining)) && limit=$remaining
    say "$name (limit ${limit}s)"
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    local status=ok
    ((rc == 124 || rc == 137)) && status="timeout (${limit}s)"
    ((rc != 0 && rc != 124 && rc != 137)) && status="failed (exit $rc)"
    printf '%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - t0))" >>"$STEPS_TSV"
    return 0
}

# -- 0. python, packages, the repository -------------------------------------------------------------
say "setup: $($PY --version 2>&1) at $(command -v "$PY")"
if ! $PY -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "gpu.sh: tlbench needs Python >= 3.11; set PYTHON=..." | tee "$OUT_DIR/summary.md"
    exit 1
fi
missing=$($PY - <<'EOF'
import importlib.util
mods = {"timm": "timm", "typer": "typer", "rich": "rich", "pandas": "pandas", "matplotlib": "matplotlib",
        "safetensors": "safetensors", "pyarrow": "pyarrow", "huggingface_hub": "huggingface_hub",
        "pytest": "pytest", "pytest_benchmark": "pytest-benchmark"}
print(" ".join(pkg for mod, pkg in mods.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [[ -n $missing ]]; then
    say "installing missing packages: $missing"
    # shellcheck disable=SC2086
    $PY -m pip install -q $missing || echo "gpu.sh: could not install: $missing (offline?)"
fi
$PY -m pip install -q -e . --no-deps --no-build-isolation >/dev/null 2>&1 \
    || echo "gpu.sh: editable install failed; running tlbench from PYTHONPATH=$REPO"
if ! $PY -c 'import torch, timm, typer, rich, tlbench.bench.measure'; then
    echo "gpu.sh: the environment is incomplete (see above)" | tee "$OUT_DIR/summary.md"
    exit 1
fi
TL=("$PY" -m tlbench)
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv \
    >"$OUT_DIR/nvidia-smi.csv" 2>/dev/null || echo "no nvidia-smi" >"$OUT_DIR/nvidia-smi.csv"
cat "$OUT_DIR/nvidia-smi.csv"
$PY - <<'EOF' >"$OUT_DIR/env.json"
import json
from tlbench.train.env import environment
import torch
print(json.dumps(environment("cuda" if torch.cuda.is_available() else "cpu"), indent=2))
EOF

# -- 3a. the synthetic data set, rendered in the background (CPU) while the GPU benches run ---------
DATA=$WORK/data/synth-${CLASSES}x${PER_CLASS}-${IMAGE}
SYNTH_PID=
if [[ ! -f $DATA/.complete ]]; then
    rm -rf "$DATA"
    say "data synth in the background: $CLASSES x $PER_CLASS at ${IMAGE}px -> $DATA"
    (
        t0=$(date +%s)
        "${TL[@]}" data synth "$DATA" --format imagefolder --classes "$CLASSES" --per-class "$PER_CLASS" \
            --size "$IMAGE" >"$OUT_DIR/synth.log" 2>&1
        rc=$?
        printf 'data synth (background)\t%s\t%s\n' "$([[ $rc == 0 ]] && echo ok || echo "failed (exit $rc)")" \
            "$(($(date +%s) - t0))" >>"$STEPS_TSV"
    ) &
    SYNTH_PID=$!
fi

# bench TAG BACKBONES FREEZE [JSON_EXTRA]: `tlbench bench` through its Python entry point
# (tlbench.bench.runner.run_bench_command, which is what the command runs, with BenchOptions built
# from JSON: warm-up/steps/repeats included), writing $OUT_DIR/bench/TAG.{csv,json}.
bench() {
    local tag=$1 backbones=$2 freeze=$3 extra=${4:-"{}"}
    local opts
    opts=$(
        $PY - "$freeze" "$extra" "$OUT_DIR/bench/$tag.csv" <<EOF
import json, sys
freeze, extra, out = sys.argv[1:]
opts = dict(freeze=freeze, batch_size=$BATCH, image_size=$IMAGE, device="$DEVICE", amp="$AMP",
            channels_last="on", compile="off", mode="both", warmup=$WARMUP, steps=$STEPS, repeats=$REPEATS, out=out)
opts.update(json.loads(extra))
print(json.dumps(opts))
EOF
    )
    step "bench $tag" "${5:-240}" "$PY" -c \
        'import json, sys; from tlbench.bench import BenchOptions; from tlbench.bench.runner import run_bench_command as run; sys.exit(run(sys.argv[1], BenchOptions(**json.loads(sys.argv[2])), as_json=False, quiet=False))' \
        "$backbones" "$opts"
}

# The order packs the work: the eager benches and the first compiled one run while the data set renders
# in the background; the end-to-end run follows as soon as it is there; the slowest (compiled resnet50)
# and the pytest suites come last, so that a spent budget skips the least important steps.

# -- 1. eager ------------------------------------------------------------------------------------------
bench "eager-$VGG-f11" "$VGG" 11 '{}' 120
bench "eager-$RESNET-fnone" "$RESNET" none '{}' 120
bench "eager-$RESNET-fall" "$RESNET" all '{}' 120

# -- 2a. torch.compile, VGG ----------------------------------------------------------------------------
[[ $SKIP_COMPILE != 1 ]] && bench "compile-$VGG-f11" "$VGG" 11 '{"compile": true}' 180

# -- 3b. the end-to-end run on the synthetic set -------------------------------------------------------
if [[ -n $SYNTH_PID ]]; then
    say "waiting for data synth"
    wait "$SYNTH_PID"
fi
RUN_DIR=$WORK/run-$VGG-f11-$(date +%s)
if [[ -f $DATA/.complete ]]; then
    step "run $VGG --freeze 11, $EPOCHS epochs" 240 "${TL[@]}" run "$VGG" --freeze 11 --data "$DATA" \
        --epochs "$EPOCHS" --batch-size "$BATCH" --image-size "$IMAGE" --no-pretrained --channels-last on \
        --compile off --amp "$AMP" --device "$DEVICE" --out "$RUN_DIR" --quiet
    for f in summary.json metrics.csv config.json env.json per_class.csv train_validation_acc.png \
        train_validation_loss.png; do
        [[ -f $RUN_DIR/$f ]] && cp "$RUN_DIR/$f" "$OUT_DIR/run/"
    done
    # -- 4. the real input pipeline: loader + augmentation alone, the step alone, both together
    bench "data-$VGG-f11" "$VGG" 11 "{\"mode\": \"train\", \"data\": \"$DATA\"}" 150
else
    echo "gpu.sh: no data set at $DATA (see synth.log); skipping the run and the data bench"
fi

# -- 2b. torch.compile, ResNet-50 ----------------------------------------------------------------------
if [[ $SKIP_COMPILE != 1 ]]; then
    bench "compile-$RESNET-fnone" "$RESNET" none '{"compile": true}' 180
    bench "compile-$RESNET-fall" "$RESNET" all '{"compile": true}' 150
fi

# -- 7. scaling: the train step under DDP on 2, 4, 8 GPUs against one (as many GPUs as there are) -----
NGPU=0
if [[ $DEVICE == cuda* && $SKIP_SCALING != 1 ]]; then
    NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi
if ((NGPU >= 2)); then
    for n in 2 4 8; do
        ((n > NGPU)) && break
        ddp="{\"mode\": \"train\", \"nproc\": $n, \"device\": \"cuda\", \"baseline_loop\": false}"
        bench "ddp$n-$VGG-f11" "$VGG" 11 "$ddp" 150
        bench "ddp$n-$RESNET-fnone" "$RESNET" none "$ddp" 150
    done
else
    say "scaling: skipped ($NGPU GPU(s) with DEVICE=$DEVICE; --nproc needs 2 or more CUDA GPUs)"
fi

# -- 5. the pytest-benchmark suites on the GPU ---------------------------------------------------------
if [[ $SKIP_PYTEST != 1 ]]; then
    step "pytest data pipeline + model step" 150 "$PY" -m pytest benchmarks/test_data_pipeline.py \
        benchmarks/test_model_step.py --benchmark-only -q -p no:cacheprovider --record --device "$DEVICE"
    cp results/bench_data_gpu.json results/bench_data_gpu.md "$OUT_DIR/" 2>/dev/null || true
    # tlbench eval's protocols on the GPU: the linear probe's search, k-NN 50k x 50k x 2048, 600 episodes
    step "pytest eval protocols" 120 "$PY" -m pytest benchmarks/test_eval_speed.py -q -s -p no:cacheprovider \
        --device "$DEVICE"
fi

# -- 6. the summary ------------------------------------------------------------------------------------
say "summary"
$PY - "$OUT_DIR" "$VGG" "$BATCH" "$IMAGE" "$AMP" <<'EOF'
import csv, json, sys
from pathlib import Path

out, vgg, batch, image, amp = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
MFU_TARGET, E2E_TARGET = 0.60, 0.90

rows = []
for path in sorted((out / "bench").glob("*.json")):
    data = json.loads(path.read_text())
    for r in data.get("rows", []):
        rows.append({"file": path.stem, **r})
if rows:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with (out / "bench_all.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in r.items()})

env = json.loads((out / "env.json").read_text()) if (out / "env.json").is_file() else {}
smi = (out / "nvidia-smi.csv").read_text().strip().splitlines() if (out / "nvidia-smi.csv").is_file() else []

def f(v, spec=",.0f", scale=1.0):
    return "-" if v is None or v == "" else format(float(v) * scale, spec)

def find(tag):
    return next((r for r in rows if r["file"] == tag and r.get("status") == "ok"), None)

lines = ["# tlbench GPU record", ""]
lines += [f"- GPU: {env.get('gpu')}; nvidia-smi: {smi[1] if len(smi) > 1 else 'n/a'}"]
lines += [f"- torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, timm {env.get('timm')}, "
          f"python {env.get('python')}, tlbench {env.get('tlbench')} ({env.get('tlbench_commit')})"]
lines += [f"- settings: {image} px, batch {batch} (halved on OOM; the batch used is in the table), amp {amp}, "
          f"channels_last, synthetic input on the GPU, random weights, median of repeats"]
lines += ["", "| run | backbone | freeze | batch | train img/s | train MFU | vs plain loop | infer img/s | "
          "infer MFU | GFLOP/img train | peak MiB train | compiled |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
for r in rows:
    if r.get("status") != "ok":
        lines.append(f"| {r['file']} | {r.get('model')} | {r.get('freeze')} | | | | | | | | | failed: {r.get('error')} |")
        continue
    lines.append(
        f"| {r['file']} | {r['model']} | {r['freeze']} | {r.get('train_batch_size') or r.get('infer_batch_size')} | "
        f"{f(r.get('train_samples_per_sec'))} | {f(r.get('train_mfu'), '.1%')} | {f(r.get('train_vs_baseline'), '.2f')}x | "
        f"{f(r.get('infer_samples_per_sec'))} | {f(r.get('infer_mfu'), '.1%')} | {f(r.get('train_gflops'), '.1f')} | "
        f"{f(r.get('train_peak_mem_mb'))} | {r.get('compiled')} |"
    )
lines += ["", "## Targets", ""]
for tag in (f"eager-{vgg}-f11", f"compile-{vgg}-f11"):
    r = find(tag)
    if r and r.get("train_mfu") is not None:
        verdict = "meets" if r["train_mfu"] >= MFU_TARGET else "misses"
        lines.append(f"- {vgg} freeze 11 train MFU ({tag}): **{r['train_mfu']:.1%}** vs the 60 % target: {verdict} "
                     f"({r['train_samples_per_sec']:,.0f} img/s x {r['train_gflops']:.1f} GFLOP/img, peak "
                     f"{r['peak_tflops']:.0f} TFLOP/s {r['precision']} of the {r['gpu_peak']})")
    elif r:
        lines.append(f"- {vgg} freeze 11 ({tag}): {r['train_samples_per_sec']:,.0f} img/s; no MFU (GPU not in the peak table)")
    else:
        lines.append(f"- {vgg} freeze 11 ({tag}): not measured (see steps.tsv)")
summary_p, metrics_p = out / "run" / "summary.json", out / "run" / "metrics.csv"
step_row = find(f"eager-{vgg}-f11")
if summary_p.is_file() and metrics_p.is_file() and step_row:
    s = json.loads(summary_p.read_text())
    epochs = list(csv.DictReader(metrics_p.open()))
    last = float(epochs[-1]["train_images_per_sec"])
    step_ips = step_row["train_samples_per_sec"]
    ratio = last / step_ips
    verdict = "meets" if ratio >= E2E_TARGET else "misses"
    per_epoch = ", ".join(f"{float(e['train_images_per_sec']):,.0f}" for e in epochs)
    lines.append(f"- end to end: epoch {len(epochs)} trained at **{last:,.0f} img/s** (per epoch: {per_epoch}; "
                 f"loader + Keras augmentation + step, batch {batch}) = **{ratio:.0%}** of the bench step "
                 f"({step_ips:,.0f} img/s, eager, same batch): {verdict} the >= 90 % target. "
                 f"Run: {s.get('epochs')} epochs, wall {s.get('wall_seconds')} s, amp {s.get('amp')}, "
                 f"peak {f(s.get('peak_memory_bytes'), ',.0f', 1 / 2**20)} MiB")
else:
    lines.append("- end to end: not measured (see steps.tsv and gpu.log)")
d = find(f"data-{vgg}-f11")
if d:
    lines.append(f"- input pipeline ({d['data_placement']} placement, batch {d['data_batch_size']}): loader + "
                 f"augmentation alone {d['data_samples_per_sec']:,.0f} img/s; step alone "
                 f"{d['train_samples_per_sec']:,.0f} img/s; together {d['pipeline_samples_per_sec']:,.0f} img/s "
                 f"({d['pipeline_vs_step']:.0%} of the step): **{d['bound']}-bound**")
scaling = [r for r in rows if r.get("status") == "ok" and r.get("scaling_efficiency") is not None]
if scaling:
    lines += ["", "## Scaling (DDP, nccl; the batch is per GPU; 1 GPU measured in the same call)", "",
              "| backbone | freeze | GPUs | batch per GPU | img/s on N | img/s on 1 | speed-up | efficiency |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(scaling, key=lambda r: (r["model"], r["nproc"])):
        speedup = r["ddp_samples_per_sec"] / r["ddp_single_samples_per_sec"]
        lines.append(f"| {r['model']} | {r['freeze']} | {r['nproc']} | {r['ddp_batch_size']} | "
                     f"{f(r['ddp_samples_per_sec'])} | {f(r['ddp_single_samples_per_sec'])} | {speedup:.2f}x | "
                     f"{r['scaling_efficiency']:.0%} |")
lines += ["", "## Steps", "", "```", (out / "steps.tsv").read_text().strip(), "```"]
if (out / "bench_data_gpu.md").is_file():
    lines += ["", (out / "bench_data_gpu.md").read_text().strip()]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
say "done in $(($(date +%s) - START)) s; results in $OUT_DIR"
# The device tool brings back at most 8 files from $OUT, two folders deep: pack everything into one
# archive and keep the four files a reader opens first beside it.
if [[ -n ${OUT:-} ]]; then
    tar czf "$WORK/record.tar.gz" -C "$OUT_DIR" . && mv "$WORK/record.tar.gz" "$OUT_DIR/record.tar.gz"
    find "$OUT_DIR" -mindepth 1 -maxdepth 1 ! -name record.tar.gz ! -name summary.md ! -name bench_all.csv \
        ! -name steps.tsv ! -name gpu.log -exec rm -rf {} +
fi
