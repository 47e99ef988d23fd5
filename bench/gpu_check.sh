#!/usr/bin/env bash
# Paper-scale checks on one CUDA GPU, in one go (~8 minutes at most, every step under `timeout`).
#
#   bash bench/gpu_check.sh            # from the repo root; results in $OUT (default ./gpu_check_out)
#
# Written for an offline GPU machine (an NVIDIA H200): no internet, so
# nothing is installed. Its python3 already holds torch (a CUDA build; 2.11 when last seen, not
# the project's pin 2.13.0), numpy, pillow and tqdm, which is all btbnet needs; the project is
# put on PYTHONPATH instead of `pip install -e .`. Set PYTHON=... to use another interpreter.
#
# Steps (each writes $OUT/<step>.md, .json where it has figures, and .log):
#   env          versions, GPU, TF32 flags; stops here if torch, CUDA or btbnet is missing
#   inference    bench/bench_speed.py: width 1.0, 320², scales (1, 0.8, 0.6), 3 RRNet steps, both
#                variants, batch 1 and 8, in fp32 / bf16 / bf16 + channels_last / + torch.compile:
#                ms per image and the ratio to the FLOP floor at the H200's 989 TFLOP/s bf16 peak
#   train_fp32   bench/bench_train.py: width 1.0, 320², both variants, batch 1 2 4 8, peak memory
#   train_bf16   the same under bf16 autocast
#   smoke_mean   20 real training steps, paper variant, width 1.0, 320², scales (1, 0.8, 0.6),
#                3 RRNet steps, the paper preset's recipe (lr 1e-4 / 1e-3, loss_reduction mean):
#                finite losses? peak memory?
# $OUT/summary.md lists every step with its exit code and time. Exit code: 0 if every step did.

set -u -o pipefail

OUT="${OUT:-$PWD/gpu_check_out}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

SUMMARY="$OUT/summary.md"
printf '# gpu_check.sh\n\n| step | exit code | seconds |\n|---|---:|---:|\n' > "$SUMMARY"
FAILED=0

# step NAME SECONDS COMMAND...: run under `timeout`, stdout → NAME.md, stderr → NAME.log.
# (`timeout` runs programs, not shell functions: the functions below run through `bash -c`.)
step() {
    local name="$1" limit="$2"
    shift 2
    local start=$SECONDS rc
    echo "== $name (at most ${limit} s)" >&2
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.md" 2> "$OUT/$name.log"
    rc=$?
    [ "$rc" -eq 124 ] && echo "timed out after ${limit} s" >> "$OUT/$name.log"
    printf '| %s | %s | %s |\n' "$name" "$rc" "$((SECONDS - start))" >> "$SUMMARY"
    [ "$rc" -eq 0 ] || FAILED=1
    return "$rc"
}

check_env() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "nvidia-smi: not available"
    "$PYTHON" - <<'EOF'
import platform
import sys

try:
    import torch
except ImportError:
    sys.exit(f"no torch in {sys.executable}: carry a CUDA wheel of torch (see the device README) or set PYTHON")
print(f"python {platform.python_version()} ({sys.executable}), torch {torch.__version__} (project pin: 2.13.0)")
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__}: torch.cuda.is_available() is False (CPU build or no driver)")
print(f"GPU {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
print(f"TF32: cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}")
import numpy, PIL, tqdm  # noqa: E401  btbnet's other dependencies
import btbnet
print(f"btbnet {btbnet.__version__} from {btbnet.__file__}; numpy {numpy.__version__}, pillow {PIL.__version__}")
EOF
}

export -f check_env
export PYTHON

PAPER=(--widths 1.0 --sizes 320 --scales 1 0.8 0.6 --rrnet-steps 3)
SMOKE=(--device cuda --variants paper --widths 1.0 --sizes 320 --batch-sizes 1 --steps 20 --warmup 0
       --data data/embedded/defocus/train)

if ! step env 60 bash -c check_env; then
    echo "environment check failed, see $OUT/env.md and $OUT/env.log" >&2
    exit 1
fi
step inference 150 "$PYTHON" bench/bench_speed.py --device cuda --width 1.0 --size 320 --batch-sizes 1 8 \
    --repeats 10 --json "$OUT/inference.json"
step train_fp32 120 "$PYTHON" bench/bench_train.py --device cuda "${PAPER[@]}" --batch-sizes 1 2 4 8 \
    --steps 5 --warmup 2 --json "$OUT/train_fp32.json"
step train_bf16 90 "$PYTHON" bench/bench_train.py --device cuda "${PAPER[@]}" --batch-sizes 1 2 4 8 \
    --steps 5 --warmup 2 --bf16 --json "$OUT/train_bf16.json"
step smoke_mean 45 "$PYTHON" bench/bench_train.py "${SMOKE[@]}" --loss-reduction mean --json "$OUT/smoke_mean.json"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1

cat "$SUMMARY" >&2
exit "$FAILED"
