#!/usr/bin/env bash
# lit-susc's device checks on one CUDA GPU, in one go (sized for an H200: under 5 minutes in all).
#
#   bash benchmarks/gpu_check.sh                      # on the GPU machine, from anywhere in the repo
#   DEVICE=cpu SMOKE=1 bash benchmarks/gpu_check.sh   # tiny sizes on the CPU: every step parses and runs
#
# Steps, each under `timeout` and inside a 285 s budget for the whole script (a step gets at most
# what is left), each with a header and its figures; a failing step is reported and the next runs:
#   env       GPU, driver, python, torch/lightning/transformers, which optional packages import
#   sampler   benchmarks/bench_sampler.py on CUDA, fp32: SGLD step / plain fwd+bwd and observation
#             pass / plain forward (the README's goals <= 1.10 and <= 1.05), 1024 x 8 layers, 16 x 256
#   scaling   benchmarks/bench_scaling.py --sweeps models on CUDA with bf16 autocast (Lightning
#             bf16-mixed): time per draw and per step, achieved TFLOP/s, for 512x6, 1024x12 and the
#             Pythia-1.4B shape (2048 x 24 x 16 heads, vocab 50304), 128 x 256 observation tokens;
#             then the Pythia-1.4B H200 estimate with the measured cost ratios
#   knn       benchmarks/bench_knn.py on CUDA: KeOps (and chunked torch) k-NN, d=32, k=45, N=1e5, 1e6
#   aux       benchmarks/bench_aux.py --preset pythia-1.4b on CUDA: aux predict tokens/s vs plain forward
#   scaling-fp32  the Pythia-1.4B shape again in float32 (as configs/pythia-1.4b.yaml's trainer runs the
#             SGLD steps), cache off; only if the budget has room left
#
# Output: everything printed goes to $OUT/gpu_check.log when OUT is set (the device runner copies
# $OUT back), else to ./gpu_check_out/gpu_check.log; bench_scaling's JSON and plot go beside it
# (at most 4 files). Exit status: the number of steps that failed or timed out.
#
# The device image has no pykeops (and nothing can be installed there from the network). To run
# the KeOps step, bring it as two pure-Python wheels (PyPI has only pykeops's sdist; pip builds a
# py3-none-any wheel from it, ~300 KB for both): on a machine with pip, in the repo root,
#   python3 -m pip wheel --no-deps -w benchmarks/.whl pykeops==2.3 keopscore==2.3
# (benchmarks/.whl or .whl; name it in the runner's carry if git ignores it). This script installs
# any wheels found there into /tmp/site first (pybind11, which pykeops needs, is in the image).
# Without them the knn step runs the torch backend only and the summary says KeOps was not run.

set -u
cd "$(dirname "$0")/.." || exit 99
OUTDIR=${OUT:-./gpu_check_out}
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_check.log"
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
SMOKE=${SMOKE:-0}
BUDGET=${BUDGET:-285}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled \
       TOKENIZERS_PARALLELISM=false

RESULTS=()
FAILED=0
T_START=$(date +%s)

run_step() {  # run_step NAME LIMIT_SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    local left=$(( BUDGET - ($(date +%s) - T_START) ))
    (( limit > left )) && limit=$left
    echo
    echo "==================== [$name]  (timeout ${limit}s, $(date +%H:%M:%S)) ===================="
    echo "+ $*"
    if (( limit < 5 )); then
        echo "----- [$name] SKIPPED: the ${BUDGET}s budget is spent"
        RESULTS+=("$name: SKIPPED (budget spent)")
        FAILED=$((FAILED + 1))
        return
    fi
    local t0 rc status
    t0=$(date +%s)
    timeout --signal=TERM --kill-after=10 "$limit" "$@"
    rc=$?
    if (( rc == 0 )); then status=ok
    elif (( rc == 124 || rc == 137 )); then status="TIMEOUT after ${limit}s"; FAILED=$((FAILED + 1))
    else status="FAILED (exit $rc)"; FAILED=$((FAILED + 1)); fi
    echo "----- [$name] $status, $(( $(date +%s) - t0 ))s"
    RESULTS+=("$name: $status ($(( $(date +%s) - t0 ))s)")
}

main() {
    echo "lit-susc gpu_check: device=$DEVICE smoke=$SMOKE budget=${BUDGET}s out=$OUTDIR  $(date -u +%FT%TZ)"
    for d in .whl benchmarks/.whl; do
        if compgen -G "$d/*.whl" > /dev/null; then
            echo "installing wheels from $d: $(cd "$d" && ls *.whl | tr '\n' ' ')"
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$d"/*.whl \
                && export PYTHONPATH="/tmp/site:$PYTHONPATH"
        fi
    done

    ENV_PY=$(mktemp /tmp/gpu_check_env.XXXXXX.py)
    cat > "$ENV_PY" <<'EOF'
import importlib, platform, shutil, subprocess
import torch
if shutil.which("nvidia-smi"):
    subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm", "--format=csv"])
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available(), "threads", torch.get_num_threads())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
for m in ("lightning", "transformers", "lit_susc", "lit_susc.lm", "callbacks", "pykeops", "sklearn", "numba",
          "matplotlib"):
    try:
        mod = importlib.import_module(m)
        print(f"  import {m:<14} ok {getattr(mod, '__version__', '')}")
    except Exception as e:  # noqa: BLE001
        print(f"  import {m:<14} MISSING ({type(e).__name__}: {e})")
EOF
    run_step env 40 "$PY" "$ENV_PY"

    if [[ $SMOKE == 1 ]]; then
        SAMPLER=(--hidden 64 --layers 2 --context 32 --batch 2 --obs-contexts 4)
        SCALING=(--smoke --sweeps models --repeats 1)
        KNN=(--sizes 2000 --max-seconds 30)
        AUX=(--hidden 64 --layers 4 --heads 4 --context 64 --batch 4 --contexts 8 --shard-contexts 4 --repeats 1)
        SCALING_FP32=(--smoke --sweeps models --models 64x2 --repeats 1)
    else
        SAMPLER=(--hidden 1024 --layers 8 --context 256 --batch 16 --obs-contexts 64)
        SCALING=(--sweeps models --models 512x6 1024x12x8 2048x24x16 --vocab 50304 --context 256 --batch 16
                 --obs-contexts 128 --obs-batch 64 --repeats 3)
        KNN=(--sizes 100000 1000000 --max-seconds 40)
        AUX=(--preset pythia-1.4b --contexts 32 --repeats 2)
        SCALING_FP32=(--sweeps models --models 2048x24x16 --vocab 50304 --context 256 --batch 16 --obs-contexts 64
                      --obs-batch 64 --repeats 2)
    fi

    run_step sampler 75 "$PY" benchmarks/bench_sampler.py --device "$DEVICE" "${SAMPLER[@]}"

    run_step scaling 110 "$PY" benchmarks/bench_scaling.py --device "$DEVICE" --precision bf16-mixed "${SCALING[@]}" \
        --out "$OUTDIR/scaling_results_$DEVICE.json" --plots-dir "$OUTDIR"

    if "$PY" -c "import pykeops" > /dev/null 2>&1; then
        run_step knn 80 "$PY" benchmarks/bench_knn.py --device "$DEVICE" --backends keops torch "${KNN[@]}"
    else
        echo; echo "NOTE: pykeops does not import here, so KeOps is not measured (see this script's header)."
        RESULTS+=("knn-keops: NOT RUN (pykeops missing)")
        FAILED=$((FAILED + 1))
        run_step knn-torch 60 "$PY" benchmarks/bench_knn.py --device "$DEVICE" --backends torch "${KNN[@]}"
    fi

    run_step aux 120 "$PY" benchmarks/bench_aux.py --device "$DEVICE" "${AUX[@]}"

    # Last, on what budget is left: the Pythia-1.4B shape as configs/pythia-1.4b.yaml runs its SGLD
    # steps today (trainer precision 32-true: PyTorch's float32 matmuls, no TF32).
    run_step scaling-fp32 60 "$PY" benchmarks/bench_scaling.py --device "$DEVICE" --precision 32-true \
        "${SCALING_FP32[@]}" --prefix-cache off --no-plots --out "$OUTDIR/scaling_results_${DEVICE}_fp32.json"

    echo
    echo "==================== summary ($(( $(date +%s) - T_START ))s) ===================="
    printf '  %s\n' "${RESULTS[@]}"
    echo "log: $LOG"
    return "$FAILED"
}

set -o pipefail
main "$@" 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
