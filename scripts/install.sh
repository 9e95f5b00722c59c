#!/usr/bin/env bash
# Installs everything jpop-musicgen needs, on a fresh Debian/Ubuntu machine (CPU or GPU) and in Colab.
#   bash scripts/install.sh            # system packages (if root) + Python packages
#   SKIP_APT=1 bash scripts/install.sh # Python packages only
# Safe to re-run. It never replaces an importable torch/torchaudio (Colab's matched pair stays).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install --disable-pip-version-check -q"

# 1. System packages: ffmpeg (yt-dlp audio extraction, audiocraft's audio_write), fluidsynth + a small
#    General MIDI soundfont (renders the offline demo corpus).
if [ -z "${SKIP_APT:-}" ] && command -v apt-get >/dev/null; then
  need=()
  for p in ffmpeg fluidsynth timgm6mb-soundfont; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
fi

# 2. torch / torchaudio only when missing. torch 2.13.0 is the CPU build cached on our machines;
#    torchaudio has no 2.13 release, and its 2.11 wheel pins torch==2.11, hence --no-deps.
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
$PIP -r requirements.txt
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
$PIP --no-deps -e .
# Final check: everything the pipeline imports loads (its warnings shown only if it fails).
if out=$(TF_CPP_MIN_LOG_LEVEL=3 $PY -c "import jpop_helpers, audiocraft.models, essentia.standard, yt_dlp" 2>&1); then
  echo "jpop-musicgen: install OK"
else
  echo "$out"; echo "jpop-musicgen: install check FAILED"; exit 1
fi
