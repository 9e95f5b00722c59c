#!/usr/bin/env bash
# Every GPU measurement the issues ask for, in ONE device call: lent GPU time is ~15 min per task,
# starts included, and one command runs at most 600 s. Here first, then on the lent machine:
#   python bench/gpu_wheels.py                         (builds .whl/: what its image lacks; checks 64 MiB)
#   device run: bash bench/gpu_all.sh, carry [".whl"], timeout_s 600
# Results go to $RESULTS (default: $OUT when set, else bench/results): 8 files, what a call returns at most.
# Each step runs under its planned seconds (printed first; they sum to under 600 s with a margin) and
# writes its JSON as it goes, and the steps run in order of value: a run cut short still returns the
# generation ratio, then the training ratio, then the T4 stand-in's memory peaks.
#   REHEARSAL=1   the same steps on CPU with the tiny sizes (tests/test_gpu_rehearsal.py)
#   PLAN_ONLY=1   print the plan and stop
set -u
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-${OUT:-bench/results}}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/site}  # the throwaway target the wheels are installed into
# Nothing can be downloaded on the lent machine: fail at once rather than after a network timeout.
export PYTHONUNBUFFERED=1 JPOP_NO_PROGRESS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if [ "${REHEARSAL:-0}" = 1 ]; then
    generate=(--tiny --device cpu --seconds 0.2 --warmup-seconds 0.08 --batches 1 2)
    train=(--tiny --device cpu --steps 1 --warmup 1 --seconds 2 --batch 2)
    separate=(--smoke)
    slower=3  # limits: a shared 2-core CPU is not the GPU they are planned for
else
    generate=(--device cuda)
    train=(--device cuda)
    separate=(--devices cuda --seconds 60)
    slower=1
fi

planned=0
step() {  # step SECONDS NAME COMMAND...: COMMAND under a limit of SECONDS, logged; one JSON line per step
    local secs=$1 name=$2
    shift 2
    planned=$((planned + secs))
    if [ "${PLAN_ONLY:-0}" = 1 ]; then
        printf '%5d s  %s\n' "$secs" "$name"
        return
    fi
    echo "== $name (planned $secs s): $*" | tee -a "$RESULTS/gpu_all.log"
    local t0=$SECONDS
    timeout $((secs * slower)) "$@" 2>&1 | tee -a "$RESULTS/gpu_all.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: rc $rc after $((SECONDS - t0)) s" | tee -a "$RESULTS/gpu_all.log"
    printf '{"step": "%s", "rc": %d, "seconds": %d, "planned_s": %d}\n' "$name" "$rc" $((SECONDS - t0)) "$secs" \
        >> "$RESULTS/gpu_all_steps.jsonl"
}

steps() {
    # pip as the device README says: no index there, no resolution, a throwaway target
    if [ "${PLAN_ONLY:-0}" = 1 ] || compgen -G "$WHEELS/*.whl" > /dev/null; then
        step 20 "install the wheels" python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target "$SITE" "$WHEELS"/*.whl
        [ "${PLAN_ONLY:-0}" = 1 ] || export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "== no wheels in $WHEELS: this Python's own packages are used"
    fi
    step 10 "the machine" python3 bench/device_info.py --out "$RESULTS/device.json"
    # generation: our sampler vs LMModel.generate vs transformers' MusicGen; small, then medium
    step 130 "generation ratio" python3 bench/generate_speed.py "${generate[@]}" --out "$RESULTS/generate_speed_gpu.json"
    # training: our step vs the audiocraft-solver-style step on small, and LoRA's
    step 90 "training ratio" python3 bench/train_speed.py "${train[@]}" --rows ratio --out "$RESULTS/train_speed_gpu.json"
    # the README's T4 table against peaks measured in fp16, T4 attention, 14.7 GiB allocator cap
    step 90 "T4 stand-in peaks" python3 bench/train_speed.py "${train[@]}" --t4 --out "$RESULTS/t4_standin_gpu.json"
    # plan.py's calibration peaks, medium/large LoRA speed, torch.compile (the longest, last)
    step 90 "training peaks, sizes, compile" python3 bench/train_speed.py "${train[@]}" --rows peaks sizes compile \
        --out "$RESULTS/train_speed_more_gpu.json"
    # vocal removal: seconds per minute of audio with the full-size htdemucs architecture (the first step to
    # import librosa: its numba functions compile then, ~20 s of CPU)
    step 60 "separation" python3 bench/separate_speed.py "${separate[@]}" --out "$RESULTS/separate_speed_gpu.json"
    # the GPU-marked tests (flash kernel used, resume without a second GPU copy). Only their file: collecting
    # every test module would import what the image lacks (yt-dlp, essentia...) and stop pytest. No plugins:
    # the image's (xdist, cov...) are not needed. Both tests build their data themselves (random tokens and
    # models: the image cannot render the demo corpus, which needs fluidsynth, music21, yt-dlp and essentia).
    step 40 "GPU tests" env PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 python3 -m pytest -q -m gpu -p no:cacheprovider \
        tests/test_train.py
}

PLAN_ONLY=1 steps
echo "planned: $planned s of the 600 s a device call may run"
[ "${PLAN_ONLY:-0}" = 1 ] && exit 0
mkdir -p "$RESULTS"
planned=0
steps
