"""Pack what the lent GPU machine lacks into .whl/, and check that it can travel.

The lent machine (bench/lent_image.py) has torch, transformers, peft... but not audiocraft and the rest
of what the benchmarks import, and it cannot download anything. This builds the wheels that
bench/gpu_all.sh installs there with `pip install --no-index --no-deps --target`:

  - ROOTS and what their wheels require (markers evaluated for the target Python on x86-64 Linux),
    minus what the image has, at the versions of locks/py3.<minor>.lock (what scripts/install.sh
    installs): manylinux wheels where PyPI has them, pure-Python sdists built into wheels where not;
  - stubs of what audiocraft imports at module top but no benchmark calls (STUBS), and nothing of what
    no benchmark imports (SKIP). The CPU rehearsal (tests/test_gpu_rehearsal.py) runs gpu_all.sh with
    imports limited to the image's packages plus these wheels, so a missing one fails there.

Then the total that travels (these wheels and the work tree: tracked and untracked-not-ignored files)
is printed against the device tool's 64 MiB, and the script fails above it.

    python bench/gpu_wheels.py                           # .whl/ for the lent image (Python 3.12)
    python bench/gpu_wheels.py --python 3.11 --dest DIR  # the set for this machine's Python (the rehearsal)
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from lent_image import LENT_PACKAGES, PYTHON, normalize  # noqa: E402

MIB = 2**20
LIMIT_MIB = 64  # what one device call carries: the work tree and the carried paths together
ROOTS = {  # what the benchmarks import that the image lacks
    "audiocraft": "the model API every benchmark builds on",
    "xformers": "audiocraft imports xformers.ops at module top and calls ops.unbind in every attention",
    "julius": "audiocraft.data.audio_utils resamples with it",
    "omegaconf": "audiocraft's builders take OmegaConf configs",
    "dora-search": "audiocraft.data.audio_dataset imports dora",
    "hydra-core": "dora imports hydra, which dora-search's metadata does not declare",
    "num2words": "audiocraft's text normalizers (imported at module top)",
    "flashy": "audiocraft.quantization imports flashy",
    "soundfile": "audio files (jpop_helpers.io, audiocraft.data.audio)",
    "librosa": "jpop_helpers.io resamples with it; audiocraft's chroma uses its filters",
    "demucs": "bench/separate_speed.py separates through jpop_helpers.separate",
    "bitsandbytes": "8-bit AdamW, a full fine-tune's default optimizer: the T4 stand-in's full rows",
}
NO_DEPS = {"audiocraft": "its metadata pins torch==2.1.0, spacy, av, torchtext...: its real imports are the ROOTS"}
STUBS = {  # imported at module top by audiocraft, never called by a benchmark: a stub saves the MiB
    "spacy": "audiocraft.modules.conditioners imports it for WhiteSpaceTokenizer, which the benchmarks never "
             "build (their text conditioners are T5 and lookup tables with the 'noop' tokenizer); the real "
             "spacy is ~25 MiB of wheels",
    "av": "audiocraft.data.audio imports it to decode compressed audio, which the benchmarks never read "
          "(they make audio in memory and write wav/flac through soundfile); the real av is 34 MiB",
}
SKIP = {  # required by a wheel's metadata, never imported on the benchmarks' paths
    "sphn": "demucs' audio file I/O (demucs.audio): jpop_helpers.separate imports demucs.apply and demucs.hf only",
    "lameenc": "demucs' mp3 writer (demucs.audio), likewise",
    "docopt": "num2words' command-line tool only",
}
SOURCE_ONLY = {"audiocraft", "flashy", "docopt", "antlr4-python3-runtime"}  # no wheel on PyPI: built from the sdist
# Every manylinux level up to glibc 2.35 (the image's Python 3.12.3 is Ubuntu 24.04's, glibc 2.39):
# pip matches each level exactly, and wheels are published under several.
PLATFORMS = ["manylinux1_x86_64", "manylinux2014_x86_64"] + [f"manylinux_2_{n}_x86_64" for n in range(17, 36)]


def read_lock(python: str) -> dict[str, str]:
    """{normalized name: version} from locks/py<python>.lock."""
    pins = {}
    for line in (REPO / "locks" / f"py{python}.lock").read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, version = line.split("==")
            pins[normalize(name)] = version.strip()
    return pins


def wheel_name(path: Path) -> str:
    return normalize(path.name.split("-")[0])


def requirements(wheel: Path, python: str) -> list[str]:
    """Names a wheel requires on x86-64 Linux under `python` (no extras)."""
    env = default_environment() | {"python_version": python, "python_full_version": f"{python}.0",
                                   "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                                   "implementation_name": "cpython", "platform_python_implementation": "CPython",
                                   "os_name": "posix", "extra": ""}
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
    return [normalize(r.name) for r in reqs if r.marker is None or r.marker.evaluate(env)]


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def fetch(names: list[str], pins: dict[str, str], python: str, dest: Path) -> None:
    """Binary wheels for the target Python and manylinux x86-64; the SOURCE_ONLY ones built from sdists."""
    missing = [n for n in names if n not in pins]
    if missing:
        sys.exit(f"not in locks/py{python}.lock: {', '.join(missing)}")
    binary = [f"{n}=={pins[n]}" for n in names if n not in SOURCE_ONLY]
    source = [f"{n}=={pins[n]}" for n in names if n in SOURCE_ONLY]
    if binary:
        platforms = [a for p in PLATFORMS for a in ("--platform", p)]
        pip("download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
            *platforms, "-d", str(dest), *binary)
    if source:
        pip("wheel", "-q", "--no-deps", "--no-binary=:all:", "-w", str(dest), *source)
        for n in names:  # built here, by this machine's Python: only a pure-Python wheel fits the target's
            built = [w for w in dest.glob("*.whl") if wheel_name(w) == n]
            if n in SOURCE_ONLY and not any(w.name.endswith("-none-any.whl") for w in built):
                sys.exit(f"{n}'s sdist did not build a pure-Python wheel: {[w.name for w in built]}")


def stub_wheel(name: str, why: str, dest: Path) -> Path:
    """A wheel whose package imports but raises on any use, saying why it is a stub."""
    source = (f'"""Stand-in for {name} on the lent GPU machine, written by bench/gpu_wheels.py: {why}."""\n\n\n'
              "def __getattr__(attr):\n"
              "    if attr.startswith('__'):  # import machinery and introspection probe dunders\n"
              "        raise AttributeError(attr)\n"
              f"    raise ImportError(f'{name}.{{attr}}: {name} is a stub on the lent GPU machine '\n"
              "                      '(bench/gpu_wheels.py STUBS); a benchmark should never use it')\n")
    version = "0+stub"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": source,
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: stub: {why}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: bench/gpu_wheels.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    out = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for path, text in files.items():
            z.writestr(path, text)
    return out


def build(python: str, dest: Path) -> list[Path]:
    """Every wheel the benchmarks need on the image, in `dest` (its old wheels removed: two versions of
    one package stop the whole install)."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    pins = read_lock(python)
    seen, level = set(), sorted(ROOTS)
    while level:  # breadth first: one pip call per level of requirements
        seen.update(level)
        fetch(level, pins, python, dest)
        needed = set()
        for name in level:
            if name not in NO_DEPS:
                (wheel,) = [w for w in dest.glob("*.whl") if wheel_name(w) == name]
                needed.update(requirements(wheel, python))
        level = sorted(needed - seen - set(STUBS) - set(SKIP) - LENT_PACKAGES)
    for name, why in STUBS.items():
        stub_wheel(name, why, dest)
    return sorted(dest.glob("*.whl"))


def work_tree_bytes() -> int:
    """What the device tool sends besides the carried paths: tracked and untracked-not-ignored files."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    return sum((REPO / f).stat().st_size for f in files if f and (REPO / f).is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=PYTHON, help="the target's Python (the lent image's: %(default)s)")
    ap.add_argument("--dest", type=Path, default=REPO / ".whl")
    a = ap.parse_args(argv)
    wheels = build(a.python, a.dest)
    tree = work_tree_bytes()
    for w in sorted(wheels, key=lambda w: -w.stat().st_size):
        print(f"{w.stat().st_size / MIB:7.2f} MiB  {w.name}")
    total = sum(w.stat().st_size for w in wheels)
    print(f"{total / MIB:7.2f} MiB  {len(wheels)} wheels for Python {a.python} in {a.dest}")
    print(f"{tree / MIB:7.2f} MiB  the work tree (git ls-files -co --exclude-standard)")
    verdict = "fits" if total + tree <= LIMIT_MIB * MIB else "does NOT fit"
    print(f"{(total + tree) / MIB:7.2f} MiB  in all, of the {LIMIT_MIB} MiB a device call carries: {verdict}")
    return 0 if verdict == "fits" else 1


if __name__ == "__main__":
    sys.exit(main())
