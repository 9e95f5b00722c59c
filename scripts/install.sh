#!/usr/bin/env bash
# Installs everything jpop-musicgen needs, on a fresh Debian/Ubuntu machine (CPU or GPU) and in Colab.
#   bash scripts/install.sh            # system packages (if root) + Python packages
#   DEV=1 bash scripts/install.sh      # + what the tests and the offline demo need (requirements-dev.txt)
#   SKIP_APT=1 bash scripts/install.sh # Python packages only
#   PYTHON=/path/to/python bash scripts/install.sh   # into that interpreter (default: python3)
# Safe to re-run. It never replaces an importable torch/torchaudio (Colab's matched pair stays), and
# requirements*.txt never ask for another version of a package Colab ships (tests/test_install.py).
# Each step is announced with a line "==> jpop-musicgen install: <step>"; on failure the last such line
# names the step that failed (jpop_helpers.install reports it in a notebook).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install --disable-pip-version-check -q"
case "${DEV:-}" in ""|0|false|no) DEV="" ;; *) DEV=1 ;; esac
step() { STEP=$1; echo "==> jpop-musicgen install: $STEP"; }
STEP="start"
trap 'echo "jpop-musicgen install: FAILED during \"$STEP\" (exit $?: $BASH_COMMAND)" >&2' ERR

# 1. System packages: ffmpeg (yt-dlp audio extraction, audiocraft's audio_write), fluidsynth + a small
#    General MIDI soundfont (render the offline demo corpus). Colab (COLAB_RELEASE_TAG is set there)
#    ships ffmpeg and never runs the offline demo: there apt is not touched unless ffmpeg is missing,
#    so a broken apt source cannot abort the install.
if [ -z "${SKIP_APT:-}" ] && command -v apt-get >/dev/null; then
  step "system packages (apt)"
  wanted=(ffmpeg fluidsynth timgm6mb-soundfont)
  [ -n "${COLAB_RELEASE_TAG:-}" ] && wanted=(ffmpeg)
  need=()
  for p in "${wanted[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
fi

# 2. torch / torchaudio only when missing. torch 2.13.0 is the CPU build cached on our machines;
#    torchaudio has no 2.13 release, and its 2.11 wheel pins torch==2.11, hence --no-deps.
step "torch and torchaudio (only if missing)"
if ! $PY -c "import torch" 2>/dev/null; then $PIP "torch==${TORCH_VERSION:-2.13.0}"; fi
if ! $PY -c "import importlib.util as u, sys; sys.exit(u.find_spec('torchaudio') is None)"; then
  $PIP --no-deps "torchaudio==${TORCHAUDIO_VERSION:-2.11.0}"
fi
# torchaudio's PyPI wheel is a CUDA build: beside a CPU-only torch its native extension fails to load
# (OSError on _torchaudio.abi3.so). audiocraft only uses pure-Python transforms, so drop the extension.
if ! $PY -c "import torchaudio" 2>/dev/null; then
  ta_dir=$($PY -c "import importlib.util as u; print(u.find_spec('torchaudio').submodule_search_locations[0])")
  rm -f "$ta_dir"/lib/_torchaudio*.so
  $PY -c "import torchaudio" # fail loudly if that was not the problem
fi

# 3. Python packages, then audiocraft and xformers without their stale pins.
step "Python packages (requirements.txt)"
$PIP -r requirements.txt
if [ -n "${DEV:-}" ]; then
  step "test and demo packages (requirements-dev.txt)"
  $PIP -r requirements-dev.txt
fi
step "audiocraft 1.3.0 and xformers (without their pins)"
$PIP --no-deps audiocraft==1.3.0
# audiocraft imports xformers.ops at module top. 0.0.35 needs torch>=2.10; with an older torch (an old
# Colab image) fall back to a release built for it.
if ! $PY -c "import xformers" 2>/dev/null; then
  if $PY -c "import torch,sys; v=tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(v < (2,10))"; then
    $PIP --no-deps xformers==0.0.35
  else
    $PIP --no-deps "xformers<0.0.35"
  fi
fi
step "jpop-musicgen itself (editable)"
$PIP --no-deps -e .

# 4. Final check: everything the pipeline imports loads (its warnings shown only if it fails), and
#    yt-dlp finds the JavaScript runtime YouTube needs (deno's binary; no network involved).
step "final check (imports, yt-dlp's JavaScript runtime)"
fail() { echo "$1"; echo "jpop-musicgen: install check FAILED"; exit 1; }
imports="import jpop_helpers, audiocraft.models, demucs.apply, demucs.hf, essentia.standard, yt_dlp, yt_dlp_ejs"
[ -n "${DEV:-}" ] && imports="$imports, music21, pytest, papermill, hypothesis"
out=$(TF_CPP_MIN_LOG_LEVEL=3 $PY -c "$imports" 2>&1) || fail "$out"
out=$($PY -c "import subprocess, deno; print(subprocess.run([deno.find_deno_bin(), '--version'], capture_output=True, text=True, check=True).stdout.split()[1])" 2>&1) \
  || fail "the deno binary does not run: $out"
js=$($PY -m yt_dlp --verbose --ignore-config 2>&1 | grep -m1 'JS runtimes:' || true)
case "$js" in *deno*) ;; *) fail "yt-dlp finds no JavaScript runtime for YouTube (${js:-no output}): is deno installed?";; esac
echo "jpop-musicgen: install OK (yt-dlp's JavaScript runtime: ${js#*JS runtimes: })"
