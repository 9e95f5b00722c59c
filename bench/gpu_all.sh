#!/usr/bin/env bash
# Every GPU measurement the issues ask for, in ONE run (lent GPU time is ~15 min per task, starts
# included). Each step writes its JSON under $RESULTS as soon as it finishes, so a run stopped at its
# limit still returns what was measured. On the lent machine:
#   bash bench/gpu_all.sh            (RESULTS defaults to $OUT when set, else bench/results)
# The lent image has torch/transformers/peft but not audiocraft and its imports: carry them as wheels
# in .whl/ (see /work/.library/device/README.md); this script installs them first when present.
set -u
RESULTS=${RESULTS:-${OUT:-bench/results}}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 JPOP_NO_PROGRESS=1
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$RESULTS/gpu_device.txt" 2>&1
step() { echo "== $*"; timeout "$1" "${@:2}" 2>&1 | tee -a "$RESULTS/gpu_all.log"; }
# training: ours vs the audiocraft-solver-style step; SDPA kernels; LoRA; plan.py calibration peaks
step 200 python3 bench/train_speed.py --out "$RESULTS/train_speed_gpu.json"
# generation: our sampler vs LMModel.generate vs transformers' MusicGen, small + medium, batch 1 and 8
step 150 python3 bench/generate_speed.py --out "$RESULTS/generate_speed_gpu.json"
# vocal removal: seconds per minute of audio with the full-size htdemucs architecture
step 60 python3 bench/separate_speed.py --devices cuda --seconds 60 --out "$RESULTS/separate_speed_gpu.json"
# the GPU-marked tests (flash kernel used, resume without a second GPU copy, ...)
step 120 python3 -m pytest -q -m gpu tests
