#!/usr/bin/env bash
# One prepared GPU check: every benchmark on a CUDA GPU in under 9 minutes; JSON lines into OUTDIR.
#
#   bash benchmarks/gpu_check.sh OUTDIR                 # on a machine with a CUDA GPU
#   WMOE_BENCH_QUICK=1 bash benchmarks/gpu_check.sh OUTDIR   # tiny settings on any machine (proves it runs)
#
# Needs only a Python with requirements.txt installed (PYTHON=... to choose one; default: .venv if
# present, else python3). Missing packages are installed with pip if PyPI is reachable; if not, it
# says so and stops. Each benchmark has its own time limit, so one that hangs cannot eat the rest.
# Writes OUTDIR/<benchmark>.jsonl (one JSON line per measurement), OUTDIR/<benchmark>.log (stderr),
# OUTDIR/env.txt (GPU, versions) and OUTDIR/summary.txt (exit status and seconds per benchmark).
# `reproduce_synthetic` runs `python -m training.reproduce` end to end (train, evaluate with shots, MuSc,
# WinCLIP, CLIP, model cards, results table) on two generated datasets in the MVTec layout with a random
# ViT-B-16 (wmoe-tiny under WMOE_BENCH_QUICK=1), and prints one JSON line: exit status, seconds, stages.
#   WMOE_GPU_CHECK_ONLY="musc winclip reproduce_synthetic" bash benchmarks/gpu_check.sh OUTDIR   # a subset
set -u -o pipefail

OUT=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.." || exit 1
QUICK=${WMOE_BENCH_QUICK:-0}
export WMOE_BENCH_QUICK=$QUICK HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False MPLBACKEND=Agg PYTHONUNBUFFERED=1
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
START=$(date +%s)
say() { echo "[gpu_check $(( $(date +%s) - START ))s] $*" | tee -a "$OUT/summary.txt"; }

# --- environment: imports, then CUDA -------------------------------------------------------------
CHECK='import torch, open_clip, pytorch_wavelets, safetensors, gradio, gradio_client, sklearn'
if ! "$PY" -c "$CHECK" 2>/dev/null; then
    say "some requirements are missing; trying pip (PyPI may be unreachable from this machine)"
    # a torch that imports is kept (a GPU machine's own CUDA build must stay); the rest is pinned
    if "$PY" -c "import torch" 2>/dev/null; then
        grep -v -E '^(torch|torchvision)==' requirements.txt > "$OUT/requirements-to-install.txt"
    else
        cp requirements.txt "$OUT/requirements-to-install.txt"
    fi
    timeout 240 "$PY" -m pip install --quiet --retries 1 --timeout 15 -r "$OUT/requirements-to-install.txt" \
        >> "$OUT/pip.log" 2>&1 || say "pip install failed (offline?); see pip.log"
fi
if ! "$PY" -c "import torch, open_clip" 2>> "$OUT/env.txt"; then
    say "FATAL: '$PY' cannot import torch and open_clip; install requirements.txt first (see env.txt)"
    exit 2
fi
"$PY" - > "$OUT/env.txt" 2>&1 <<'EOF'
import platform, torch, open_clip
print("python", platform.python_version(), "| torch", torch.__version__, "| open_clip", open_clip.__version__)
print("cuda available:", torch.cuda.is_available(), "| cuda", torch.version.cuda)
for i in range(torch.cuda.device_count()):
    print(f"gpu {i}:", torch.cuda.get_device_name(i), f"{torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB")
EOF
command -v nvidia-smi > /dev/null && nvidia-smi >> "$OUT/env.txt" 2>&1
if [ "$QUICK" != 1 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "FATAL: no CUDA GPU visible to torch (see env.txt); WMOE_BENCH_QUICK=1 runs tiny settings on CPU"
    exit 3
fi

# --- the benchmarks (full settings on a GPU; tiny ones with WMOE_BENCH_QUICK=1) -------------------
if [ "$QUICK" = 1 ]; then
    LAT="--reps 2"; LAT8="--reps 1"; THR="--reps 2"; MEM=""; APP="--reps 2"
    MET="--n 4 --size 64 --ref-n 2 --exact-n 2 --exact-size 32"
    CMP="--reps 1"; TRN="--epochs 2"; MUSC="--batches 5 --msm-images 6"; WIN="--reps 1"
else
    LAT="--reps 20 --dtype fp32,bf16,fp16"; LAT8="--reps 5"; THR="--reps 10"; MEM=""; APP="--reps 3"
    MET="--n 200 --size 518 --ref-n 10"
    CMP="--reps 3 --dtype bf16"  # ViT-L-14-336 at 518 px, the defaults
    TRN="--backbone ViT-L-14-336 --image-size 518 --dtype bf16 --epochs 15"
    MUSC="--batches 8,16,32 --msm-images 100"; WIN="--reps 5"  # ViT-L-14-336/518; WinCLIP's ViT-B-16-plus-240
fi
DEADLINE=$(( START + 530 ))  # the whole check, setup included, stays under 9 minutes
FAILED=0
run() {  # name, time limit in seconds, command...; the limit shrinks to what is left before DEADLINE
    local name=$1 limit=$2 left t0 rc
    shift 2
    case " ${WMOE_GPU_CHECK_ONLY:-$name} " in *" $name "*) ;; *) return ;; esac
    left=$(( DEADLINE - $(date +%s) ))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 15 ]; then say "$name: SKIPPED, out of time"; FAILED=$((FAILED + 1)); return; fi
    t0=$(date +%s)
    timeout "$limit" "$@" > "$OUT/$name.jsonl" 2> "$OUT/$name.log"
    rc=$?
    say "$name: exit $rc in $(( $(date +%s) - t0 ))s, $(wc -l < "$OUT/$name.jsonl") JSON lines$([ $rc = 124 ] && echo ", stopped at the ${limit}s limit")"
    [ $rc = 0 ] || { FAILED=$((FAILED + 1)); tail -n 5 "$OUT/$name.log" | sed 's/^/    /' | tee -a "$OUT/summary.txt"; }
}
# in order of importance; the last two are extras
run latency         80 "$PY" -m benchmarks.latency $LAT
run compare_request 75 "$PY" -m benchmarks.compare_request $CMP
run training_cache 150 "$PY" -m benchmarks.training_cache $TRN
# the training-free methods and the reproduction pipeline (issues 17 and 18)
run musc            90 "$PY" -m benchmarks.musc $MUSC
run winclip         60 "$PY" -m benchmarks.winclip $WIN
cat > "$OUT/reproduce_synthetic.py" <<'PYEOF'
"""training.reproduce end to end on generated data (random backbone: the numbers mean nothing, the path works)."""
import contextlib, json, os, sys, time
from pathlib import Path

import torch, yaml

from training import reproduce
from training.prepare_data import prepare
from training.synthetic import generate

out, quick = Path(sys.argv[1]), os.environ.get("WMOE_BENCH_QUICK") == "1"
data, backbone = out / "data", "wmoe-tiny" if quick else "ViT-B-16"
model = {"tiny": True} if quick else {"backbone": backbone, "pretrained": None, "image_size": 224, "layers": [3, 6, 9, 12]}
for name, categories, seed in (("mvtec", ["felt:noise", "nut:disc"], 1), ("visa", ["candle:disc", "pcb1:part"], 2)):
    if not (data / name / "meta.json").is_file():  # MVTec layout under the real names: no download
        generate(data / name, categories, n_train_good=4, n_test_good=3, n_test_defect_per_type=2, size=64, seed=seed)
        prepare("mvtec", data / name)
recipes = []
for train, evaluate in (("mvtec", "visa"), ("visa", "mvtec")):
    recipe = {"seed": 0, "device": "auto", "precision": "auto", "model": model, "train": {"root": str(data / train)},
              "optim": {"lr": 1.0e-3, "batch_size": 8, "epochs": 2, "num_workers": 0},
              "eval": {"batch_size": 16, "datasets": [{"name": evaluate, "root": str(data / evaluate)}]}}
    recipes.append(out / f"{train}_to_{evaluate}.yaml")
    recipes[-1].write_text(yaml.safe_dump(recipe))
argv = ["--output", str(out / "repro"), "--data", str(data), "--no-progress", "--backbone", backbone, "--recipes"]
start = time.perf_counter()
with contextlib.redirect_stdout(sys.stderr):  # stdout: the JSON line alone
    rc = reproduce.main(argv + [str(r) for r in recipes])
results = out / "repro" / "results.json"
rows = json.loads(results.read_text())["rows"] if results.is_file() else []
print(json.dumps({
    "bench": "reproduce_synthetic", "backbone": backbone, "weights": "random", "exit": rc,
    "seconds": round(time.perf_counter() - start, 1),
    "stages": len(json.loads((out / "repro" / "stages.json").read_text())) if (out / "repro" / "stages.json").is_file() else 0,
    "measured_rows": sum("this run" in r["method"] for r in rows),
    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
}))
sys.exit(rc)
PYEOF
run reproduce_synthetic 180 env PYTHONPATH="$PWD" "$PY" "$OUT/reproduce_synthetic.py" "$OUT/reproduce_synthetic"
run throughput      55 "$PY" -m benchmarks.throughput $THR
run memory         110 "$PY" -m benchmarks.memory $MEM
run app_request     80 "$PY" -m benchmarks.app_request $APP
run metrics_speed   75 "$PY" -m benchmarks.metrics_speed $MET
run latency_batch8  45 "$PY" -m benchmarks.latency --batch 8 $LAT8
run throughput_bf16 40 "$PY" -m benchmarks.throughput --dtype bf16 $THR
say "done: $FAILED failed or skipped; total $(( $(date +%s) - START ))s; results in $OUT"
[ $FAILED = 0 ]
