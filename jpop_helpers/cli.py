"""Command line: `python -m jpop_helpers <verb> --help`.

Every verb exits 0 on success and non-zero with a one-line reason on failure; per-item problems are
written under <root>/reports/ and summarised on stdout.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .chunking import ChunkConfig, SplitConfig
from .labeling import LabelConfig


def _add_prepare_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("chunking")
    g.add_argument("--chunk-seconds", type=float, default=ChunkConfig.chunk_seconds)
    g.add_argument("--hop-seconds", type=float, default=None, help="default: no overlap")
    g.add_argument("--tail", choices=["pad", "drop"], default=ChunkConfig.tail)
    g.add_argument("--min-tail-seconds", type=float, default=ChunkConfig.min_tail_seconds)
    g.add_argument("--silence-db", type=float, default=ChunkConfig.silence_db)
    g = p.add_argument_group("split (decided per song, before chunking)")
    g.add_argument("--valid-fraction", type=float, default=SplitConfig.valid_fraction)
    g.add_argument("--test-fraction", type=float, default=SplitConfig.test_fraction)
    g.add_argument("--split-seed", type=int, default=SplitConfig.seed)
    g.add_argument("--group-by", choices=["song", "artist"], default=SplitConfig.group_by)
    g.add_argument("--test-artist", action="append", default=[], help="hold out this artist for test (repeatable)")
    g = p.add_argument_group("labels")
    g.add_argument("--dsp-only", action="store_true", help="key and BPM only, without the essentia-tensorflow taggers")
    g.add_argument("--models-dir", default=None, help="essentia graph cache folder")
    g.add_argument("--no-model-download", action="store_true", help="never download tagger graphs")
    g.add_argument("--genre-top-k", type=int, default=LabelConfig.genre_top_k)
    g.add_argument("--mood-top-k", type=int, default=LabelConfig.mood_top_k)
    g.add_argument("--instrument-top-k", type=int, default=LabelConfig.instrument_top_k)
    g.add_argument("--captions-per-clip", type=int, default=4)


def prepare_config_from_args(a: argparse.Namespace):
    from .captions import CaptionConfig
    from .prepare import PrepareConfig

    return PrepareConfig(
        chunk=ChunkConfig(chunk_seconds=a.chunk_seconds, hop_seconds=a.hop_seconds, tail=a.tail,
                          min_tail_seconds=a.min_tail_seconds, silence_db=a.silence_db),
        split=SplitConfig(valid_fraction=a.valid_fraction, test_fraction=a.test_fraction, seed=a.split_seed,
                          group_by=a.group_by, test_artists=a.test_artist),
        label=LabelConfig(dsp_only=a.dsp_only, models_dir=a.models_dir, download_models=not a.no_model_download,
                          genre_top_k=a.genre_top_k, mood_top_k=a.mood_top_k, instrument_top_k=a.instrument_top_k),
        captions=CaptionConfig(n_variants=a.captions_per_clip),
    )


def cmd_download(a: argparse.Namespace) -> int:
    from .download import DownloadConfig, download, read_sources

    result = download(read_sources(a.manifest), a.root, DownloadConfig(allow_local=not a.no_local))
    print(result.summary())
    print(f"audio: {Path(a.root) / 'raw'}")
    return 0 if result.downloaded or result.skipped or not result.problems else 1


def cmd_prepare(a: argparse.Namespace) -> int:
    from .plots import save_summary_plots
    from .prepare import prepare

    result = prepare(a.root, prepare_config_from_args(a))
    print(result.summary())
    print(result.counts().to_string())
    for path in save_summary_plots(a.root):
        print(f"plot: {path}")
    return 0 if result.rows else 1


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import build_corpus, write_demo_sources
    from .download import download, read_sources
    from .plots import save_summary_plots
    from .prepare import prepare

    root = Path(a.root)
    print(f"[1/3] rendering the demo corpus (music21 + fluidsynth) into {root / 'demo_corpus'}")
    folders = build_corpus(root / "demo_corpus", seconds=a.seconds, per_artist=a.per_artist)
    sources = write_demo_sources(root / "demo_sources.csv", folders)
    print(f"[2/3] 01_download: {sources} -> {root / 'raw'}")
    d = download(read_sources(sources), root)
    print(d.summary())
    print("[3/3] 02_split_label: chunk, split by song, label, caption, manifests")
    a.dsp_only = a.dsp_only or not a.with_taggers  # offline by design: taggers only when asked for
    result = prepare(root, prepare_config_from_args(a))
    print(result.summary())
    print(result.counts().to_string())
    for path in save_summary_plots(root):
        print(f"plot: {path}")
    for split, path in result.manifests.items():
        print(f"manifest {split}: {path}")
    return 0 if result.rows else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jpop_helpers", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("download", help="01: sources CSV -> <root>/raw (yt-dlp, resumable)")
    p.add_argument("--manifest", required=True, help="sources CSV (see data_manifest/sources_example.csv)")
    p.add_argument("--root", required=True, help="data root folder")
    p.add_argument("--no-local", action="store_true", help="refuse local files and file:// URLs")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("prepare", help="02: <root>/raw -> clips, split, labels, captions, manifests")
    p.add_argument("--root", required=True)
    _add_prepare_args(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("demo", help="build the offline demo corpus and run the pipeline on it")
    p.add_argument("--root", default="demo-data", help="where the demo writes (default: ./demo-data)")
    p.add_argument("--seconds", type=float, default=None, help="render this many seconds per piece")
    p.add_argument("--per-artist", type=int, default=None, help="pieces per demo artist")
    p.add_argument("--with-taggers", action="store_true", help="also run the essentia-tensorflow taggers (online)")
    _add_prepare_args(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line for the user; the traceback with --verbose
        if args.verbose:
            raise
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
