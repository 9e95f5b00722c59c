#!/usr/bin/env bash
# Installs everything jpop-musicgen needs, on a fresh Debian/Ubuntu machine (CPU or GPU) and in Colab.
#   bash scripts/install.sh            # system packages (if root or sudo) + the project's venv, .venv
#   DEV=1 bash scripts/install.sh      # + what the tests and the offline demo need (requirements-dev.txt)
#   SKIP_APT=1 bash scripts/install.sh # no system packages
#   PYTHON=/path/to/python3 ...        # the interpreter (default python3): the venv is built from it
#   VENV=path ...                      # the venv's folder (default .venv); it is reused when it exists
#   INTO=current ...                   # no venv: pip into $PYTHON's own environment, from the ranges
#
# Outside Colab (the default, INTO=venv): a virtual environment built from $PYTHON, never the system
# interpreter (Debian/Ubuntu refuse pip there: PEP 668), with the exact versions of locks/py3.X.lock
# (tested; re-resolved by `python scripts/lock.py`). Run the project with .venv/bin/python.
# In Colab (COLAB_RELEASE_TAG is set) and with INTO=current (jpop_helpers.install, from a notebook's
# kernel): pip into that interpreter from requirements*.txt's ranges, never replacing an importable
# torch/torchaudio or a package Colab ships (tests/test_install.py, scripts/colab_env_check.py).
# Safe to re-run. Each step is announced with a line "==> jpop-musicgen install: <step>"; on failure
# the last such line names the step that failed (jpop_helpers.install reports it in a notebook).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${PYTHON:-python3}
case "${DEV:-}" in ""|0|false|no) DEV="" ;; *) DEV=1 ;; esac
INTO=${INTO:-venv}
[ -n "${COLAB_RELEASE_TAG:-}" ] && INTO=current
case "$INTO" in venv|current) ;; *) echo "jpop-musicgen install: INTO must be venv or current, not '$INTO'" >&2; exit 2;; esac
step() { STEP=$1; echo "==> jpop-musicgen install: $STEP"; }
STEP="start"
trap 'echo "jpop-musicgen install: FAILED during \"$STEP\" (exit $?: $BASH_COMMAND)" >&2' ERR
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
apt_install() {  # only what dpkg says is missing
  local need=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  if [ ${#need[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

# 1. System packages: ffmpeg (yt-dlp audio extraction, audiocraft's audio_write), fluidsynth + a small
#    General MIDI soundfont (render the offline demo corpus), python3-venv (Debian/Ubuntu split venv's
#    pip out of python3). Colab ships ffmpeg and never runs the offline demo: there apt is not touched
#    unless ffmpeg is missing, so a broken apt source cannot abort the install.
if [ -z "${SKIP_APT:-}" ] && command -v apt-get >/dev/null; then
  step "system packages (apt)"
  if [ -n "${COLAB_RELEASE_TAG:-}" ]; then
    apt_install ffmpeg
  else
    wanted=(ffmpeg fluidsynth timgm6mb-soundfont)
    if [ "$INTO" = venv ] && ! $BASE -c "import ensurepip, venv" 2>/dev/null; then
      wanted+=("python$($BASE -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv")
    fi
    apt_install "${wanted[@]}"
  fi
fi

# 2. Where the packages go.
if [ "$INTO" = venv ]; then
  step "project virtual environment (${VENV:-.venv})"
  VENV=${VENV:-.venv}
  pyver=$($BASE -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  LOCK="locks/py$pyver.lock"
  if [ ! -f "$LOCK" ]; then
    echo "jpop-musicgen install: no lock for Python $pyver (there are: $(cd locks && ls *.lock | tr '\n' ' '))." >&2
    echo "Use one of those Pythons (PYTHON=/path/to/python3.X), or INTO=current to install from the ranges." >&2
    false
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    $BASE -m venv "$VENV" || { echo "jpop-musicgen install: '$BASE -m venv' failed: install python$pyver-venv (apt), or run as root/sudo" >&2; false; }
  fi
  PY="$VENV/bin/python"
else
  PY=$BASE
fi
PIP="$PY -m pip install --disable-pip-version-check -q"
lock_pin() { sed -n "s/^$1==\([^ ;]*\).*/\1/p" "$LOCK" | head -n1; }

# 3. torch only when missing (Colab's stays). In the venv: the lock's pip, setuptools and wheel first,
#    then the lock's torch with its dependencies (so PyPI's CUDA build brings its runtime along).
if [ "$INTO" = venv ]; then
  step "packaging tools (pip, setuptools, wheel from $LOCK)"
  $PIP "pip==$(lock_pin pip)" "setuptools==$(lock_pin setuptools)" "wheel==$(lock_pin wheel)"
fi
step "torch (only if missing)"
if ! $PY -c "import torch" 2>/dev/null; then
  if [ "$INTO" = venv ]; then
    $PIP -c "$LOCK" "torch==${TORCH_VERSION:-$(lock_pin torch)}"
  else
    $PIP "torch==${TORCH_VERSION:-2.13.0}"
  fi
fi

# 4. Python packages.
if [ "$INTO" = venv ]; then
  # The lock is complete (every dependency, exact versions; torchaudio and audiocraft too, whose stale
  # torch pins --no-deps ignores), so nothing is resolved here. Its dev part is left out unless DEV=1.
  # --no-build-isolation: the few sdist-only packages build with the lock's setuptools.
  step "Python packages (exact versions from $LOCK)"
  lock=$LOCK
  if [ -z "$DEV" ]; then
    lock=$(mktemp); trap 'rm -f "$lock"' EXIT
    sed '/^# ==== only with DEV=1/,$d' "$LOCK" > "$lock"
  fi
  $PIP --no-deps --no-build-isolation -r "$lock"
else
  # torchaudio only when missing: it has no release for torch 2.13, and its wheel pins its own torch.
  step "torchaudio (only if missing)"
  if ! $PY -c "import importlib.util as u, sys; sys.exit(u.find_spec('torchaudio') is None)"; then
    $PIP --no-deps "torchaudio==${TORCHAUDIO_VERSION:-2.11.0}"
  fi
  step "Python packages (requirements.txt)"
  $PIP -r requirements.txt
  if [ -n "$DEV" ]; then
    step "test and demo packages (requirements-dev.txt)"
    $PIP -r requirements-dev.txt
  fi
  step "audiocraft 1.3.0 and xformers (without their pins)"
  $PIP --no-deps audiocraft==1.3.0
  # audiocraft imports xformers.ops at module top. 0.0.35 needs torch>=2.10; with an older torch (an
  # old Colab image) fall back to a release built for it.
  if ! $PY -c "import xformers" 2>/dev/null; then
    if $PY -c "import torch,sys; v=tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(v < (2,10))"; then
      $PIP --no-deps xformers==0.0.35
    else
      $PIP --no-deps "xformers<0.0.35"
    fi
  fi
fi
# torchaudio's PyPI wheel is a CUDA build: beside a CPU-only torch its native extension fails to load
# (OSError on _torchaudio.abi3.so). audiocraft only uses pure-Python transforms, so drop the extension.
if ! $PY -c "import torchaudio" 2>/dev/null; then
  ta_dir=$($PY -c "import importlib.util as u; print(u.find_spec('torchaudio').submodule_search_locations[0])")
  rm -f "$ta_dir"/lib/_torchaudio*.so
  $PY -c "import torchaudio" # fail loudly if that was not the problem
fi
step "jpop-musicgen itself (editable)"
out=$($PIP --no-deps --no-build-isolation -e . 2>&1) || { echo "$out"; false; }  # setuptools' notes only on failure

# 5. Final check: everything the pipeline imports loads (its warnings shown only if it fails), and
#    yt-dlp finds the JavaScript runtime YouTube needs (deno's binary; no network involved).
step "final check (imports, yt-dlp's JavaScript runtime)"
fail() { echo "$1"; echo "jpop-musicgen: install check FAILED"; exit 1; }
imports="import jpop_helpers, audiocraft.models, demucs.apply, demucs.hf, essentia.standard, yt_dlp, yt_dlp_ejs"
[ -n "$DEV" ] && imports="$imports, music21, pytest, papermill, hypothesis"
out=$(TF_CPP_MIN_LOG_LEVEL=3 $PY -c "$imports" 2>&1) || fail "$out"
out=$($PY -c "import subprocess, deno; print(subprocess.run([deno.find_deno_bin(), '--version'], capture_output=True, text=True, check=True).stdout.split()[1])" 2>&1) \
  || fail "the deno binary does not run: $out"
js=$($PY -m yt_dlp --verbose --ignore-config 2>&1 | grep -m1 'JS runtimes:' || true)
case "$js" in *deno*) ;; *) fail "yt-dlp finds no JavaScript runtime for YouTube (${js:-no output}): is deno installed?";; esac
where=$PY; [ "$INTO" = venv ] && where="$VENV (run: $VENV/bin/python -m jpop_helpers ...)"
echo "jpop-musicgen: install OK into $where (yt-dlp's JavaScript runtime: ${js#*JS runtimes: })"
