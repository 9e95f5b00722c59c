"""The lent GPU machine's Python image, and a guard that makes this machine's Python look like it.

The lent machine (the device tool's nvidia-h100-x1 / nvidia-h200) has Python 3.12 with torch,
transformers, peft... but not audiocraft and its imports, and it cannot download anything: what it
lacks travels as wheels in .whl/ (bench/gpu_wheels.py) and is installed with `pip --target`.

LENT_PACKAGES is the image's package list as the device tool's KINDS.md gives it ("Python packages
already there", read on a machine on 2026-11-17): distribution names, compared after PEP 503
normalisation. Re-read KINDS.md when it changes.

`install_guard` (used by the CPU rehearsal, tests/test_gpu_rehearsal.py) hides every top-level module
that the image does not have and the wheels did not install: the standard library, this checkout, the
`pip --target` folder and the image's distributions (with what they require here) stay. A wheel missing
from .whl/ then fails on CPU, not on the lent GPU. Versions are not reproduced (the image has torch
2.11, this machine another): only presence.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.metadata
import os
import re
import site
import sys
from pathlib import Path

from packaging.requirements import Requirement

PYTHON = "3.12"  # the image's python3 (KINDS.md: 3.12.3)
LENT_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx humanize
hypothesis huggingface-hub idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib
jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml
markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas
nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless
optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip
pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson
six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision
tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())


def normalize(name: str) -> str:
    """PEP 503 name: `Typing_Extensions` and `typing.extensions` are `typing-extensions`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def top_level_owners() -> dict[str, set[str]]:
    """Top-level module name -> the (normalized) distributions whose files provide it. Unlike
    importlib.metadata.packages_distributions on Python 3.11, this counts extension modules at the top
    level too (cffi's _cffi_backend, chardet's mypyc helper)."""
    suffixes = sorted(importlib.machinery.all_suffixes(), key=len, reverse=True)
    owners: dict[str, set[str]] = {}
    for dist in importlib.metadata.distributions():
        listed = dist.read_text("RECORD") or dist.read_text("installed-files.txt") or ""
        tops = {line.split(",")[0].split("/")[0] for line in listed.splitlines()}  # strings: fast on torch's RECORD
        tops |= set((dist.read_text("top_level.txt") or "").split())
        for top in tops:
            if "." in top:  # a file at the top level: a module only if it has a module's suffix
                top = next((top[: -len(x)] for x in suffixes if top.endswith(x)), "")
            if top:
                owners.setdefault(top, set()).add(normalize(dist.metadata["Name"]))
    return owners


def with_their_requirements(names: frozenset[str]) -> set[str]:
    """`names` and, transitively, what they require as installed here (no extras). This machine's
    version of an image package may need what the image's version does not (huggingface_hub here imports
    httpx2; the image's, httpx): the image has its own version's needs, so this version's are allowed."""
    installed = {normalize(d.metadata["Name"]): d for d in importlib.metadata.distributions()}
    done, todo = set(), [n for n in names if n in installed]
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        for line in installed[name].requires or []:
            req = Requirement(line)
            if (req.marker is None or req.marker.evaluate({"extra": ""})) and normalize(req.name) in installed:
                todo.append(normalize(req.name))
    return done | names


class LentImageGuard(importlib.abc.MetaPathFinder):
    """The path finder, less the top-level modules the lent image would not have.

    It takes importlib.machinery.PathFinder's place in sys.meta_path, so a refused module is not found
    at all, as there: `import` raises ModuleNotFoundError and importlib.util.find_spec returns None
    (librosa probes optional packages that way). Each refusal is noted on stderr once.
    """

    def __init__(self, allowed_roots: list[Path]):
        self.allowed = [str(p.resolve()) + os.sep for p in allowed_roots]
        # The standard library's folder (not its site-packages) too: not every module there is in
        # sys.stdlib_module_names (Debian's _sysconfigdata__x86_64-linux-gnu, which pip imports, is not).
        self.stdlib = str(Path(os.__file__).resolve().parent) + os.sep
        # this interpreter's own packages are judged by name alone, also when its venv lies inside an
        # allowed root (the README's .venv inside the checkout)
        self.site_dirs = [str(Path(p).resolve()) + os.sep for p in site.getsitepackages()]
        # read before the guard is installed (0.3 s): reading them imports, which would come back here
        self.owners, self.lent = top_level_owners(), with_their_requirements(LENT_PACKAGES)
        self.refused: set[str] = set()

    def find_spec(self, name, path=None, target=None):
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or path is not None or name in sys.stdlib_module_names:
            return spec  # submodules follow their top-level package, which was judged on import
        places = [spec.origin] if spec.origin not in (None, "namespace") else list(spec.submodule_search_locations or [])
        if places and all(self._allowed_place(p) for p in places) or self.owners.get(name, set()) & self.lent:
            return spec
        if name not in self.refused:
            self.refused.add(name)
            print(f"lent-image guard: {name!r} is not on the lent GPU image and no wheel brought it "
                  "(bench/lent_image.py, bench/gpu_wheels.py)", file=sys.stderr)
        return None

    def find_distributions(self, context=importlib.metadata.DistributionFinder.Context()):
        """importlib.metadata's view, alike: the hidden packages' metadata is hidden too."""
        for dist in importlib.machinery.PathFinder.find_distributions(context):
            if normalize(dist.metadata["Name"]) in self.lent or self._allowed_place(str(dist.locate_file(""))):
                yield dist

    def invalidate_caches(self):
        importlib.machinery.PathFinder.invalidate_caches()

    def _allowed_place(self, place: str) -> bool:
        resolved = str(Path(place).resolve()) + os.sep  # a package's folder, or a module's file
        if resolved.startswith(self.stdlib):
            return resolved[len(self.stdlib):].split(os.sep)[0] not in ("site-packages", "dist-packages")
        if any(resolved.startswith(d) for d in self.site_dirs):
            return False
        return any(resolved.startswith(root) for root in self.allowed)


def install_guard(allowed_roots: list[Path]) -> LentImageGuard:
    """Put the guard in the path finder's place; `allowed_roots`: the pip --target folder and this checkout."""
    guard = LentImageGuard(allowed_roots)
    sys.meta_path[sys.meta_path.index(importlib.machinery.PathFinder)] = guard
    return guard
