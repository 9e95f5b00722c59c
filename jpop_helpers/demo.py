"""The offline demo: real music rendered from music21's bundled corpus, run through the pipeline.

Nothing is downloaded: the pieces ship with music21, fluidsynth renders them with a General MIDI
soundfont, and the rendered files enter stage 01 as local sources (yt-dlp reads them via file://
URLs), so the demo exercises the same code a user's playlists go through.
"""
from __future__ import annotations

import csv
import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .colab import progress
from .io import atomic_path, slugify

SPEC = Path(__file__).resolve().parent.parent / "data_manifest" / "demo_corpus.csv"
SOUNDFONT_GLOBS = ("/usr/share/sounds/sf2/*.sf2", "/usr/share/soundfonts/*.sf2", "/usr/share/sounds/sf3/*.sf3")


@dataclass
class DemoPiece:
    artist: str
    title: str
    piece: str  # music21 corpus path, e.g. "joplin/maple_leaf_rag"
    program: int  # General MIDI program for every part
    bpm: float
    seconds: float
    format: str  # mp3 | ogg | m4a | wav48

    @property
    def filename(self) -> str:
        ext = "wav" if self.format == "wav48" else self.format
        # Titles keep their script (Japanese included): the download stage must cope with them.
        return f"{self.title.replace('/', '-')}.{ext}"


def read_spec(path: str | Path = SPEC) -> list[DemoPiece]:
    lines = [ln for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")]
    return [DemoPiece(r["artist"], r["title"], r["piece"], int(r["program"]), float(r["bpm"]), float(r["seconds"]),
                      r["format"]) for r in csv.DictReader(lines)]


def find_soundfont() -> Path:
    """A General MIDI soundfont: $JPOP_SOUNDFONT, else one installed by Debian packages.

    Raises:
        FileNotFoundError: with the package to install.
    """
    env = os.environ.get("JPOP_SOUNDFONT")
    if env:
        return Path(env)
    for pattern in SOUNDFONT_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            # prefer the small TimGM6mb when both are present: rendering speed matters more here
            return Path(next((f for f in found if "TimGM6mb" in f), found[0]))
    raise FileNotFoundError("no General MIDI soundfont found: `apt-get install fluidsynth timgm6mb-soundfont` "
                            "(scripts/install.sh does it) or set JPOP_SOUNDFONT=/path/to/font.sf2")


def render_piece(piece: DemoPiece, out_path: Path, soundfont: Path | None = None, seconds: float | None = None) -> Path:
    """Render the first `seconds` of a corpus piece to an audio file (atomically).

    The score is cut to the measures that cover `seconds` at `piece.bpm` before synthesis, so long
    movements render as fast as short ones.
    """
    from music21 import bar, corpus, instrument, repeat, spanner, tempo

    seconds = seconds or piece.seconds
    soundfont = soundfont or find_soundfont()
    score = corpus.parse(piece.piece)
    bar_ql = score.parts[0].getElementsByClass("Measure")[1].barDuration.quarterLength
    n_bars = int(seconds * piece.bpm / 60.0 / bar_ql) + 2
    score = score.measures(0, n_bars)
    # The cut can leave half a repeat, which MIDI export refuses: play the excerpt straight through.
    for m in score.recurse().getElementsByClass("Measure"):
        if isinstance(m.leftBarline, bar.Repeat):
            m.leftBarline = None
        if isinstance(m.rightBarline, bar.Repeat):
            m.rightBarline = None
    for el in list(score.recurse().getElementsByClass((repeat.RepeatExpression, spanner.RepeatBracket))):
        el.activeSite.remove(el)
    # Grace notes become zero-length MIDI notes, on which fluidsynth's file renderer was seen to hang.
    for n in list(score.recurse().notes):
        if n.duration.isGrace:
            n.activeSite.remove(n)
    for el in list(score.recurse().getElementsByClass((instrument.Instrument, tempo.MetronomeMark))):
        el.activeSite.remove(el)
    for part in score.parts:
        inst = instrument.Instrument()
        inst.midiProgram = piece.program
        part.insert(0, inst)
    score.parts[0].insert(0, tempo.MetronomeMark(number=piece.bpm))
    rate = 48000 if piece.format == "wav48" else 44100
    codec = {"mp3": ["-c:a", "libmp3lame", "-q:a", "4"], "ogg": ["-c:a", "libvorbis", "-q:a", "4"],
             "m4a": ["-c:a", "aac", "-b:a", "160k"], "wav48": ["-c:a", "pcm_s16le"]}[piece.format]
    with tempfile.TemporaryDirectory() as tmp:
        mid, wav = Path(tmp) / "piece.mid", Path(tmp) / "piece.wav"
        score.write("midi", fp=str(mid))
        # stdin closed: fluidsynth was seen to spin forever when it inherited a pipe as stdin.
        subprocess.run(["fluidsynth", "-ni", "-q", "-g", "0.9", "-F", str(wav), "-r", str(rate), str(soundfont),
                        str(mid)], check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
        with atomic_path(out_path) as out:
            subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(wav), "-t", f"{seconds:.2f}",
                            "-ac", "2", "-ar", str(rate), *codec, str(out)], check=True, capture_output=True,
                           stdin=subprocess.DEVNULL)
    return out_path


def build_corpus(out_dir: str | Path, spec: list[DemoPiece] | None = None, seconds: float | None = None,
                 per_artist: int | None = None) -> dict[str, Path]:
    """Render the demo corpus into `out_dir/<artist>/`, skipping files already there.

    Args:
        seconds: render this many seconds of every piece instead of the spec's length (tests use less).
        per_artist: keep only the first N pieces of each artist.
    Returns:
        artist -> its folder.
    """
    spec = spec if spec is not None else read_spec()
    if per_artist is not None:
        kept, count = [], {}
        for p in spec:
            count[p.artist] = count.get(p.artist, 0) + 1
            if count[p.artist] <= per_artist:
                kept.append(p)
        spec = kept
    if shutil.which("fluidsynth") is None or shutil.which("ffmpeg") is None:
        raise FileNotFoundError("the demo needs the fluidsynth and ffmpeg programs: run scripts/install.sh")
    soundfont = find_soundfont()
    folders = {}
    for piece in progress(spec, desc="render demo corpus", unit="piece"):
        folder = Path(out_dir) / slugify(piece.artist)
        out = folder / piece.filename
        if not out.exists():
            render_piece(piece, out, soundfont, seconds)
        folders[piece.artist] = folder
    return folders


def write_demo_sources(path: str | Path, folders: dict[str, Path], genre: str = "j-pop") -> Path:
    """A sources CSV that lists each demo artist's folder (paths relative to the CSV)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["artist", "source", "limit", "genre", "notes"])
        for artist, folder in folders.items():
            w.writerow([artist, os.path.relpath(folder, path.parent), "", genre, "offline demo corpus"])
    return path


def run_demo(root: str | Path, prepare_config, train_config, seconds: float | None = None,
             per_artist: int | None = None, train_steps: int = 60, lr: float | None = None,
             device: str = "cpu") -> int:
    """`python -m jpop_helpers demo`: every stage on the demo corpus, printing what each produced.

    Renders the corpus, downloads it (01), prepares it (02), fine-tunes the tiny model full and LoRA
    for `train_steps` steps each (03/04; 0 skips them) and evaluates the full run against its base (05).
    Returns the exit status (0: clips were prepared).
    """
    import dataclasses

    from .download import download, read_sources
    from .plots import save_summary_plots
    from .prepare import prepare

    root = Path(root)
    print(f"[1/5] rendering the demo corpus (music21 + fluidsynth) into {root / 'demo_corpus'}")
    folders = build_corpus(root / "demo_corpus", seconds=seconds, per_artist=per_artist)
    sources = write_demo_sources(root / "demo_sources.csv", folders)
    print(f"[2/5] 01_download: {sources} -> {root / 'raw'}")
    print(download(read_sources(sources), root).summary())
    print("[3/5] 02_split_label: chunk, split by song, label, caption, manifests")
    result = prepare(root, prepare_config)
    print(result.summary())
    print(result.counts().to_string())
    for path in save_summary_plots(root):
        print(f"plot: {path}")
    for split, path in result.manifests.items():
        print(f"manifest {split}: {path}")
    if train_steps <= 0:
        return 0 if result.rows else 1
    from .evaluate import EvalConfig, evaluate_run
    from .finetune import describe_training, run_training
    from .report import describe_evaluation

    print(f"[4/5] 03/04: {train_steps} steps of full and LoRA fine-tuning of the tiny model (CPU)")
    for mode, default_lr in (("full", 1e-3), ("lora", 3e-3)):  # the tiny model wants larger steps
        cfg = dataclasses.replace(train_config, mode=mode, lr=lr or default_lr)
        print(f"{mode}: " + describe_training(run_training(root, root / "runs" / f"tiny-{mode}", cfg, device)))
    print("[5/5] 05_eval_listen: base vs fine-tuned (full run)")
    # offline by design: no CLAP download (the report says so)
    summary = evaluate_run(root, root / "runs" / "tiny-full",
                           EvalConfig(n_prompts=4, duration=4.0, clap_checkpoint=None), device=device)
    print(describe_evaluation(summary))
    return 0 if result.rows else 1
