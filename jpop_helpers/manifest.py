"""Stage 02's outputs, written and read here only: a MusicInfo sidecar per clip, AudioMeta manifests
per split (audiocraft's formats) and labels.csv.

audiocraft's `MusicDataset.from_meta(<root>/manifests/<split>)` reads the manifests and sidecars
unchanged (with `info_fields_required=True`), and so does its dora solver when a datasource points at
those folders. Later stages read clips through `split_clips` and `read_sidecar`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .io import atomic_path, read_json, write_json, write_jsonl
from .layout import SPLITS, DataLayout
from .problems import ProblemLog

# MusicInfo fields audiocraft requires when info_fields_required=True (keywords is optional there).
MUSIC_INFO_FIELDS = ("title", "artist", "key", "bpm", "genre", "moods", "keywords", "description", "name", "instrument")


def music_info(row: dict) -> dict:
    """The sidecar for one clip row (see prepare._prepare_song): every MusicInfo field, then our extras.

    audiocraft ignores keys it does not know, so the caption variants and provenance ride along.
    """
    info = {
        "title": row["title"],
        "artist": row["artist"],
        "key": row["key"],
        "bpm": row["bpm"],
        "genre": row["genre"],
        "moods": row["moods"],
        "keywords": row["keywords"],
        "description": row["description"],
        "name": row["clip_id"],
        "instrument": ", ".join(row["instruments"]) if row["instruments"] else None,
    }
    extras = {k: row[k] for k in ("descriptions", "song_id", "split", "start", "padded_seconds", "instruments",
                                  "genres", "source")}
    return {**info, **extras}


def write_sidecar(wav_path: Path, row: dict) -> None:
    write_json(Path(wav_path).with_suffix(".json"), music_info(row))


def audio_meta(row: dict) -> dict:
    """One AudioMeta line (audiocraft.data.audio_dataset.AudioMeta.to_dict())."""
    return {"path": str(Path(row["path"]).resolve()), "duration": float(row["duration"]),
            "sample_rate": int(row["sample_rate"]), "amplitude": None, "weight": None, "info_path": None}


def write_manifests(layout: DataLayout, rows: list[dict]) -> dict[str, Path]:
    """Write manifests/<split>/data.jsonl for every split (empty splits get an empty file)."""
    out = {}
    for split in SPLITS:
        lines = [audio_meta(r) for r in sorted(rows, key=lambda r: r["clip_id"]) if r["split"] == split]
        write_jsonl(layout.manifest(split), lines)
        out[split] = layout.manifest(split)
    return out


@dataclass
class Clip:
    """One clip of a split, as the manifest and its sidecar describe it."""

    path: Path  # the wav
    clip_id: str
    song_id: str
    duration: float  # seconds, padding included
    padded_seconds: float  # silence appended after the song's end (0 for most clips)
    descriptions: list[str]  # caption variants; the first is the sidecar's `description`


def read_sidecar(audio_path: str | Path) -> dict | None:
    """The sidecar .json beside an audio file, or None when there is none.

    Raises:
        ValueError: the sidecar exists but is not a JSON object (the message names the file).
    """
    side = Path(audio_path).with_suffix(".json")
    if not side.exists():
        return None
    try:
        info = read_json(side)
    except (OSError, ValueError) as e:
        raise ValueError(f"{side}: unreadable sidecar ({type(e).__name__}: {e})") from e
    if not isinstance(info, dict):
        raise ValueError(f"{side}: a sidecar must be a JSON object")
    return info


def split_clips(root: str | Path, split: str, problems: ProblemLog | None = None) -> list[Clip]:
    """Every clip of a split, in manifest order; a line or sidecar that cannot be read is reported in
    `problems` (when given) and skipped.

    Raises:
        FileNotFoundError: the split has no manifest (stage 02 has not run).
    """
    manifest = DataLayout(root).manifest(split)
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest} is missing: run the prepare stage (notebook 02) first")
    clips = []
    for n, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        item = f"{manifest}:{n}"
        try:
            meta = json.loads(line)
            path = Path(meta["path"])
            item = str(path.with_suffix(".json"))
            side = read_sidecar(path)
            if side is None:
                raise FileNotFoundError("no sidecar .json beside the clip")
            clips.append(Clip(path, side["name"], side.get("song_id", side["name"]), float(meta["duration"]),
                              float(side.get("padded_seconds") or 0.0),
                              side.get("descriptions") or [side["description"]]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            if problems is None:
                raise ValueError(f"{item}: unreadable clip metadata ({type(e).__name__}: {e})") from e
            problems.add(item, f"unreadable clip metadata ({type(e).__name__}: {e})")
    return clips


def write_labels(layout: DataLayout, rows: list[dict]) -> Path:
    """labels.csv: one row per clip; list columns as '; '-joined text, scores as JSON per head."""
    import pandas as pd

    flat = []
    for r in sorted(rows, key=lambda r: r["clip_id"]):
        f = {k: v for k, v in r.items() if k not in ("scores", "descriptions")}
        for k in ("genres", "moods", "instruments", "keywords"):
            f[k] = "; ".join(r[k])
        f["descriptions"] = json.dumps(r["descriptions"], ensure_ascii=False)
        for head, scores in (r.get("scores") or {}).items():
            f[f"{head}_scores"] = json.dumps(scores)
        flat.append(f)
    with atomic_path(layout.labels_csv) as tmp:
        pd.DataFrame(flat).to_csv(tmp, index=False)
    return layout.labels_csv


def load_labels(root: str | Path):
    """labels.csv as a DataFrame with list columns restored."""
    import pandas as pd

    df = pd.read_csv(DataLayout(root).labels_csv)
    for k in ("genres", "moods", "instruments", "keywords"):
        df[k] = df[k].astype(object).where(df[k].notna(), "").map(lambda s: [x for x in str(s).split("; ") if x])
    return df
