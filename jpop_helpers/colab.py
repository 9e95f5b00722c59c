"""Colab support: detect Colab, mount Google Drive, and place data and runs where a disconnect
cannot lose them; say whether a GPU is attached (and how to attach one) and where the pretrained
weights are cached. Outside Colab the same calls return local folders and plain reports."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

DRIVE_MOUNT = Path("/content/drive")


def in_colab() -> bool:
    """True inside a Google Colab kernel."""
    return "google.colab" in sys.modules or bool(os.environ.get("COLAB_RELEASE_TAG"))


def mount_drive(mount_point: Path = DRIVE_MOUNT) -> Path | None:
    """Mount Google Drive in Colab (asks for consent once); return MyDrive, or None outside Colab."""
    if not in_colab():
        return None
    from google.colab import drive  # only importable in Colab

    if not (mount_point / "MyDrive").exists():
        drive.mount(str(mount_point))
    return mount_point / "MyDrive"


@dataclass
class Workspace:
    """Where one project's data and runs live.

    `root` holds raw audio, clips, manifests, labels and reports (see DataLayout); `runs` holds
    training runs. In Colab both default to a folder on Drive.
    """

    root: Path
    runs: Path


def workspace(project: str = "jpop-musicgen", root: str | None = None, runs: str | None = None,
              use_drive: bool = True) -> Workspace:
    """Resolve the data root and runs folder.

    Explicit arguments win; runs default to a `runs` folder beside an explicit root. Otherwise: in
    Colab with `use_drive`, `MyDrive/<project>/{data,runs}` (Drive is mounted if needed); elsewhere
    `./<project>-data/{data,runs}`.
    """
    if root:
        base = Path(root).parent
    else:
        drive = mount_drive() if (use_drive and in_colab()) else None
        base = (drive / project) if drive else Path.cwd() / f"{project}-data"
    ws = Workspace(Path(root) if root else base / "data", Path(runs) if runs else base / "runs")
    ws.root.mkdir(parents=True, exist_ok=True)
    ws.runs.mkdir(parents=True, exist_ok=True)
    return ws


def progress(iterable=None, **kwargs):
    """A tqdm progress bar that renders as a widget in notebooks and as text in a terminal."""
    from tqdm.auto import tqdm

    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("disable", os.environ.get("JPOP_NO_PROGRESS") == "1")
    return tqdm(iterable, **kwargs)


def describe_device(device: str) -> str:
    """One line on what the run will compute on, e.g. "device: cuda (Tesla T4, 14.7 GiB)"."""
    if device.startswith("cuda"):
        import torch

        p = torch.cuda.get_device_properties(torch.device(device))
        return f"device: {device} ({p.name}, {p.total_memory / 2**30:.1f} GiB)"
    return f"device: {device}"


GPU_HOWTO = "Runtime > Change runtime type > T4 GPU"
# What computing on the CPU means, per kind of work (a Colab CPU runtime has 2 cores).
CPU_MEANS = {
    "training": "a training step of a real MusicGen takes minutes instead of seconds (the default run would "
                "take days); only MODEL = \"tiny\", the small offline test model, is meant for a CPU.",
    "evaluation": "scoring the test split and generating each clip with a real MusicGen take minutes instead "
                  "of seconds.",
}


def gpu_check(device: str | None = None, work: str = "training") -> str:
    """What a notebook will compute on; in Colab without a GPU, how to attach one.

    Args:
        device: "cuda", "cpu", ... (default: cuda when torch sees a GPU).
        work: "training" or "evaluation": what the warning says running on the CPU would mean.
    Returns:
        one line such as "device: cuda (Tesla T4, 14.7 GiB)"; in Colab on a CPU runtime, that line and
        a warning that says where to attach a GPU and what the CPU would cost.
    """
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    line = describe_device(device)
    if device.startswith("cuda") or not in_colab():
        return line
    return (f"{line}\nWARNING: no GPU is attached to this Colab runtime. Attach one: {GPU_HOWTO}, Save, then "
            "run the notebook again from the top (the runtime restarts: what is on Drive stays). On the CPU, "
            f"{CPU_MEANS[work]}")


# Download sizes on first use (decimal GB, as the Hugging Face file lists show them): audiocraft
# fetches the LM's state_dict.bin (fp16: 841 MB small, 3.68 GB medium, 6.51 GB large) and EnCodec's
# compression_state_dict.bin (236 MB) from facebook/musicgen-*; the text encoder is t5-base through
# transformers (model.safetensors 892 MB + tokenizer files).
HUB_DOWNLOAD_GB = {
    "facebook/musicgen-small": 0.841 + 0.236,
    "facebook/musicgen-medium": 3.68 + 0.236,
    "facebook/musicgen-large": 6.51 + 0.236,
    "t5-base": 0.894,
}


def _bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _tree_size(folder: Path) -> int:
    """Bytes of the regular files under `folder` (the hub cache's snapshots are links to its blobs:
    counted once)."""
    total = 0
    for dirpath, _, files in os.walk(folder):
        for f in files:
            p = Path(dirpath) / f
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def hf_cache_dirs() -> list[Path]:
    """Where the pretrained weights land: audiocraft's AUDIOCRAFT_CACHE_DIR when set (MusicGen and
    EnCodec files), and the Hugging Face hub cache (T5, CLAP; MusicGen too by default)."""
    from huggingface_hub import constants

    dirs = [Path(os.environ["AUDIOCRAFT_CACHE_DIR"])] if os.environ.get("AUDIOCRAFT_CACHE_DIR") else []
    return dirs + [d for d in [Path(constants.HF_HUB_CACHE)] if d not in dirs]


def hf_cache_report(model: str | None = None, cache_dirs: list[str | Path] | None = None) -> str:
    """Where the MusicGen and T5 weights are cached, what is there and how much space it takes.

    In Colab the cache is ~/.cache/huggingface/hub on the VM's disk, not on Drive: it costs no Drive
    quota, and a new runtime downloads the weights again.

    Args:
        model: the MusicGen a notebook is about to load; when it is not cached yet, the report says
            how much its first use downloads (see HUB_DOWNLOAD_GB).
        cache_dirs: the folders to look at (default: `hf_cache_dirs()`).
    Returns:
        a few lines: each folder with its disk's free space, each cached model with its size, the total.
    """
    import shutil

    lines, cached = [], set()
    for folder in map(Path, cache_dirs if cache_dirs is not None else hf_cache_dirs()):
        if str(folder).startswith(str(DRIVE_MOUNT)):
            where = " (on Google Drive: it counts against your Drive quota)"
        elif in_colab():
            where = " (on this Colab VM's disk, not on Drive: a new runtime downloads the weights again)"
        else:
            where = ""
        existing = next(p for p in [folder, *folder.parents] if p.exists())
        lines.append(f"weights cache: {folder}{where}; {_bytes(shutil.disk_usage(existing).free)} free there")
        repos = sorted(p for p in folder.glob("*--*") if p.is_dir()) if folder.is_dir() else []
        sizes = {p.name.split("--", 1)[1].replace("--", "/"): _tree_size(p) for p in repos}
        for name, size in sizes.items():
            lines.append(f"  {name:<32} {_bytes(size):>9}")
        lines.append(f"  total {_bytes(sum(sizes.values()))} in {len(sizes)} model(s)" if sizes else "  empty")
        cached |= set(sizes)
    if model in HUB_DOWNLOAD_GB and model not in cached:
        t5 = "" if {"t5-base", "google-t5/t5-base"} & cached else f" + {HUB_DOWNLOAD_GB['t5-base']:.2f} GB (t5-base)"
        lines.append(f"first use of {model} downloads about {HUB_DOWNLOAD_GB[model]:.2f} GB (LM + EnCodec){t5}")
    return "\n".join(lines)
