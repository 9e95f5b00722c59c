"""Drift canary for CI: the newest release of every direct dependency, in a venv of its own, and the
fast tests there. What a fresh `pip install -U` gets today, and what Colab's next image may ship.

    python3 scripts/newest_check.py                    # in a temporary folder
    python3 scripts/newest_check.py --workdir DIR      # keep the venv in DIR (re-created each run)
    python3 scripts/newest_check.py -- -k lora         # extra pytest arguments

1. A venv from `python3` (Debian's own on CI), with the lock's pip.
2. The newest torch on PyPI (outside this machine's pip configuration, whose cap would hold it back:
   PIP_CONFIG_FILE=/dev/null), and `pip install --upgrade` of every name in requirements*.txt, without
   their version ranges: pip resolves the newest set that installs together. audiocraft, xformers and
   torchaudio, whose pins would downgrade torch, are installed at their newest with --no-deps, as
   install.sh does.
3. A table of every direct dependency: the lock's version (locks/py3.X.lock) and the newest.
4. The fast tests (`pytest -m "not slow"`). If any fails, each direct dependency that differs from the
   lock is put back to the lock's version, one at a time, and the failed tests are run again: the
   package whose return makes them pass is named, with both versions.

Standard library only. Exit status 0 when the fast tests pass with the newest releases; 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from colab_constraints import normalise  # noqa: E402

REQUIREMENTS = [REPO / "requirements.txt", REPO / "requirements-dev.txt"]
# installed --no-deps, as scripts/install.sh does (their metadata pins an older torch)
NO_DEPS = ["audiocraft", "xformers", "torchaudio"]
UNCAPPED = {"PIP_CONFIG_FILE": os.devnull}  # this machine's pip.conf caps torch; a user's does not


def log(msg: str) -> None:
    print(f"[newest-check] {msg}", flush=True)


def run(cmd: list[str], env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], env={**os.environ, **(env or {})}, **kw)
    if r.returncode != 0:
        raise SystemExit(f"newest-check: FAILED: {' '.join(map(str, cmd))} (exit status {r.returncode})")
    return r


def direct_names() -> list[str]:
    """Every package named in requirements*.txt, with its extras, without its version range."""
    names = []
    for path in REQUIREMENTS:
        for line in path.read_text().splitlines():
            m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*(\[[^\]]*\])?)", line.split("#", 1)[0])
            if m:
                names.append(m.group(1))
    return names


def lock_versions(python: Path) -> dict[str, str]:
    version = subprocess.run([str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    path = REPO / "locks" / f"py{version}.lock"
    out = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if m:
            out[normalise(m.group(1))] = m.group(2)
    return out


def installed(python: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                         capture_output=True, text=True, check=True).stdout
    return {normalise(p["name"]): p["version"] for p in json.loads(out)}


def drift_table(direct: list[str], locked: dict[str, str], have: dict[str, str]) -> list[tuple[str, str, str]]:
    """(name, lock version, installed version) of every direct dependency, torch included."""
    names = sorted({normalise(n.split("[")[0]) for n in direct} | {"torch", *NO_DEPS})
    return [(n, locked.get(n, "-"), have.get(n, "-")) for n in names]


def failed_tests(junit: Path) -> list[str]:
    """Node ids (file::name) of the failed or erroring tests in a junit XML report."""
    out = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            path = case.get("classname", "").replace(".", "/") + ".py"
            out.append(f"{path}::{case.get('name')}")
    return out


def pytest(python: Path, env: dict, args: list[str], junit: Path) -> int:
    cmd = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *args]
    return subprocess.run(cmd, cwd=REPO, env=env).returncode


def culprits(python: Path, env: dict, drifted: list[tuple[str, str, str]], failed: list[str], work: Path) -> list[str]:
    """Each drifted package whose lock version, put back alone, makes the failed tests pass."""
    found = []
    for name, old, new in drifted:
        log(f"bisect: {name} {new} -> {old} (the lock's), then the {len(failed)} failed test(s) again")
        pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
        run([*pip, f"{name}=={old}"], env=UNCAPPED)
        if pytest(python, env, failed, work / f"bisect-{name}.xml") == 0:
            found.append(f"{name} {new} (the lock has {old}: with it the failed tests pass)")
        run([*pip, f"{name}=={new}"], env=UNCAPPED)
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, help="where the venv goes (default: a temporary folder, removed)")
    ap.add_argument("--python", default="python3", help="the interpreter the venv is built from")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    a = ap.parse_args(argv)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="newest-check-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        venv = work / "newest"
        shutil.rmtree(venv, ignore_errors=True)
        run([a.python, "-m", "venv", venv])
        python = venv / "bin" / "python"
        locked = lock_versions(python)
        pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        run([*pip, f"pip=={locked['pip']}" if "pip" in locked else "pip"])
        log("newest torch, then the newest of every direct dependency")
        run([*pip, "--upgrade", "torch"], env=UNCAPPED)
        direct = direct_names()
        run([*pip, "--upgrade", *direct], env=UNCAPPED, cwd=REPO)
        run([*pip, "--upgrade", "--no-deps", *NO_DEPS], env=UNCAPPED)
        if subprocess.run([python, "-c", "import torchaudio"], capture_output=True).returncode != 0:
            # its native extension is built for another torch: audiocraft needs only its Python (install.sh)
            ta = subprocess.run([python, "-c", "import importlib.util as u; print(u.find_spec('torchaudio').submodule_search_locations[0])"],
                                capture_output=True, text=True, check=True).stdout.strip()
            for so in Path(ta, "lib").glob("_torchaudio*.so"):
                so.unlink()
            run([python, "-c", "import torchaudio"])
        run([*pip, "--no-deps", "--no-build-isolation", "-e", REPO])
        have = installed(python)
        table = drift_table(direct, locked, have)
        drifted = [row for row in table if row[1] not in ("-", row[2]) and row[2] != "-"]
        log(f"installed in {time.monotonic() - t0:.0f} s; direct dependencies, lock -> newest:")
        for name, old, new in table:
            log(f"  {name:24s} {old:>16s} -> {new}{'' if old == new else '   (newer)'}")
        env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(venv)}
        junit = work / "newest.xml"
        code = pytest(python, env, ["-m", "not slow", *a.pytest_args], junit)
        log(f"fast tests with the newest releases: exit status {code} ({time.monotonic() - t0:.0f} s in all)")
        if code == 0:
            log("OK: the fast tests pass with the newest release of every direct dependency")
            return 0
        failed = failed_tests(junit)
        log(f"{len(failed)} failed: {', '.join(failed[:10])}")
        named = culprits(python, env, drifted, failed, work) if failed else []
        for c in named:
            print(f"newest-check: FAILED because of {c}", flush=True)
        if not named:
            print("newest-check: FAILED; no single package's lock version fixes it. Newer than the lock: "
                  + ", ".join(f"{n} {new} (lock {old})" for n, old, new in drifted), flush=True)
        return 1
    finally:
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
