"""A Colab-like environment for CI: our install must keep what Colab ships, and the fast tests pass there.

    python3 scripts/colab_env_check.py                 # both parts, in a temporary folder
    python3 scripts/colab_env_check.py --workdir DIR   # keep the venvs in DIR (re-created each run)

Colab's package set comes from scripts/colab-constraints.txt (Colab's `pip freeze`, committed, so CI
needs nothing from ../shared). Two parts:

1. Python 3.13, simulated (about half a minute, no install): a venv whose site-packages holds a stub
   `.dist-info` for every package Colab ships, at Colab's version (torch 2.11.0+cu128 included), so pip
   sees exactly what Colab has installed. `pip install --dry-run --report` of requirements.txt and
   requirements-dev.txt then says what our install would add or replace in Colab, and on which wheels:
   binaries only (a requirement without a cp313 wheel fails here), except the few pure-Python packages
   that publish only sources (SDIST_ONLY). Fails if a package Colab ships would change version.
2. Python 3.11, installed for real: torch 2.13.0 CPU stands in for Colab's torch; the Colab packages
   our install involves (pip's plan for requirements*.txt: numpy, transformers, peft, ipywidgets,
   protobuf, librosa, pandas, spacy, their dependencies...) are installed at Colab's versions. Then the
   project's own install (scripts/install.sh with DEV=1, run through jpop_helpers.install as a notebook
   does, in Colab mode) and a comparison: fails if any pre-installed package changed version. Then the
   fast tests (`pytest -m "not slow"`) run in that venv.
   Why 3.11 and not Colab's 3.13: the only torch for 3.13 that pip can get here is PyPI's CUDA build
   (several GB); the CPU wheel cached on our machines is cp311 only. Part 1 covers 3.13's wheels.

Standard library only. Exit status 0 when both parts pass; 1 with the reasons otherwise.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONSTRAINTS = REPO / "scripts" / "colab-constraints.txt"
REQUIREMENTS = [REPO / "requirements.txt", REPO / "requirements-dev.txt"]
# Packages our install may upgrade in Colab, with the reason. yt-dlp[default] asks for the newest
# certifi (a CA bundle, data only) with each release; an older yt-dlp would fail on YouTube.
ALLOWED_CHANGES = {"certifi": "yt-dlp[default] requires the newest CA bundle"}
# Pure-Python dependencies that publish no wheel at all: built from source. Any other package must
# have a wheel for Colab's Python.
SDIST_ONLY = ["flashy", "docopt", "audiocraft", "torchvggish"]
# Colab's versions that must be present before our install, whatever requirements*.txt list (issue 8).
ALWAYS_PREINSTALLED = ["numpy", "transformers", "peft", "ipywidgets", "protobuf", "librosa"]
TORCH_STAND_IN = "torch==2.13.0"  # the CPU build cached on our machines (cp311)

sys.path.insert(0, str(REPO / "scripts"))
from colab_constraints import colab_pins, normalise  # noqa: E402


def log(msg: str) -> None:
    print(f"[colab-env-check] {msg}", flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a command, its output streamed; raise SystemExit naming it if it fails."""
    r = subprocess.run(cmd, **kw)
    if r.returncode != 0:
        raise SystemExit(f"colab-env-check: FAILED: {' '.join(map(str, cmd))} (exit status {r.returncode})")
    return r


def pip(python: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return run([str(python), "-m", "pip", "--disable-pip-version-check", *args], **kw)


def find_python(version: str, override_env: str) -> str:
    """An interpreter of that version: $override_env, `pythonX.Y` on PATH, or pyenv's."""
    candidates = [os.environ.get(override_env), shutil.which(f"python{version}"),
                  *sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))]
    for c in filter(None, candidates):
        r = subprocess.run([c, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip() == version:
            return c
    raise SystemExit(f"colab-env-check: no Python {version} found (set {override_env}=/path/to/python{version})")


def make_venv(base_python: str, path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    run([base_python, "-m", "venv", str(path)])
    return path / "bin" / "python"


def installed(python: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                         capture_output=True, text=True, check=True).stdout
    return {normalise(p["name"]): p["version"] for p in json.loads(out)}


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Packages whose version changed or that disappeared, except ALLOWED_CHANGES (reported apart)."""
    out = []
    for name, v in sorted(before.items()):
        if after.get(name) != v:
            what = f"{name} {v} -> {after.get(name, 'removed')}"
            if name in ALLOWED_CHANGES:
                log(f"allowed change: {what} ({ALLOWED_CHANGES[name]})")
            else:
                out.append(what)
    return out


# ------------------------------------------------------------------------------ part 1: 3.13, simulated

def write_stubs(purelib: Path, pins: dict[str, str]) -> int:
    """A stub .dist-info per Colab package in a site-packages folder (not pip: the venv has its own)."""
    n = 0
    for name, version in pins.items():
        if name == "pip":
            continue
        d = purelib / f"{name.replace('-', '_')}-{version}.dist-info"
        d.mkdir(parents=True, exist_ok=True)
        (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (d / "INSTALLER").write_text("colab-env-check stub\n")
        (d / "RECORD").write_text("")
        n += 1
    return n


def part_313(work: Path, pins: dict[str, str]) -> list[str]:
    t0 = time.monotonic()
    python = make_venv(find_python("3.13", "COLAB_CHECK_PY313"), work / "colab313-sim")
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    log(f"part 1: Python 3.13 venv with {write_stubs(purelib, pins)} stub packages at Colab's versions")
    report = work / "report313.json"
    binary = ["--only-binary=:all:", f"--no-binary={','.join(SDIST_ONLY)}"]
    reqs = [a for f in REQUIREMENTS for a in ("-r", str(f))]
    pip(python, "install", "-q", "--dry-run", "--report", str(report), *binary, *reqs, cwd=REPO)
    # what install.sh installs with --no-deps (torch is Colab's 2.11, so xformers 0.0.35)
    pip(python, "install", "-q", "--dry-run", "--no-deps", *binary, "audiocraft==1.3.0", "xformers==0.0.35")
    would = {normalise(i["metadata"]["name"]): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    log("part 1: in Colab our install (DEV=1) would add: "
        + ", ".join(f"{n} {v}" for n, v in sorted(would.items()) if n not in pins))
    problems = changed({n: pins[n] for n in would if n in pins}, {n: would[n] for n in would if n in pins})
    log(f"part 1: done in {time.monotonic() - t0:.0f} s")
    return [f"on Python 3.13 our install would replace Colab's {c}" for c in problems]


# ------------------------------------------------------------------------------ part 2: 3.11, installed

def part_311(work: Path, pins: dict[str, str], pytest_args: list[str]) -> list[str]:
    t0 = time.monotonic()
    venv = work / "colab311"
    python = make_venv(find_python("3.11", "COLAB_CHECK_PY311"), venv)
    # Colab's CUDA builds (+cu128) cannot be installed here: torch stays the CPU stand-in. The packaging
    # tools stay the venv's own (torch 2.13 needs setuptools>=77; Colab's torch 2.11 lives with 75.2).
    constraints = work / "colab-constraints-installable.txt"
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in pins.items()
                                   if "+" not in v and n not in ("pip", "setuptools", "wheel")))
    log(f"part 2: Python 3.11 venv; {TORCH_STAND_IN} (CPU) stands in for Colab's torch {pins.get('torch')}")
    pip(python, "install", "-q", "-c", str(constraints), TORCH_STAND_IN)
    # Which of Colab's packages our install involves: pip's plan for requirements*.txt, resolved with
    # Colab's versions (the allowed changes left free, since they cannot keep Colab's version).
    plan_constraints = work / "colab-constraints-plan.txt"
    plan_constraints.write_text("".join(line for line in constraints.read_text().splitlines(keepends=True)
                                        if line.split("==")[0] not in ALLOWED_CHANGES))
    report = work / "report311.json"
    pip(python, "install", "-q", "--dry-run", "--report", str(report), "-c", str(plan_constraints),
        *[a for f in REQUIREMENTS for a in ("-r", str(f))], cwd=REPO)
    plan = {normalise(i["metadata"]["name"]) for i in json.loads(report.read_text())["install"]}
    names = sorted((set(ALWAYS_PREINSTALLED) | plan) & pins.keys())
    pre = [f"{n}=={pins[n]}" for n in names]
    log("part 2: Colab's versions first: " + " ".join(pre))
    pip(python, "install", "-q", "-c", str(constraints), *pre)
    before = installed(python)
    wrong = [f"{n} {before.get(n)} (Colab has {pins[n]})" for n in names if before.get(n) != pins[n]]
    if wrong:
        return ["the Colab-like venv did not get Colab's versions: " + ", ".join(wrong)]
    log(f"part 2: {len(before)} packages before our install ({time.monotonic() - t0:.0f} s); now the project's install")
    # exactly what a notebook's install cell does, in Colab mode (no apt for the demo's packages)
    env = {**os.environ, "COLAB_RELEASE_TAG": os.environ.get("COLAB_RELEASE_TAG", "colab-like-ci")}
    run([str(python), "-c", "from jpop_helpers.install import install; install('.', dev=True)"], cwd=REPO, env=env)
    after = installed(python)
    problems = [f"our install changed Colab's {c}" for c in changed(before, after)]
    log(f"part 2: install done ({time.monotonic() - t0:.0f} s); added: "
        + ", ".join(f"{n} {v}" for n, v in sorted(after.items()) if n not in before))
    if problems:
        return problems
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(venv)}
    r = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", *pytest_args],
                       cwd=REPO, env=env)
    log(f"part 2: done in {time.monotonic() - t0:.0f} s")
    return [] if r.returncode == 0 else [f"fast tests failed in the Colab-like venv (pytest exit status {r.returncode})"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, help="where the venvs go (default: a temporary folder, removed)")
    ap.add_argument("--part", choices=["313", "311", "both"], default="both")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments for part 2 (after --)")
    a = ap.parse_args(argv)
    if not CONSTRAINTS.is_file():
        raise SystemExit(f"colab-env-check: {CONSTRAINTS} is missing (python3 scripts/colab_constraints.py "
                         "../shared/colab/pip-freeze-gpu.txt > scripts/colab-constraints.txt)")
    pins = colab_pins(CONSTRAINTS.read_text())
    work = a.workdir or Path(tempfile.mkdtemp(prefix="colab-env-check-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    problems = []
    try:
        if a.part in ("313", "both"):
            problems += part_313(work, pins)
        if a.part in ("311", "both"):
            problems += part_311(work, pins, a.pytest_args)
    finally:
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    log(f"total {time.monotonic() - t0:.0f} s")
    for p in problems:
        print(f"colab-env-check: FAILED: {p}", flush=True)
    if not problems:
        log({"313": "OK: on Python 3.13 our install keeps Colab's packages, with wheels for all",
             "311": "OK: our install keeps Colab's packages, and the fast tests pass beside them",
             "both": "OK: our install keeps Colab's packages (3.13 wheels for all), and the fast tests "
                     "pass beside them"}[a.part])
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
