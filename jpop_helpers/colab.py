"""Colab support: detect Colab, mount Google Drive, and place data and runs where a disconnect
cannot lose them. Outside Colab the same calls return local folders."""
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
