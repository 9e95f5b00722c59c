"""Install: requirements never replace what Colab ships, scripts/install.sh's steps, and
jpop_helpers.install, which makes a failed install stop the notebook with its reason.

scripts/install.sh is run for real here, with stand-ins for python, apt-get and dpkg on PATH that
record what they were asked to do (no package is installed).
"""
from __future__ import annotations

import os
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
DEV_ONLY = {"papermill", "pytest", "nbformat", "music21", "ipykernel", "hypothesis"}


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
    expected = ({"numpy", "transformers", "peft", "ipywidgets", "protobuf", "librosa"}
                if name == "requirements.txt" else {"pytest", "music21", "nbformat", "ipykernel"})
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


# ---------------------------------------------------------------- scripts/install.sh with stand-ins

FAKE_PYTHON = r"""#!/usr/bin/env bash
# stands in for the interpreter: logs each call; `$FAIL_ON` in the arguments makes it fail like pip
echo "python $*" >> "$FAKE_LOG"
if [ -n "${FAIL_ON:-}" ] && [[ "$*" == *"$FAIL_ON"* ]]; then
  echo "ERROR: Could not find a version that satisfies the requirement stand-in>=9" >&2; exit 1
fi
case "$*" in
  *"-m yt_dlp --verbose"*) echo "[debug] JS runtimes: ${FAKE_JS-deno-2.9.8}"; exit 2 ;;  # 2: no URL given
  *find_deno_bin*) echo "2.9.8" ;;
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
    env = {k: v for k, v in os.environ.items() if k not in ("COLAB_RELEASE_TAG", "SKIP_APT", "DEV", "FAIL_ON")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_LOG=str(log), PYTHON=str(python))
    return python, env, log


def run_install_sh(env, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / "install.sh")], env={**env, **extra},
                          capture_output=True, text=True, timeout=60)


def test_install_sh_outside_colab_installs_the_demo_packages_and_runtime_requirements(stand_ins):
    _, env, log = stand_ins
    r = run_install_sh(env)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = log.read_text()
    assert "apt-get install -y -qq --no-install-recommends ffmpeg fluidsynth timgm6mb-soundfont" in calls
    assert "-r requirements.txt" in calls and "requirements-dev.txt" not in calls
    assert "--no-deps audiocraft==1.3.0" in calls and "--no-deps -e ." in calls
    assert "torch==" not in calls  # torch was importable: never replaced
    assert "install OK (yt-dlp's JavaScript runtime: deno-2.9.8)" in r.stdout


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
    assert "during step: Python packages (requirements.txt)" in message
    assert "Could not find a version that satisfies the requirement stand-in>=9" in message  # pip's reason
    assert "audiocraft" not in log.read_text()  # the script stopped at the failure
    assert "==> jpop-musicgen install: torch and torchaudio" in capsys.readouterr().out  # streamed


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
