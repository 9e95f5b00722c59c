"""Where each stage reads and writes under a data root (README.md, "Data layout")."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class DataLayout:
    """Folders and files of one data root.

    raw/<artist>/<track>.wav + .info.json   downloaded audio (01)
    clips/<split>/<song>/<song>_<nnn>.wav + .json  30-s mono 32 kHz chunks and MusicInfo sidecars (02)
    manifests/<split>/data.jsonl            audiocraft AudioMeta manifests (AudioDataset.from_meta(dir))
    labels.csv                              one row per clip: tags, scores, caption, split
    splits.csv                              the song -> split decision, kept across runs
    reports/                                problem lists and summaries
    """

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def download_archive(self) -> Path:
        return self.raw / "download_archive.txt"

    @property
    def clips(self) -> Path:
        return self.root / "clips"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    def manifest(self, split: str) -> Path:
        return self.manifests / split / "data.jsonl"

    @property
    def labels_csv(self) -> Path:
        return self.root / "labels.csv"

    @property
    def splits_csv(self) -> Path:
        return self.root / "splits.csv"

    @property
    def reports(self) -> Path:
        return self.root / "reports"
