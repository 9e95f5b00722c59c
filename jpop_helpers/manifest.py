"""audiocraft-format outputs: a MusicInfo sidecar per clip and AudioMeta manifests per split.

audiocraft's `MusicDataset.from_meta(<root>/manifests/<split>)` reads these unchanged (with
`info_fields_required=True`), and so does its dora solver when a datasource points at those folders.
"""
from __future__ import annotations

from pathlib import Path

from .io import write_json, write_jsonl
from .layout import SPLITS, DataLayout

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
