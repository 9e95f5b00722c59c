"""Stage 02: raw songs -> split -> vocal removal -> 30-s clips -> labels and captions -> manifests.

Input: <root>/raw/<artist>/<track>.<audio ext> (+ optional .info.json from stage 01; any folder of
audio files organised by artist works). Output: see layout.DataLayout, plus <root>/stems/ (the cached
instrumentals, separate.StemCache). The stage is resumable per song: a song whose clips were written
with the same settings is skipped, and a song separated before is not separated again; a bad or
too-short file is reported by name and the others go on.

By default the vocals are removed first (Demucs htdemucs, separate.py): MusicGen was trained on
instrumentals and cannot sing, so the clips, their labels and their captions are the instrumental
(drums + bass + other). `keep_vocals` trains on the full mix instead.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .captions import CaptionConfig, make_captions
from .chunking import ChunkConfig, chunk_audio
from .split import SplitConfig, assign_splits, read_splits
from .colab import progress
from .io import AUDIO_EXTENSIONS, atomic_path, load_audio, read_json, short_hash, write_json, write_wav
from .labeling import LabelConfig, Labeler, without_vocal_tags
from .layout import SPLITS, DataLayout
from .manifest import write_labels, write_manifests, write_sidecar
from .problems import ProblemLog
from .separate import SeparatorUnavailable, StemCache

log = logging.getLogger(__name__)
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO}


@dataclass
class PrepareConfig:
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    keep_vocals: bool = False  # train on the full mix, vocals included (no Demucs vocal removal)
    separator: str = "htdemucs"  # Demucs model that removes the vocals (Hugging Face adefossez/...)
    separator_folder: str | None = None  # a local folder holding <separator>.yaml + its .safetensors, instead of the hub
    separator_device: str | None = None  # where Demucs runs; None: cuda when available, else cpu


@dataclass
class Song:
    song_id: str  # "<artist folder>__<track file stem>", unique and file-system safe
    artist: str
    title: str
    path: Path
    genre: str | None = None
    source: str | None = None


@dataclass
class PrepareResult:
    rows: list[dict]
    manifests: dict[str, Path]
    labels_csv: Path
    problems: ProblemLog
    separation: dict[str, dict] = field(default_factory=dict)  # song_id -> StemCache info (vocals removed)

    def separation_table(self):
        """pandas DataFrame, one row per separated song: how much of the mix's energy separation
        removed (%), the vocal stem's share (%), the level-matching gain (dB), whether it was cached."""
        import pandas as pd

        cols = ["song_id", "energy_removed_%", "vocals_energy_%", "gain_db", "seconds", "cached"]
        rows = [{"song_id": sid, "energy_removed_%": round(100 * i["energy_removed"], 1),
                 "vocals_energy_%": None if i.get("vocals_energy") is None else round(100 * i["vocals_energy"], 1),
                 "gain_db": i.get("gain_db"), "seconds": i.get("seconds"), "cached": i.get("cached")}
                for sid, i in sorted(self.separation.items())]
        return pd.DataFrame(rows, columns=cols)

    def counts(self):
        """pandas DataFrame: clips per artist (rows) and split (columns)."""
        import pandas as pd

        df = pd.DataFrame(self.rows, columns=["artist", "split", "clip_id"])
        table = df.pivot_table(index="artist", columns="split", values="clip_id", aggfunc="count", fill_value=0)
        return table.reindex(columns=[s for s in SPLITS], fill_value=0)

    def summary(self) -> str:
        songs = {r["song_id"] for r in self.rows}
        per = {s: sum(r["split"] == s for r in self.rows) for s in SPLITS}
        lines = [f"prepare: {len(self.rows)} clips from {len(songs)} songs "
                 f"(train {per['train']}, valid {per['valid']}, test {per['test']})",
                 f"manifests: {self.manifests['train'].parent.parent}", f"labels: {self.labels_csv}"]
        if self.separation:
            removed = sorted(100 * i["energy_removed"] for i in self.separation.values())
            lines.append(f"vocals removed from {len(removed)} songs: separation took {removed[len(removed) // 2]:.0f}% "
                         f"of a song's energy (median; {removed[0]:.0f}% to {removed[-1]:.0f}%); per song: "
                         "result.separation_table()")
        lines.append(self.problems.summary())
        return "\n".join(lines)


def find_songs(layout: DataLayout) -> list[Song]:
    """Every audio file under raw/<artist>/, with title/artist/genre from its .info.json if any."""
    songs = []
    paths = [p for p in sorted(layout.raw.glob("*/*")) if p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith(".")]
    stems = Counter((p.parent, p.stem) for p in paths)
    for path in paths:
        # x.mp3 and x.flac in one folder are two songs: their ids keep the extension apart
        song_id = f"{path.parent.name}__{path.stem}"
        if stems[(path.parent, path.stem)] > 1:
            song_id += f"-{path.suffix[1:].lower()}"
        info_path = path.with_suffix(".info.json")
        info = {}
        if info_path.exists():
            try:
                info = read_json(info_path)
            except Exception as e:
                log.warning("%s: unreadable info JSON (%s); using the file name", info_path, e)
        songs.append(Song(song_id=song_id, artist=info.get("artist") or path.parent.name,
                          title=info.get("title") or path.stem, path=path, genre=info.get("genre"),
                          source=info.get("url") or info.get("source")))
    return songs


def _signature(config: PrepareConfig) -> str:
    """What a song's clips depend on: change any of it and the song is redone."""
    c = dataclasses.asdict(config)
    c["split"] = {}  # the split is stored separately and never changes for a song
    for k in ("models_dir", "download_models"):
        c["label"].pop(k)
    # where the separator comes from and runs does not change the clips; which one does, unless unused
    for k in ("separator_folder", "separator_device") + (("separator",) if config.keep_vocals else ()):
        c.pop(k)
    return short_hash(json.dumps(c, sort_keys=True), 12)


def _record_path(layout: DataLayout, song_id: str) -> Path:
    return layout.clips / ".songs" / f"{song_id}.json"


def prepare(root: str | Path, config: PrepareConfig | None = None) -> PrepareResult:
    """Run stage 02 on `<root>/raw`. Never raises for a single bad file; see the problem report.

    Raises:
        MissingModelError: the tagger graphs are missing and `config.label.dsp_only` is False
            (raised before any clip is written).
        FileNotFoundError: `<root>/raw` holds no audio.
    """
    config = config or PrepareConfig()
    layout = DataLayout(root)
    problems = ProblemLog.for_stage(root, "prepare")
    songs = find_songs(layout)
    if not songs:
        raise FileNotFoundError(f"no audio files under {layout.raw}/<artist>/ (run the download stage first)")

    splits = assign_splits({s.song_id: s.artist for s in songs}, config.split, read_splits(layout.splits_csv))
    _write_splits(layout, songs, splits)
    labeler = Labeler(config.label)
    signature = _signature(config)
    stems = None if config.keep_vocals else StemCache(
        layout.root / "stems", config.separator, config.separator_folder, config.separator_device,
        progress=os.environ.get("JPOP_NO_PROGRESS") != "1")
    separation: dict[str, dict] = {}

    rows: list[dict] = []
    environment: list[str] = []  # failures of the machine (disk full, permissions), not of a file
    unavailable: SeparatorUnavailable | None = None
    for song in progress(songs, desc="prepare", unit="song"):
        split = splits[song.song_id]
        record_path = _record_path(layout, song.song_id)
        record = _read_record(layout, record_path)
        if (record and record.get("signature") == signature and record.get("split") == split
                and all(Path(r["path"]).exists() and Path(r["path"]).with_suffix(".json").exists() for r in record["rows"])):
            rows.extend(record["rows"])
            if record.get("separation"):
                separation[song.song_id] = {**record["separation"], "cached": True}
            continue
        if record:  # settings changed, or a clip went missing: remove this song's old clips, then redo it
            for r in record["rows"]:
                for p in (Path(r["path"]), Path(r["path"]).with_suffix(".json")):
                    _remove_inside(layout.root, p, problems)
        if unavailable is not None:  # no separator: only the songs already done go on to the manifests
            continue
        try:
            song_rows, sep = _prepare_song(song, split, layout, config, labeler, stems)
            # paths relative to the root: a moved or copied root still finds (and only touches) its own clips
            write_json(record_path, {"signature": signature, "split": split, "separation": sep,
                                     "rows": [{**r, "path": Path(r["path"]).relative_to(layout.root.resolve()).as_posix()}
                                              for r in song_rows]})
        except SeparatorUnavailable as e:  # no song can be separated: finished songs are kept, then it raises
            _remove_song_clips(layout, split, song.song_id)
            unavailable = e
            continue
        except Exception as e:  # one bad file never stops the batch; what the song wrote is removed
            _remove_song_clips(layout, split, song.song_id)
            if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
                environment.append(f"{song.path}: {e.strerror or e}")
            problems.add(song.path, f"{e}" if isinstance(e, ValueError) else f"{type(e).__name__}: {e}")
            continue
        rows.extend(song_rows)
        if sep:
            separation[song.song_id] = sep

    manifests = write_manifests(layout, rows)
    labels_csv = write_labels(layout, rows)
    if unavailable is not None:
        raise unavailable
    if environment:  # not the files' fault: the run failed, and the user must fix the machine and re-run
        raise OSError(f"prepare: {len(environment)} song(s) failed because of the machine, not the audio "
                      f"(first: {environment[0]}); free space or fix permissions, then re-run: finished songs "
                      f"are kept. {len(rows)} clips of the other songs are in the manifests.")
    return PrepareResult(rows, manifests, labels_csv, problems, separation)


def _remove_song_clips(layout: DataLayout, split: str, song_id: str) -> None:
    """Delete what a failed attempt at a song wrote (its folder of clips), so no clip is left that no
    manifest lists."""
    folder = layout.clips / split / song_id
    for f in folder.iterdir() if folder.is_dir() else []:
        f.unlink(missing_ok=True)
    if folder.is_dir():
        folder.rmdir()


def _read_record(layout: DataLayout, path: Path) -> dict | None:
    """A song's record with its clip paths made absolute under this root (None if there is none or it
    cannot be read: the song is then redone)."""
    try:
        record = read_json(path) if path.exists() else None
        if record:
            root = layout.root.resolve()
            record["rows"] = [{**r, "path": str((root / r["path"]).resolve())} for r in record["rows"]]
        return record
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("%s: unreadable song record (%s); the song is redone", path, e)
        return None


def _remove_inside(root: Path, path: Path, problems: ProblemLog) -> None:
    """Delete `path` only if it lies inside the data root (a record may have been edited by hand or
    written under another root): nothing outside the root is ever deleted."""
    path = Path(path).resolve()
    if not path.is_relative_to(Path(root).resolve()):
        problems.add(path, "a song record points outside the data root: left alone")
        return
    path.unlink(missing_ok=True)


def _prepare_song(song: Song, split: str, layout: DataLayout, config: PrepareConfig, labeler: Labeler,
                  stems: StemCache | None) -> tuple[list[dict], dict | None]:
    """One song's clips (rows) and, when its vocals were removed, the separation info."""
    sr, channels = config.chunk.sample_rate, config.chunk.channels
    sep = None
    if stems is not None:  # the instrumental [2, T], separated once and cached
        try:
            audio, sep = stems.instrumental(song.song_id, song.path, sr)
        except (ValueError, OSError, SeparatorUnavailable):  # bad file, full disk, no model: reported as they are
            raise
        except Exception as e:  # e.g. out of GPU memory on a very long song
            raise RuntimeError(f"vocal separation failed ({type(e).__name__}: {e})") from e
        sep = {k: sep[k] for k in ("separator", "models", "energy_removed", "vocals_energy", "gain_db", "seconds", "cached")}
        audio = audio.mean(axis=0) if channels == 1 else audio
    else:
        audio = load_audio(song.path, sr, mono=channels == 1)
        if channels == 2 and audio.ndim == 1:  # a mono file as a stereo clip: the same signal twice
            audio = np.stack([audio, audio])
        elif channels == 2:
            audio = audio[:2]
    seconds = audio.shape[-1] / sr
    min_seconds = min(config.chunk.min_tail_seconds, config.chunk.chunk_seconds)
    if seconds < min_seconds:
        raise ValueError(f"too short: {seconds:.1f} s, a clip needs at least {min_seconds:.1f} s")
    chunks, dropped = chunk_audio(audio, config.chunk)
    if not chunks:
        raise ValueError(f"no usable chunk in {seconds:.1f} s of audio ({'; '.join(r for _, r in dropped)})")
    out_dir = layout.clips / split / song.song_id  # a folder per song: no Drive folder grows past ~1000 entries
    rows = []
    for chunk in chunks:
        clip_id = f"{song.song_id}_{chunk.index:03d}"
        valid = chunk.audio[..., : chunk.n_valid]
        labels = labeler(valid if valid.ndim == 1 else valid.mean(axis=0), sr)  # what the model learns from
        if stems is not None:
            labels = without_vocal_tags(labels)
        genre = song.genre or (labels.genres[0] if labels.genres else None)
        # An unsure tempo estimate (often half or double time) would teach the model a wrong caption.
        reliable = config.label.bpm_method != "multifeature" or (labels.bpm_confidence or 0) >= config.label.bpm_min_confidence
        bpm = labels.bpm if reliable else None
        descriptions = make_captions(clip_id, genre, labels.moods, labels.instruments, bpm, labels.key,
                                     config.captions, instrumental=stems is not None)
        genre = genre or config.captions.genre_fallback
        wav_path = out_dir / f"{clip_id}.wav"
        row = {
            "clip_id": clip_id, "song_id": song.song_id, "split": split, "artist": song.artist,
            "title": song.title, "source": song.source, "path": str(wav_path.resolve()),
            "start": round(chunk.start, 3), "duration": chunk.audio.shape[-1] / sr, "sample_rate": sr,
            "channels": channels, "vocals_removed": stems is not None,
            "padded_seconds": round((chunk.audio.shape[-1] - chunk.n_valid) / sr, 3),
            "key": labels.key, "key_strength": labels.key_strength, "bpm": bpm, "bpm_estimate": labels.bpm,
            "bpm_confidence": labels.bpm_confidence, "genre": genre, "genres": labels.genres,
            "moods": labels.moods, "instruments": labels.instruments,
            "keywords": [g for g in labels.genres if g != genre] + labels.instruments,
            "description": descriptions[0], "descriptions": descriptions, "scores": labels.scores,
        }
        write_wav(wav_path, chunk.audio.T, sr)  # [T] or [T, C]
        write_sidecar(wav_path, row)  # written after the wav: a sidecar always has its audio
        rows.append(row)
    return rows, sep


def _write_splits(layout: DataLayout, songs: list[Song], splits: dict[str, str]) -> None:
    import pandas as pd

    df = pd.DataFrame([{"song_id": s.song_id, "artist": s.artist, "title": s.title, "split": splits[s.song_id]}
                       for s in songs])
    with atomic_path(layout.splits_csv) as tmp:
        df.to_csv(tmp, index=False)
