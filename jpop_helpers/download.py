"""Stage 01: sources listed in a CSV manifest -> wav files + info JSON under <root>/raw, via yt-dlp.

A source is anything yt-dlp accepts (a playlist or video URL, `ytsearchN:query`), a `file://` URL, or
a local file or folder of audio (e.g. your own CD rips; relative paths are read from the manifest's
folder). A track's file name (hence its song id in stage 02) ends in a hash of its identity: the
extractor, id and URL for online tracks, the SHA-256 of the bytes for local files, so the same local
file is one song whatever folder it is offered from. Re-runs skip what is done: yt-dlp's download
archive for online sources, the info JSON files (by URL or by content) for local ones. A failing
source or track is recorded in reports/download_problems.jsonl and the others continue; when YouTube
wants a signed-in browser (its bot check), the record says how to give yt-dlp a cookies file.
"""
from __future__ import annotations

import csv
import datetime as _dt
import logging
import shutil
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from .colab import progress
from .io import AUDIO_EXTENSIONS, file_sha256, read_json, safe_name, slugify, write_json
from .layout import DataLayout
from .problems import ProblemLog

log = logging.getLogger(__name__)


@dataclass
class Source:
    """One row of the sources manifest."""

    artist: str
    source: str
    limit: int | None = None  # at most this many tracks from a playlist / folder
    genre: str = ""  # optional genre override for captions (e.g. "j-pop")
    notes: str = ""


@dataclass
class DownloadConfig:
    audio_format: str = "wav"  # what ffmpeg writes; wav keeps the next stage lossless
    allow_local: bool = True  # accept file:// URLs and local paths (yt-dlp's enable_file_urls)
    retries: int = 3
    socket_timeout: float = 30.0
    sleep_between: float = 0.0  # seconds between tracks (be gentle with rate limits)
    cookies_file: str | None = None  # youtube.com cookies (Netscape cookies.txt) for YouTube's sign-in / bot check


@dataclass
class DownloadResult:
    downloaded: list[Path] = field(default_factory=list)
    skipped: int = 0
    problems: ProblemLog | None = None

    def summary(self) -> str:
        lines = [f"download: {len(self.downloaded)} new track(s), {self.skipped} already present"]
        if self.problems is not None:
            lines.append(self.problems.summary())
        return "\n".join(lines)


def read_sources(path: str | Path) -> list[Source]:
    """Parse a sources CSV (columns: artist, source, limit, genre, notes; `#` lines are comments).

    UTF-8, with or without the byte-order mark Excel writes ("CSV UTF-8"). Relative local paths in
    `source` are resolved against the CSV's folder. `limit` is empty (no limit) or a positive number
    of tracks, online and local alike. A row repeated (same artist and source) is read once.

    Raises:
        ValueError: the file is not UTF-8, lists no source, or a row misses its artist or source or
            has a bad limit (the file and row are named).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as 'CSV UTF-8' "
                         "(Excel) or UTF-8 (any editor) and try again") from None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    rows = list(csv.DictReader(lines))
    sources, seen = [], set()
    for i, row in enumerate(rows, start=2):
        artist, src = (row.get("artist") or "").strip(), (row.get("source") or "").strip()
        if not artist or not src:
            raise ValueError(f"{path}: row {i}: both 'artist' and 'source' are required")
        limit_txt = (row.get("limit") or "").strip()
        try:
            limit = int(limit_txt) if limit_txt else None
        except ValueError:
            raise ValueError(f"{path}: row {i}: limit must be a whole number, got {limit_txt!r}") from None
        if limit is not None and limit < 1:
            raise ValueError(f"{path}: row {i}: limit must be at least 1 (leave it empty for no limit), got {limit}")
        if _looks_local(src) and not Path(src).expanduser().is_absolute():
            src = str((path.parent / src).resolve())
        if (artist, src) in seen:
            log.warning("%s: row %d repeats %s for %s; read once", path, i, src, artist)
            continue
        seen.add((artist, src))
        sources.append(Source(artist, src, limit, (row.get("genre") or "").strip(), (row.get("notes") or "").strip()))
    if not sources:
        raise ValueError(f"{path}: no sources listed: add rows 'artist,source[,limit,genre,notes]' "
                         "(see data_manifest/sources_example.csv)")
    return sources


def _looks_local(src: str) -> bool:
    return "://" not in src and not src.startswith(("ytsearch", "ytdl:", "scsearch"))


def _url_path(url: str) -> Path:
    """file:///a/b%20c.mp3 -> Path('/a/b c.mp3')."""
    return Path(urllib.parse.unquote(url[7:]))


def _expand_local(src: str, limit: int | None) -> list[str]:
    """A local file or folder -> sorted file:// URLs of its audio files.

    Raises (before anything is copied):
        FileNotFoundError: no such file or folder.
        ValueError: a file that is not audio by its name (e.g. file:///etc/passwd).
    """
    p = _url_path(src) if src.startswith("file://") else Path(src).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS and f.is_file())
    elif p.exists():
        if p.suffix.lower() not in AUDIO_EXTENSIONS:
            raise ValueError(f"{p}: not an audio file ({', '.join(AUDIO_EXTENSIONS)})")
        files = [p]
    else:
        raise FileNotFoundError(f"no such file or folder: {p}")
    return [f.resolve().as_uri() for f in (files if limit is None else files[:limit])]


def _non_finite_samples(url: str) -> str | None:
    """Why a local file would become clicks: NaN or infinite float samples (ffmpeg turns them into
    full-scale runs); None when its samples are finite or its format holds no floats."""
    import numpy as np
    import soundfile as sf

    path = _url_path(url)
    try:
        info = sf.info(str(path))
    except Exception:
        return None  # not a soundfile format (mp3, m4a...): integer or decoded samples, nothing to check
    if info.subtype not in ("FLOAT", "DOUBLE"):
        return None
    for block in sf.blocks(str(path), blocksize=1 << 16, dtype="float64", always_2d=True):
        bad = int((~np.isfinite(block)).sum())
        if bad:
            return f"{path}: {bad}+ NaN or infinite samples (they would become clicks); fix or re-export the file"
    return None


@dataclass
class _LocalDone:
    """The local files raw/ already holds (local sources have no archive): by URL and by content.

    Tracks written before local files were named by content have a URL but no `sha256` in their info
    JSON: the source files they came from are hashed the first time a file that no URL matches is
    offered, so the same audio from a moved folder is recognised there too, and never re-fetched."""

    urls: set[str] = field(default_factory=set)
    digests: set[str] = field(default_factory=set)
    unhashed: list[Path] = field(default_factory=list)  # sources of tracks without a recorded digest

    @classmethod
    def read(cls, layout: DataLayout) -> "_LocalDone":
        done = cls()
        for path in layout.raw.glob("*/*.info.json"):
            try:
                info = read_json(path)
            except Exception:
                continue
            url = info.get("url") or ""
            done.urls.add(url)
            if info.get("sha256"):
                done.digests.add(info["sha256"])
            elif url.startswith("file://") and _url_path(url).is_file():
                done.unhashed.append(_url_path(url))
        return done

    def holds(self, digest: str) -> bool:
        """Whether raw/ holds a local file with these bytes (SHA-256 hex)."""
        for path in self.unhashed:
            try:
                self.digests.add(file_sha256(path))
            except OSError:  # gone or unreadable since: it cannot match anything offered
                continue
        self.unhashed = []
        return digest in self.digests


def _plan_local(source: Source, done: _LocalDone, problems: ProblemLog) -> tuple[list[str], dict[str, str], int]:
    """What to fetch of a local source: a file raw/ holds (by URL, or the same bytes from anywhere: one
    song, one id) is skipped, and so is one with NaN samples (reported).

    Returns:
        (file:// URLs to fetch, URL -> SHA-256 of its bytes, how many files raw/ already holds).
    Raises:
        FileNotFoundError, ValueError: the source names no audio (see `_expand_local`).
    """
    urls = _expand_local(source.source, source.limit)
    if not urls:
        raise ValueError("no audio files found")
    todo, digests, held = [], {}, 0
    for url in urls:
        if url in done.urls:  # checked first: a re-run over unchanged folders reads no file
            held += 1
            continue
        try:
            digest = file_sha256(_url_path(url))
        except OSError as e:  # this file's fault (unreadable), not the machine's: the others go on
            problems.add(_url_path(url), f"cannot read the file: {e.strerror or e}")
            continue
        if done.holds(digest) or digest in digests.values():
            log.info("%s: the same audio is already in raw/ (or listed before it): one song, skipped", _url_path(url))
            held += 1
            continue
        why = _non_finite_samples(url)
        if why:
            problems.add(urllib.parse.unquote(url), why)
            continue
        todo.append(url)
        digests[url] = digest
    return todo, digests, held


# Words in yt-dlp's errors when a site wants a signed-in browser: YouTube's "Sign in to confirm you're
# not a bot" (often shown to datacenter IPs such as Colab's), its age and private-video checks, and
# yt-dlp's own "Use --cookies-from-browser or --cookies" advice. A cookies file answers all of them.
SIGN_IN_MARKERS = ("sign in", "not a bot", "cookies", "login required")
COOKIES_HOWTO = (
    "YouTube wants a signed-in browser (it often asks this of Colab's shared IP addresses). Export your "
    "youtube.com cookies: in a private browser window, sign in to YouTube, save the cookies in Netscape "
    "format with a cookies.txt extension (e.g. 'Get cookies.txt LOCALLY'), and close that window; upload "
    "the file to Google Drive and set COOKIES_FILE in notebook 01 to its path (command line: "
    "--cookies-file PATH). Keep the file private: it signs in as you. More: "
    "https://github.com/yt-dlp/yt-dlp/wiki/Extractors#exporting-youtube-cookies")


def sign_in_hint(message: str, cookies_file: str | None = None) -> str | None:
    """What to do about a failure that a cookies file fixes, or None for any other failure."""
    if not any(m in message.lower() for m in SIGN_IN_MARKERS):
        return None
    if cookies_file:
        return (f"YouTube did not accept the cookies in {cookies_file}: they expire, and YouTube rotates "
                f"those of an open browser session; export a fresh file. {COOKIES_HOWTO}")
    return COOKIES_HOWTO


# How the machine's own failures read in yt-dlp's and ffmpeg's messages (they arrive as text).
MACHINE_ERRORS = ("No space left on device", "Disk quota exceeded", "Permission denied", "Read-only file system")


class _ProblemLogger:
    """yt-dlp logger: errors become problem-report rows naming the source; the rest goes to logging."""

    def __init__(self, problems: ProblemLog, cookies_file: str | None = None):
        self.problems = problems
        self.cookies_file = cookies_file
        self.source = ""
        self.errors = 0
        self.machine_errors: list[str] = []  # failures of the machine (disk full, permissions), not of a source

    def debug(self, msg):
        if not msg.startswith("[debug] "):
            log.debug(msg)

    def info(self, msg):
        log.debug(msg)

    def warning(self, msg):
        log.info(msg)

    def error(self, msg):
        msg = msg.strip().removeprefix("ERROR:").strip()
        if not msg or "WARNING:" in msg[:40]:  # some post-processors route warnings here
            log.info(msg)
            return
        self.errors += 1
        if any(m in msg for m in MACHINE_ERRORS):
            self.machine_errors.append(f"{self.source}: {msg}")
        self.problems.add(self.source, msg, sign_in_hint(msg, self.cookies_file))


def _declared_seconds(url: str) -> float | None:
    """The duration a local file's header declares (ffprobe), or None when it declares none."""
    import subprocess

    path = urllib.parse.unquote(url[7:]) if url.startswith("file://") else url
    try:
        out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", path],
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        return float(out.stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def _make_finisher(layout: DataLayout, source: Source, result: DownloadResult, config: DownloadConfig,
                   declared: dict[str, float | None] | None = None, digests: dict[str, str] | None = None):
    """A yt-dlp post-processor that runs after ffmpeg: moves the wav into raw/<artist>/ under a safe
    name and writes its info JSON. It runs before yt-dlp records the download archive, so a crash
    here means the track is fetched again next time, never silently lost.

    Args:
        declared: url -> the duration its header declares (local files): a track decoded much
            shorter (a truncated or damaged file) is kept and reported with what was kept.
        digests: url -> SHA-256 of the file's bytes (local files): the name's hash is taken from it,
            not from the path, so the song id does not depend on the folder the file came from."""
    import soundfile as sf
    from yt_dlp.postprocessor import PostProcessor
    from yt_dlp.utils import PostProcessingError

    class Finish(PostProcessor):
        def run(self, info):
            tmp = Path(info["filepath"])
            # ffmpeg skips what it cannot probe and leaves the original file: check we got real audio.
            try:
                ok = tmp.suffix == f".{config.audio_format}" and sf.info(str(tmp)).frames > 0
            except Exception:
                ok = False
            if not ok:
                tmp.unlink(missing_ok=True)
                raise PostProcessingError(f"{info.get('title') or tmp.name}: not decodable audio "
                                          f"(ffmpeg could not convert it to {config.audio_format})")
            url = info.get("original_url") or info.get("webpage_url") or ""
            digest = (digests or {}).get(url)
            # online tracks: the key their names were always hashed from, so existing roots keep their ids
            key = f"sha256:{digest}" if digest else f"{info.get('extractor_key', '')}:{info.get('id', '')}:{url}"
            title = info.get("track") or info.get("title") or tmp.stem
            artist_dir = layout.raw / slugify(source.artist, fallback="artist")
            dest = artist_dir / f"{safe_name(title, key)}{tmp.suffix}"
            artist_dir.mkdir(parents=True, exist_ok=True)
            try:
                self._keep(tmp, dest, info, title, digest)
            except OSError:
                # e.g. the disk filled: leave no audio without its info JSON (prepare would take it in)
                dest.unlink(missing_ok=True)
                dest.with_suffix(".info.json").unlink(missing_ok=True)
                raise
            return [], {**info, "filepath": str(dest)}

        def _keep(self, tmp: Path, dest: Path, info: dict, title: str, digest: str | None) -> None:
            shutil.move(str(tmp), dest)
            meta = {
                "title": title,
                "artist": source.artist,
                "artist_tag": info.get("artist") or info.get("creator"),
                "uploader": info.get("uploader"),
                "album": info.get("album"),
                "id": info.get("id"),
                "extractor": info.get("extractor_key"),
                "url": info.get("original_url") or info.get("webpage_url"),
                "source": source.source,
                "genre": source.genre or None,
                "sha256": digest,  # of the local file's bytes (None online): what later runs match it by
                "duration": float(sf.info(str(dest)).duration),
                "downloaded_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            }
            write_json(dest.with_suffix(".info.json"), meta)
            result.downloaded.append(dest)
            expected = (declared or {}).get(meta["url"])
            if expected and meta["duration"] < expected - max(1.0, 0.02 * expected):
                result.problems.add(urllib.parse.unquote(meta["url"]), f"truncated or damaged: kept the first "
                                    f"{meta['duration']:.1f} s of the {expected:.1f} s its header declares ({dest.name})")

    return Finish()


def download(sources: list[Source], root: str | Path, config: DownloadConfig | None = None) -> DownloadResult:
    """Fetch every source into `<root>/raw`; never raises for a single bad source or track.

    Returns:
        DownloadResult with the new wav paths and the problem log (also on disk under reports/).
    Raises:
        FileNotFoundError: `config.cookies_file` names a file that does not exist.
    """
    import yt_dlp

    config = config or DownloadConfig()
    cookies = str(Path(config.cookies_file).expanduser()) if config.cookies_file else None
    if cookies and not Path(cookies).is_file():
        raise FileNotFoundError(f"cookies file not found: {cookies} (DownloadConfig.cookies_file / COOKIES_FILE)")
    layout = DataLayout(root)
    layout.raw.mkdir(parents=True, exist_ok=True)
    tmp_dir = layout.raw / ".incoming"
    problems = ProblemLog.for_stage(root, "download")
    result = DownloadResult(problems=problems)
    logger = _ProblemLogger(problems, cookies)
    done_local = _LocalDone.read(layout)

    base_opts = {
        "format": "bestaudio/best",
        "outtmpl": {"default": str(tmp_dir / "%(extractor_key)s-%(id)s.%(ext)s")},
        "postprocessors": [{"key": "FFmpegExtractAudio", "preferredcodec": config.audio_format}],
        "logger": logger,
        "quiet": True,
        "noprogress": True,
        "ignoreerrors": True,  # a broken entry of a playlist does not end the playlist
        "retries": config.retries,
        "socket_timeout": config.socket_timeout,
        "sleep_interval": config.sleep_between or None,
        "enable_file_urls": config.allow_local,
        "writethumbnail": False,
        "noplaylist": False,
    }
    if cookies:
        base_opts["cookiefile"] = cookies

    for source in progress(sources, desc="sources", unit="src"):
        logger.source = source.source
        try:
            if _looks_local(source.source) or source.source.startswith("file://"):
                if not config.allow_local:
                    raise ValueError("local sources are disabled (DownloadConfig.allow_local)")
                todo, digests, held = _plan_local(source, done_local, problems)
                result.skipped += held
                declared = {u: _declared_seconds(u) for u in todo}
                opts = base_opts
            else:
                todo, declared, digests = [source.source], {}, {}
                opts = {**base_opts, "download_archive": str(layout.download_archive)}
                if source.limit:
                    opts["playlistend"] = source.limit
            with yt_dlp.YoutubeDL(opts) as ydl:
                ydl.add_post_processor(_make_finisher(layout, source, result, config, declared, digests),
                                       when="after_move")
                for url in progress(todo, desc=source.artist, unit="track", leave=False):
                    logger.source = urllib.parse.unquote(url) if url.startswith("file://") else url
                    n_before, errors_before = len(result.downloaded), logger.errors
                    info = ydl.extract_info(url, download=True)
                    if url in digests and len(result.downloaded) > n_before:  # a later source offering it skips it
                        done_local.urls.add(url)
                        done_local.digests.add(digests[url])
                    if (info is not None and "entries" not in info and len(result.downloaded) == n_before
                            and logger.errors == errors_before):
                        result.skipped += 1  # already in the archive
        except Exception as e:  # one bad source never stops the batch
            problems.add(source.source, f"{type(e).__name__}: {e}", sign_in_hint(str(e), cookies))
            if any(m in str(e) for m in MACHINE_ERRORS):
                logger.machine_errors.append(f"{source.source}: {e}")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    if logger.machine_errors:  # not the sources' fault: the stage failed; finished tracks are kept
        raise OSError(f"download: {len(logger.machine_errors)} failure(s) of the machine, not of the sources "
                      f"(first: {logger.machine_errors[0]}); free space or fix permissions, then re-run: "
                      f"{len(result.downloaded)} track(s) finished now are kept and will not be fetched again.")
    return result
