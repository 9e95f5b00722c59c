"""Checkpoints: atomic, last-K kept, and a resume that skips a checkpoint a crash left unreadable."""
from __future__ import annotations

import logging
import random
import re
from pathlib import Path

import numpy as np
import torch

from .io import atomic_path

log = logging.getLogger(__name__)
PATTERN = re.compile(r"^ckpt_(\d{8})\.pt$")


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: str | Path, step: int, state: dict, keep_last: int = 2) -> Path:
    """Write `ckpt_<step>.pt` atomically, then delete all but the newest `keep_last` checkpoints.

    A crash mid-write leaves only a hidden temp file, never a truncated `ckpt_*.pt`.
    """
    folder = Path(folder)
    path = folder / f"ckpt_{step:08d}.pt"
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in list_checkpoints(folder)[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Checkpoints in step order, oldest first."""
    folder = Path(folder)
    if not folder.exists():
        return []
    return sorted((p for p in folder.iterdir() if PATTERN.match(p.name)), key=lambda p: int(PATTERN.match(p.name)[1]))


def load_latest(folder: str | Path, map_location="cpu") -> tuple[dict | None, Path | None]:
    """The newest checkpoint that loads; unreadable ones (e.g. a disk filled mid-copy) are skipped."""
    for path in reversed(list_checkpoints(folder)):
        try:
            return torch.load(path, map_location=map_location, weights_only=False), path
        except Exception as e:
            log.warning("checkpoint %s is unreadable (%s); trying the previous one", path, e)
    return None, None
