"""Small I/O helpers shared by every stage: atomic writes, safe names, audio reading.

Every file a stage produces is written to a temporary name in the same folder and then renamed, so a
crash or a Colab disconnect leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import unicodedata
from pathlib import Path
from typing import Any, Iterator

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".webm", ".aiff", ".aif")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary name keeps the extension (or `suffix`), so writers that pick a format from the
    extension (soundfile, pandas) work unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem[:40]}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def discard(path: str | os.PathLike) -> None:
    """Empty a file, then delete it: on the Google Drive mount a deleted file goes to Drive's Trash,
    which still counts against the quota, while an emptied one costs nothing there."""
    with open(path, "r+b") as f:
        f.truncate(0)
    Path(path).unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as UTF-8 JSON (non-ASCII kept readable: Japanese titles stay Japanese), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2, default=_json_default), encoding="utf-8")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write one JSON object per line, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one line and flush it to disk, so a crash loses at most the line being written.

    After a crash mid-append the file ends in a torn line: the new row starts on a line of its own,
    so only the torn fragment is lost (read_jsonl skips it), never the row appended after it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torn = False
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(("\n" if torn else "") + json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file, ignoring a torn last line (left by a crash mid-append)."""
    rows = []
    path = Path(path)
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> None:
    """Write 16-bit PCM wav atomically.

    Args:
        audio: float samples in [-1, 1], shape [T] (mono) or [T, C].
    """
    import soundfile as sf

    with atomic_path(path) as tmp:
        sf.write(tmp, np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")


def slugify(text: str, max_len: int = 60, fallback: str = "item") -> str:
    """A file-system-safe ASCII name: 'Ado - 唱 (Official)' -> 'ado-official'.

    Non-Latin scripts have no ASCII form, so callers append a short hash of the original text
    (see `safe_name`) to keep names unique; the original title stays in the metadata.
    """
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    text = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    return text[:max_len].rstrip("-") or fallback


def short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n]


def file_sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB blocks (any size, little memory).

    Raises:
        OSError: the file cannot be read (the message names it).
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safe_name(text: str, key: str | None = None, max_len: int = 60) -> str:
    """`slugify(text)` plus a hash of `key` (default: the text) so distinct titles never collide."""
    return f"{slugify(text, max_len, fallback='track')}-{short_hash(key if key is not None else text)}"


def load_audio(path: str | os.PathLike, sample_rate: int, mono: bool = True) -> np.ndarray:
    """Decode any audio file (soundfile, else ffmpeg through librosa/audioread) and resample.

    Returns:
        float32 array [T] if mono else [C, T], at `sample_rate`.
    Raises:
        ValueError: the file cannot be decoded or holds no samples (message names the file).
    """
    import librosa

    path = Path(path)
    try:
        audio, _ = librosa.load(path, sr=sample_rate, mono=mono, res_type="soxr_hq")
    except Exception as e:  # librosa raises several unrelated types for undecodable input
        raise ValueError(f"{path}: cannot decode audio ({type(e).__name__}: {e})") from e
    if audio.size == 0:
        raise ValueError(f"{path}: file holds no audio samples")
    if not np.all(np.isfinite(audio)):
        raise ValueError(f"{path}: audio contains NaN or infinite samples")
    return audio.astype(np.float32, copy=False)
