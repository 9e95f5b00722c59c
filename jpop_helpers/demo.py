"""The offline demo: real music rendered from music21's bundled corpus, run through the pipeline.

Nothing is downloaded: the pieces ship with music21, fluidsynth renders them with a General MIDI
soundfont, and the rendered files enter stage 01 as local sources (yt-dlp reads them via file://
URLs), so the demo exercises the same code a user's playlists go through.

It mirrors the real use: a "base" tiny MusicGen is pretrained on one family of the corpus (the stand-in
for MusicGen's own training data), exported like a released checkpoint, then fine-tuned, full and
LoRA, on the other family (the stand-in for the genre), split by song; the evaluation compares base vs
full vs LoRA on the genre's held-out songs, on the base family's held-out songs (forgetting), by FAD
and by ear (evaluate.evaluate_models).
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import json
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .colab import progress
from .io import atomic_path, slugify, write_json

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
    family: str = "genre"  # genre: the fine-tuning data; base: the base model's pretraining data

    @property
    def filename(self) -> str:
        ext = "wav" if self.format == "wav48" else self.format
        # Titles keep their script (Japanese included): the download stage must cope with them.
        return f"{self.title.replace('/', '-')}.{ext}"


def read_spec(path: str | Path = SPEC) -> list[DemoPiece]:
    """The demo corpus's pieces (data_manifest/demo_corpus.csv).

    Raises:
        ValueError: naming the file and the row, for a missing column or a value that is not a number.
    """
    lines = [ln for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")]
    pieces = []
    for row, r in enumerate(csv.DictReader(lines), start=1):
        try:
            pieces.append(DemoPiece(r["artist"], r["title"], r["piece"], int(r["program"]), float(r["bpm"]),
                                    float(r["seconds"]), r["format"], r.get("family") or "genre"))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: piece {row}: {type(e).__name__}: {e}") from None
    return pieces


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
        # bitexact: no random Ogg stream serial and no encoder version tag, so a piece renders to the same
        # bytes in any folder; the download stage names local files by their bytes, hence the song ids
        # (and the seeded split) do not depend on where the demo runs.
        with atomic_path(out_path) as out:
            subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(wav), "-t", f"{seconds:.2f}",
                            "-ac", "2", "-ar", str(rate), *codec, "-fflags", "+bitexact", "-flags:a", "+bitexact",
                            str(out)], check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return out_path


def build_corpus(out_dir: str | Path, spec: list[DemoPiece] | None = None, seconds: float | None = None,
                 per_artist: int | None = None, family: str | None = "genre") -> dict[str, Path]:
    """Render the demo corpus into `out_dir/<artist>/`, skipping files already there.

    Args:
        seconds: render this many seconds of every piece instead of the spec's length (tests use less).
        per_artist: keep only the first N pieces of each artist.
        family: render only this family's pieces ("genre" or "base"; None: all).
    Returns:
        artist -> its folder.
    """
    spec = spec if spec is not None else read_spec()
    if family is not None:
        spec = [p for p in spec if p.family == family]
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


# The base's pretraining: 100 steps of 8 clips, ending at 5.56 nats on its family's held-out songs (the
# default demo). Much longer, the tiny LM memorises its few training songs and gets worse on held-out
# ones (one 300-step run: 5.35 at step 50, 5.66 at 100, 6.73 at 300, the schedule still at a high rate),
# so it would know less of its family, not more; 100 steps of a 100-step schedule end at a low rate.
DEMO_BASE_STEPS = 100
# Fine-tuning steps per mode: a short fine-tune, whose cost on the base family shows. Longer, full
# fine-tuning goes on learning what the two families share and that cost shrinks (measured on one base
# and an earlier corpus, with synth brass for the piano: +0.27 nats after 30 steps, +0.07 after 60).
DEMO_TRAIN_STEPS = 30
# Learning rates of the tiny model (64 wide, 2 layers: it wants larger steps than MusicGen's 1e-5/1e-4).
# Full and LoRA fine-tune with the same rate, steps and data; each uses its mode's default optimizer
# (8-bit AdamW for full, AdamW for LoRA's few weights), as a user's runs would.
DEMO_LR = {"base": 3e-3, "full": 1e-3, "lora": 1e-3}
DEMO_CLIPS, DEMO_CLIP_SECONDS = 8, 4.0  # generated clips per model and their length (CPU time)
FAMILY_GENRE = {"genre": "j-pop", "base": "classical"}  # the genre each family's captions name


@dataclass
class Story:
    """The demo's models and the data they are measured on."""

    base_model: Path  # the pretrained base, exported (MusicGen.get_pretrained loads it)
    runs: dict[str, Path]  # mode -> fine-tuning run folder
    genre_root: Path  # the genre family's data root (test split: held-out genre songs)
    base_root: Path  # the base family's data root (test split: the forgetting check)


def prepare_family(root: str | Path, corpus_dir: str | Path, family: str, prepare_config,
                   seconds: float | None = None, per_artist: int | None = None):
    """Render one family of the demo corpus, download it into `root` (01) and prepare it (02).

    Returns:
        prepare's PrepareResult.
    """
    from .download import download, read_sources
    from .prepare import prepare

    root = Path(root)
    folders = build_corpus(corpus_dir, seconds=seconds, per_artist=per_artist, family=family)
    sources = write_demo_sources(root / "demo_sources.csv", folders, genre=FAMILY_GENRE[family])
    print(download(read_sources(sources), root).summary())
    return prepare(root, prepare_config)


def pretrain_base(base_root: str | Path, run_dir: str | Path, model_dir: str | Path, train_config,
                  device: str = "cpu") -> Path:
    """Pretrain the tiny MusicGen's LM from scratch on the base family (full training), then export
    it: the export stands in for a released checkpoint such as facebook/musicgen-small.

    Returns:
        the exported model's folder.
    """
    from .export import export_run
    from .finetune import describe_training, run_training

    cfg = dataclasses.replace(train_config, model="tiny", mode="full")
    print("base: " + describe_training(run_training(base_root, run_dir, cfg, device)))
    return export_run(run_dir, model_dir, device)


def finetune_both(genre_root: str | Path, runs_dir: str | Path, base_model: str | Path, train_config,
                  lrs: dict[str, float], device: str = "cpu") -> dict[str, Path]:
    """Fine-tune the base on the genre family's train split, full and LoRA, with the same steps and data.

    Returns:
        mode -> run folder (runs_dir/tiny-full, runs_dir/tiny-lora).
    """
    from .finetune import describe_training, run_training

    runs = {}
    for mode in ("full", "lora"):
        cfg = dataclasses.replace(train_config, model=str(base_model), mode=mode, lr=lrs[mode])
        runs[mode] = Path(runs_dir) / f"tiny-{mode}"
        print(f"{mode}: " + describe_training(run_training(genre_root, runs[mode], cfg, device)))
    return runs


def story_models(story: Story, device: str = "cpu") -> dict:
    """name -> MusicGen: the base and each fine-tune, exactly as exported (fp16-rounded weights)."""
    from .model import load_musicgen
    from .runs import load_run_lm

    return {"base": load_musicgen(str(story.base_model), device),
            **{mode: load_run_lm(run, device)[0] for mode, run in story.runs.items()}}


def story_items(story: Story, models: dict) -> tuple[list, list]:
    """The encoded held-out songs: (genre family test split, base family test split)."""
    from .tokens import encode_split

    base = models["base"]
    return (encode_split(base, story.genre_root, "test", str(story.base_model)),
            encode_split(base, story.base_root, "test", "tiny"))


def story_from_rows(rows: list[dict]) -> dict:
    """The story's numbers from evaluate.ce_rows rows: {"genre": {model: CE}, "base_family": {model: CE},
    "rows": rows} (split "test": the held-out genre songs; "other_genre": the base family's)."""
    return {"genre": {r["model"]: r["ce"] for r in rows if r["split"] == "test"},
            "base_family": {r["model"]: r["ce"] for r in rows if r["split"] == "other_genre"}, "rows": rows}


def describe_story(ce: dict, card: int | None = None) -> str:
    """The demo's story in a few lines: what fine-tuning gained on the genre and cost on the base family.

    Args:
        card: codes per codebook; when given, the CE of a uniform guess (log card) is printed to read
            the others against.
    """
    def table(values: dict) -> list[str]:
        return [f"  {m:>5}: {v:.3f} / {math.exp(v):.1f}" + (f"  ({v - values['base']:+.3f} vs base)" if m != "base" else "")
                for m, v in values.items()]

    uniform = [f"a uniform guess over the {card} codes: {math.log(card):.3f} / {card}"] if card else []
    return "\n".join(["held-out genre songs, CE (nats; lower is better) / perplexity:", *table(ce["genre"]),
                      "base family's held-out songs (forgetting: + means worse than the base):",
                      *table(ce["base_family"]), *uniform])


STAMP = "demo_corpus.json"


def claim_root(root: str | Path, seconds: float | None, per_artist: int | None) -> Path:
    """Record which corpus a demo root is built from (the spec, --seconds, --per-artist), or refuse a root
    built from another: rendering, download and prepare skip files that exist by name, so a re-run with
    other settings would silently mix the old pieces into the new run.

    Raises:
        ValueError: the root holds a demo of another corpus or settings.
    """
    root = Path(root)
    stamp = {"spec": [dataclasses.asdict(p) for p in read_spec()], "seconds": seconds, "per_artist": per_artist}
    path = root / STAMP
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            old = None
        if old != stamp:
            raise ValueError(f"{root} holds a demo built from another corpus or other --seconds/--per-artist "
                             f"({path}): use a new --root, or delete that one")
        return path
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} is not empty and holds no demo stamp ({STAMP}): use a new --root")
    root.mkdir(parents=True, exist_ok=True)
    write_json(path, stamp)
    return path


def run_demo(root: str | Path, prepare_config, train_config, seconds: float | None = None,
             per_artist: int | None = None, train_steps: int = DEMO_TRAIN_STEPS,
             base_steps: int = DEMO_BASE_STEPS, lr: float | None = None, device: str = "cpu") -> int:
    """`python -m jpop_helpers demo`: the real use, in miniature, on the demo corpus.

    Renders both families of the corpus, downloads (01) and prepares (02) each into its own data root
    (the genre family in `root`, the base family in `root/base-family`), pretrains the tiny MusicGen
    on the base family for `base_steps` steps (the stand-in for a released
    checkpoint), fine-tunes it full and LoRA for `train_steps` steps each on the genre family's train
    split (03/04; 0 skips training), and evaluates base vs full vs LoRA (05): CE/PPL on the held-out
    genre songs and on the base family's held-out songs (forgetting), generated clips, FAD.
    Returns the exit status (0: clips were prepared).
    """
    from .plots import save_summary_plots

    root = Path(root)
    claim_root(root, seconds, per_artist)
    base_root = root / "base-family"
    print(f"[1/6] 01+02 on the genre family (the fine-tuning data): render (music21 + fluidsynth), download, "
          f"prepare into {root}")
    result = prepare_family(root, root / "demo_corpus", "genre", prepare_config, seconds, per_artist)
    print(result.summary())
    print(result.counts().to_string())
    for path in save_summary_plots(root):
        print(f"plot: {path}")
    for split, path in result.manifests.items():
        print(f"manifest {split}: {path}")
    print(f"[2/6] 01+02 on the base family (the base model's own music) into {base_root}")
    base_result = prepare_family(base_root, root / "demo_corpus", "base", prepare_config, seconds, per_artist)
    print(base_result.summary())
    if train_steps <= 0:
        return 0 if result.rows else 1
    train_config = dataclasses.replace(train_config, steps=train_steps, eval_every=max(train_steps // 4, 1),
                                       save_every=train_steps)
    from .evaluate import EvalConfig, evaluate_models
    from .report import describe_evaluation

    base_cfg = dataclasses.replace(train_config, steps=base_steps, lr=lr or DEMO_LR["base"],
                                   eval_every=max(base_steps // 4, 1), save_every=base_steps)
    print(f"[3/6] pretraining the base: {base_cfg.steps} steps of the tiny MusicGen from scratch on the base family")
    base_model = pretrain_base(base_root, root / "runs" / "tiny-base", root / "models" / "base", base_cfg, device)
    print(f"[4/6] 03/04: {train_steps} steps of full and LoRA fine-tuning of the base on the genre family")
    runs = finetune_both(root, root / "runs", base_model, train_config,
                         {m: lr or DEMO_LR[m] for m in ("full", "lora")}, device)
    story = Story(Path(base_model), runs, root, base_root)
    print(f"[5/6] 05_eval_listen: base vs full vs LoRA, generated clips side by side, FAD -> {root / 'eval'}")
    models = story_models(story, device)
    genre_test, base_test = story_items(story, models)
    # offline by design: no CLAP download (the report says so); few clips, so FAD is flagged indicative
    config = EvalConfig(n_prompts=DEMO_CLIPS, duration=DEMO_CLIP_SECONDS, clap_checkpoint=None)
    info = {"title": "the offline demo: base vs full vs LoRA fine-tuning", "base_model": str(base_model),
            "mode": "full and lora", "run": str(root / "runs")}
    summary = evaluate_models(root, root / "eval", models, config, base="base", codec_name=str(base_model),
                              test_items=genre_test, forgetting=base_test, device=device, info=info)
    print(describe_evaluation(summary))
    print("[6/6] the story: what fine-tuning gained on the genre and cost on the base's own music")
    print(describe_story(story_from_rows(summary["ce"]), card=models["base"].lm.card))
    return 0 if result.rows else 1
