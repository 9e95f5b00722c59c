"""Write Colab's package versions as pip constraints: scripts/colab-constraints.txt.

    python3 scripts/colab_constraints.py ../shared/colab/pip-freeze-gpu.txt > scripts/colab-constraints.txt

The input is `pip freeze` of Colab's GPU runtime. Every `name==version` line is kept (names
normalised, sorted); direct-URL lines (`name @ url`) are dropped. Standard library only.
The CUDA builds (`torch==2.11.0+cu128`...) stay as they are: scripts/colab_env_check.sh leaves them
out where it installs packages (torch stays the CPU build) and uses them where it only simulates Colab.
"""
from __future__ import annotations

import re
import sys


def normalise(name: str) -> str:
    """PEP 503 name: lower case, runs of -_. as one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def colab_pins(freeze_text: str) -> dict[str, str]:
    """{normalised name: version} for every `name==version` line of a pip freeze."""
    pins = {}
    for line in freeze_text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "==" in line:
            name, version = line.split("==", 1)
            pins[normalise(name)] = version.strip()
    return pins


def render(pins: dict[str, str], source: str) -> str:
    head = (f"# Colab's GPU runtime, as pip constraints (generated from {source} by\n"
            "# scripts/colab_constraints.py; do not edit by hand). Used by scripts/colab_env_check.sh and\n"
            "# tests/test_install.py.\n")
    return head + "".join(f"{n}=={v}\n" for n, v in sorted(pins.items()))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        sys.stdout.write(render(colab_pins(f.read()), "colab/pip-freeze-gpu.txt"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
