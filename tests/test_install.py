"""Install: requirements never replace what Colab ships, scripts/install.sh's steps, and
jpop_helpers.install, which makes a failed install stop the notebook with its reason.

scripts/install.sh is run for real here, with stand-ins for python, apt-get and dpkg on PATH that
record what they were asked to do (no package is installed).
"""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from jpop_helpers.install import install

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from colab_constraints import colab_pins, normalise, render  # noqa: E402

COLAB_FREEZE = REPO.parent / "shared" / "colab" / "pip-freeze-gpu.txt"
DEV_ONLY = {"papermill", "pytest", "nbformat", "music21", "ipykernel", "hypothesis", "peft", "uv"}


def requirements(path: Path) -> list[Requirement]:
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(Requirement(line))
    return out


def clashes(reqs: list[Requirement], pins: dict[str, str]) -> list[str]:
    """Requirements whose specifier rejects the version Colab ships (which pip would then replace)."""
    bad = []
    for r in reqs:
        v = pins.get(normalise(r.name))
        if v is not None and not r.specifier.contains(Version(v).public, prereleases=True):
            bad.append(f"{r} (Colab has {v})")
    return bad


def colab() -> dict[str, str]:
    return colab_pins((REPO / "scripts" / "colab-constraints.txt").read_text())


@pytest.mark.parametrize("name", ["requirements.txt", "requirements-dev.txt"])
def test_every_requirement_admits_colabs_version(name):
    pins, reqs = colab(), requirements(REPO / name)
    checked = {normalise(r.name) for r in reqs} & pins.keys()
    assert clashes(reqs, pins) == []
    # the check saw the packages that matter (a parser that read nothing would pass vacuously)
    expected = ({"numpy", "transformers", "ipywidgets", "protobuf", "librosa"}
                if name == "requirements.txt" else {"pytest", "music21", "nbformat", "ipykernel", "peft"})
    assert expected <= checked


def test_the_colab_check_catches_a_requirement_that_would_replace_colabs_package():
    assert clashes([Requirement("ipywidgets>=8.0"), Requirement("numpy>=1.25")], colab()) == [
        "ipywidgets>=8.0 (Colab has 7.7.1)"]
    assert clashes([Requirement("torch==2.11.0")], colab()) == []  # a local build label (+cu128) is ignored


def test_runtime_requirements_hold_only_runtime_needs():
    runtime = {normalise(r.name) for r in requirements(REPO / "requirements.txt")}
    dev = {normalise(r.name) for r in requirements(REPO / "requirements-dev.txt")}
    assert runtime & DEV_ONLY == set()
    assert DEV_ONLY <= dev
    assert {"yt-dlp", "deno", "ipywidgets"} <= runtime
    ytdlp = next(r for r in requirements(REPO / "requirements.txt") if normalise(r.name) == "yt-dlp")
    assert "default" in ytdlp.extras  # brings yt-dlp-ejs, YouTube's challenge solver scripts


@pytest.mark.skipif(not COLAB_FREEZE.is_file(), reason="no ../shared/colab/pip-freeze-gpu.txt beside the checkout")
def test_committed_constraints_are_colabs_freeze():
    expected = render(colab_pins(COLAB_FREEZE.read_text()), "colab/pip-freeze-gpu.txt")
    assert (REPO / "scripts" / "colab-constraints.txt").read_text() == expected, \
        "regenerate: python3 scripts/colab_constraints.py ../shared/colab/pip-freeze-gpu.txt > scripts/colab-constraints.txt"


# ---------------------------------------------------------------- locks/ (scripts/lock.py)

import lock as lock_tool  # noqa: E402  (scripts/lock.py)

LOCK_FILES = sorted((REPO / "locks").glob("py*.lock"))


def test_there_is_a_lock_for_every_supported_python_and_the_package_says_so():
    assert [p.name for p in LOCK_FILES] == [f"py{v}.lock" for v in lock_tool.SUPPORTED]
    import tomllib

    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == f">={lock_tool.SUPPORTED[0]}"  # no upper cap: Colab's next Python installs from the ranges


@pytest.mark.parametrize("path", LOCK_FILES, ids=lambda p: p.name)
def test_each_lock_pins_every_requirement_within_its_range(path):
    text = path.read_text()
    pins = lock_tool.read_lock(path)
    runtime_part = lock_tool.read_lock_text(text[:text.index(lock_tool.DEV_MARK)])
    for name in ("requirements.txt", "requirements-dev.txt"):
        for r in requirements(REPO / name):
            v = pins.get(normalise(r.name))
            assert v is not None, f"{path.name} lacks {r.name}"
            assert r.specifier.contains(v, prereleases=True), f"{path.name}: {r.name}=={v} outside {r.specifier}"
            if name == "requirements.txt":  # a plain (non-DEV) install gets it
                assert normalise(r.name) in runtime_part, f"{r.name} is in {path.name}'s DEV=1 part"
    assert pins["torch"] == lock_tool.TORCH
    assert {n: pins[n] for n in lock_tool.NO_DEPS} == lock_tool.NO_DEPS
    assert not [n for n in pins if lock_tool.CUDA_RUNTIME.match(f"{n}==")]  # torch brings its own CUDA runtime
    assert all(n in runtime_part for n in lock_tool.NO_DEPS)
    # a pre-release only where a requirement names one (essentia-tensorflow's only release is one)
    explicit = {normalise(r.name) for f in ("requirements.txt", "requirements-dev.txt") for r in requirements(REPO / f)
                if any(Version(s.version).is_prerelease for s in r.specifier)}
    assert {n for n, v in pins.items() if Version(v).is_prerelease} <= explicit


def test_every_lower_bound_is_a_version_ci_runs():
    """The oldest of the Python 3.11 lock's version (the README's path) and Colab's (the Colab-like
    check installs it): a bound below both would promise a version nobody tested."""
    tested = lock_tool.tested_floor(lock_tool.read_lock(REPO / "locks" / "py3.11.lock"), colab())
    for name in ("requirements.txt", "requirements-dev.txt"):
        for r in requirements(REPO / name):
            lower = [s.version for s in r.specifier if s.operator == ">="]
            if lower:
                assert lower == [tested[normalise(r.name)]], f"{name}: {r} (tested: {tested[normalise(r.name)]})"


def test_raising_bounds_keeps_extras_comments_and_exact_pins():
    text = "yt-dlp[default]>=2025.1  # why\nnumpy>=1.25\ndemucs==4.1.0\n# numpy>=1 in a comment\n"
    out = lock_tool.raise_bounds(text, {"yt-dlp": "2026.11.23", "numpy": "2.1.3", "demucs": "9"})
    assert out == "yt-dlp[default]>=2026.11.23 # why\nnumpy>=2.1.3\ndemucs==4.1.0\n# numpy>=1 in a comment\n"
    assert lock_tool.tested_floor({"numpy": "2.4.6", "peft": "0.21.2"}, {"numpy": "2.1.3", "peft": "0.22.0"}) == \
        {"numpy": "2.1.3", "peft": "0.21.2"}


# ---------------------------------------------------------------- scripts/install.sh with stand-ins

FAKE_PYTHON = r"""#!/usr/bin/env bash
# stands in for the interpreter: logs each call (and the requirement files it is given, to FAKE_LOG.req);
# `$FAIL_ON` in the arguments makes it fail like pip
echo "$0 $*" >> "$FAKE_LOG"
prev=""
for a in "$@"; do [ "$prev" = "-r" ] && cat "$a" >> "$FAKE_LOG.req"; prev=$a; done
if [ -n "${FAIL_ON:-}" ] && [[ "$*" == *"$FAIL_ON"* ]]; then
  echo "ERROR: Could not find a version that satisfies the requirement stand-in>=9" >&2; exit 1
fi
case "$*" in
  *"-m yt_dlp --verbose"*) echo "[debug] JS runtimes: ${FAKE_JS-deno-2.9.8}"; exit 2 ;;  # 2: no URL given
  *find_deno_bin*) echo "2.9.8" ;;
  *sys.version_info*) echo "${FAKE_PY_VERSION:-3.11}" ;;
  "-m venv "*) mkdir -p "$3/bin" && cp "$0" "$3/bin/python" ;;  # a venv whose python is this stand-in
  *"import ensurepip"*) [ -z "${FAKE_NO_ENSUREPIP:-}" ] || exit 1 ;;
  "-c import torch") [ -z "${FAKE_NO_TORCH:-}" ] || exit 1 ;;
esac
exit 0
"""


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def stand_ins(tmp_path):
    """(python stand-in, environment, log file): apt-get and sudo log; dpkg says nothing is installed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    log.write_text("")
    python = _executable(bin_dir / "python-stand-in", FAKE_PYTHON)
    _executable(bin_dir / "apt-get", '#!/bin/sh\necho "apt-get $*" >> "$FAKE_LOG"\n')
    _executable(bin_dir / "sudo", '#!/bin/sh\n"$@"\n')
    _executable(bin_dir / "dpkg", "#!/bin/sh\nexit 1\n")
    env = {k: v for k, v in os.environ.items() if k not in ("COLAB_RELEASE_TAG", "SKIP_APT", "DEV", "FAIL_ON", "INTO")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_LOG=str(log), PYTHON=str(python),
               VENV=str(tmp_path / "venv"))
    return python, env, log


def run_install_sh(env, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / "install.sh")], env={**env, **extra},
                          capture_output=True, text=True, timeout=60)


def test_install_sh_outside_colab_builds_a_venv_from_the_lock_without_the_dev_part(stand_ins, tmp_path):
    _, env, log = stand_ins
    r = run_install_sh(env, FAKE_NO_TORCH="1")
    assert r.returncode == 0, r.stdout + r.stderr
    calls, lock = log.read_text(), (REPO / "locks" / "py3.11.lock").read_text()
    assert "apt-get install -y -qq --no-install-recommends ffmpeg fluidsynth timgm6mb-soundfont\n" in calls
    venv_python = tmp_path / "venv" / "bin" / "python"
    assert f"-m venv {tmp_path / 'venv'}" in calls and venv_python.exists()
    pip_calls = [c for c in calls.splitlines() if "-m pip install" in c]
    assert pip_calls and all(str(venv_python) in c for c in pip_calls)  # never the base interpreter
    pins = dict(line.split("==", 1) for line in lock.splitlines() if re.match(r"^(pip|setuptools|wheel|torch)==", line))
    assert f"pip=={pins['pip']} setuptools=={pins['setuptools']} wheel=={pins['wheel']}" in calls
    assert f"-c locks/py3.11.lock torch=={pins['torch']}" in calls  # torch with its dependencies, pinned
    assert "--no-deps --no-build-isolation -r " in calls and "requirements.txt" not in calls
    given = (tmp_path / "calls.log.req").read_text()
    assert given == lock[:lock.index("# ==== only with DEV=1")]  # the lock up to its dev part
    assert "audiocraft==1.3.0" in given and "torchaudio==" in given and "pytest==" not in given
    assert f"install OK into {tmp_path / 'venv'}" in r.stdout


def test_install_sh_with_dev_installs_the_whole_lock_and_asks_apt_for_venv_when_python_lacks_it(stand_ins, tmp_path):
    _, env, log = stand_ins
    r = run_install_sh(env, DEV="1", FAKE_NO_ENSUREPIP="1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "--no-install-recommends ffmpeg fluidsynth timgm6mb-soundfont python3.11-venv\n" in log.read_text()
    assert (tmp_path / "calls.log.req").read_text() == (REPO / "locks" / "py3.11.lock").read_text()
    assert "torch==" not in log.read_text()  # torch was importable: not installed again


def test_install_sh_refuses_a_python_without_a_lock_by_name(stand_ins):
    _, env, log = stand_ins
    r = run_install_sh(env, SKIP_APT="1", FAKE_PY_VERSION="3.9")
    assert r.returncode != 0
    assert "no lock for Python 3.9" in r.stderr and "py3.11.lock" in r.stderr and "INTO=current" in r.stderr
    assert "-m pip" not in log.read_text()


def test_install_sh_into_current_installs_the_ranges_into_that_interpreter(stand_ins):
    python, env, log = stand_ins
    r = run_install_sh(env, INTO="current", SKIP_APT="1")
    assert r.returncode == 0, r.stdout + r.stderr
    calls = log.read_text()
    assert "-m venv" not in calls and "-r requirements.txt" in calls and "requirements-dev.txt" not in calls
    assert "--no-deps audiocraft==1.3.0" in calls and "--no-deps --no-build-isolation -e ." in calls
    assert "torch==" not in calls  # torch was importable: never replaced
    assert f"install OK into {python} " in r.stdout


def test_install_sh_in_colab_leaves_apt_alone_and_dev_adds_the_test_packages(stand_ins):
    _, env, log = stand_ins
    r = run_install_sh(env, COLAB_RELEASE_TAG="release-colab-20260801", DEV="1")
    assert r.returncode == 0, r.stdout + r.stderr
    calls = log.read_text()
    # dpkg here reports ffmpeg missing too, so only ffmpeg is asked for; fluidsynth and the soundfont never
    assert "apt-get install -y -qq --no-install-recommends ffmpeg\n" in calls
    assert "fluidsynth" not in calls and "soundfont" not in calls
    assert "-r requirements.txt" in calls and "-r requirements-dev.txt" in calls
    assert "music21, pytest, papermill, hypothesis" in calls  # the final check imports them too


def test_install_sh_fails_when_yt_dlp_finds_no_javascript_runtime(stand_ins):
    _, env, _ = stand_ins
    r = run_install_sh(env, SKIP_APT="1", FAKE_JS="none")
    assert r.returncode == 1
    assert "yt-dlp finds no JavaScript runtime" in r.stdout and "install check FAILED" in r.stdout


# ---------------------------------------------------------------- jpop_helpers.install

def test_install_raises_with_the_failed_step_and_the_error(stand_ins, capsys, monkeypatch):
    python, env, log = stand_ins
    for k in ("PATH", "FAKE_LOG"):  # install() passes its environment on to the script
        monkeypatch.setenv(k, env[k])
    monkeypatch.setenv("FAIL_ON", "-r requirements.txt")
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    with pytest.raises(RuntimeError) as err:
        install(REPO, python=str(python))
    message = str(err.value)
    assert "exit status 1" in message
    assert "during step: Python packages (requirements.txt)" in message  # a notebook: INTO=current
    assert "Could not find a version that satisfies the requirement stand-in>=9" in message  # pip's reason
    assert "audiocraft" not in log.read_text()  # the script stopped at the failure
    assert "==> jpop-musicgen install: torchaudio (only if missing)" in capsys.readouterr().out  # streamed


def test_install_streams_and_returns_when_the_script_succeeds(tmp_path, capsys):
    script = _executable(tmp_path / "ok.sh", '#!/bin/bash\necho "==> jpop-musicgen install: one"\necho "DEV=$DEV PY=$PYTHON"\n')
    assert install(tmp_path, dev=True, script=script) is None
    assert capsys.readouterr().out == f"==> jpop-musicgen install: one\nDEV=1 PY={sys.executable}\n"


def test_install_of_a_failing_stand_in_names_its_last_step(tmp_path):
    script = _executable(tmp_path / "bad.sh", "#!/bin/bash\n"
                         'echo "==> jpop-musicgen install: first"\necho "==> jpop-musicgen install: second"\n'
                         'echo "disk full" >&2\nexit 7\n')
    with pytest.raises(RuntimeError, match=r"(?s)exit status 7\) during step: second\n.*disk full"):
        install(tmp_path, script=script)
    with pytest.raises(FileNotFoundError):
        install(tmp_path, script=tmp_path / "missing.sh")


def test_install_module_imports_with_the_standard_library_only():
    """The notebook imports it before anything is installed: -S leaves site-packages off sys.path."""
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); import jpop_helpers.install; print('ok')"
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "ok", r.stderr


# ---------------------------------------------------------------- scripts/colab_env_check.py's helpers

def test_colab_stubs_make_colabs_versions_visible_as_installed(tmp_path):
    from importlib.metadata import distributions

    from colab_env_check import write_stubs

    assert write_stubs(tmp_path, {"ipywidgets": "7.7.1", "torch": "2.11.0+cu128", "pip": "24.1.2"}) == 2
    seen = {d.metadata["Name"]: d.version for d in distributions(path=[str(tmp_path)])}
    assert seen == {"ipywidgets": "7.7.1", "torch": "2.11.0+cu128"}


def test_colab_env_check_reports_every_changed_package_but_the_allowed_ones():
    from colab_env_check import changed

    before = {"ipywidgets": "7.7.1", "numpy": "2.1.3", "certifi": "2026.7.22", "tqdm": "4.67.3"}
    after = {"ipywidgets": "8.1.9", "certifi": "2026.10.19", "tqdm": "4.67.3"}
    assert changed(before, after) == ["ipywidgets 7.7.1 -> 8.1.9", "numpy 2.1.3 -> removed"]
