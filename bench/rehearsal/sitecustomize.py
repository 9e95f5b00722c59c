"""Loaded at start-up by every Python process of the CPU rehearsal (bench/gpu_all.sh with this folder on
PYTHONPATH, tests/test_gpu_rehearsal.py): imports behave as on the lent GPU image (bench/lent_image.py).

JPOP_LENT_GUARD names the `pip --target` folder the wheels were installed into."""
import os
import sys
from pathlib import Path

if os.environ.get("JPOP_LENT_GUARD"):
    repo = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(repo / "bench"))
    from lent_image import install_guard

    sys.path.remove(str(repo / "bench"))
    install_guard([Path(os.environ["JPOP_LENT_GUARD"]), repo])
