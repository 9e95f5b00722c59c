"""What the run's machine is, and where its packages came from: bench/gpu_all.sh's first step.

    python bench/device_info.py --out device.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

# the carried wheels (bench/gpu_wheels.py) and the image's packages the benchmarks rest on
PACKAGES = ("audiocraft", "xformers", "bitsandbytes", "demucs", "spacy", "av", "transformers", "numpy", "torchaudio")


def describe() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cpus": os.cpu_count(), "gpu": None}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 2),
                       "multiprocessors": p.multi_processor_count}
    if shutil.which("nvidia-smi"):
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"],
                                            capture_output=True, text=True).stdout.strip()
    info["packages"] = {}
    for name in PACKAGES:
        try:
            info["packages"][name] = version(name)
        except PackageNotFoundError:
            info["packages"][name] = None
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    info = describe()
    print(json.dumps(info, indent=2))
    Path(a.out).write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
