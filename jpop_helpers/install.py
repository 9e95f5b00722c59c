"""Run scripts/install.sh from a notebook and stop the notebook when it fails.

`!bash scripts/install.sh` in a notebook cell ignores the script's exit status: a failed install goes
on silently and breaks later cells with an ImportError far from its cause. The notebooks' install cell
calls this right after `git clone`, before any dependency is installed, so this module (and
jpop_helpers/__init__.py) may import only the standard library:

    import sys; sys.path.insert(0, "/content/jpop-musicgen")
    from jpop_helpers.install import install
    install("/content/jpop-musicgen")          # dev=True also installs requirements-dev.txt
"""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from pathlib import Path

STEP_PREFIX = "==> jpop-musicgen install: "  # scripts/install.sh announces each step with this prefix
TAIL_LINES = 25


def install(repo_dir: str | os.PathLike = ".", dev: bool = False, *, script: str | os.PathLike | None = None,
            python: str | None = None) -> None:
    """Run the install script of a checkout, streaming its output, and raise if it fails.

    Args:
        repo_dir: the checkout (the script runs with it as working directory).
        dev: also install requirements-dev.txt (tests, offline demo): DEV=1 for the script.
        script: the script to run; default `<repo_dir>/scripts/install.sh`.
        python: the interpreter to install into (PYTHON for the script, with INTO=current: from the
            ranges of requirements*.txt, as in Colab); default this kernel's.
    Raises:
        FileNotFoundError: no such script.
        RuntimeError: the script exited non-zero; the message names the step that failed (the last
            step the script announced) and ends with the last lines of its output.
    """
    repo_dir = Path(repo_dir).resolve()
    script = Path(script) if script is not None else repo_dir / "scripts" / "install.sh"
    if not script.is_file():
        raise FileNotFoundError(f"install script not found: {script}")
    # INTO=current: into the kernel's own environment (a venv beside it would not reach the notebook)
    env = dict(os.environ, PYTHON=python or sys.executable, PYTHONUNBUFFERED="1", INTO="current")
    env["DEV"] = "1" if dev else ""
    step = "start (before the first step)"
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    # its own process group, so that an interrupted cell stops pip too, not only bash
    proc = subprocess.Popen(["bash", str(script)], cwd=repo_dir, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            bufsize=1, start_new_session=True)
    try:
        for line in proc.stdout:
            print(line, end="", flush=True)
            tail.append(line.rstrip("\n"))
            if line.startswith(STEP_PREFIX):
                step = line[len(STEP_PREFIX):].strip()
        proc.wait()
    except BaseException:  # KeyboardInterrupt in a notebook: stop the install, then re-raise
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        raise
    finally:
        proc.stdout.close()
    if proc.returncode != 0:
        last = "\n".join(tail) or "(no output)"
        raise RuntimeError(f"{script.name} failed (exit status {proc.returncode}) during step: {step}\n"
                           f"last lines of its output:\n{last}")
