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
    print(f"[1/5] rendering the demo corpus (music21 + fluidsynth) into {root / 'demo_corpus'}")
    folders = build_corpus(root / "demo_corpus", seconds=a.seconds, per_artist=a.per_artist)
    sources = write_demo_sources(root / "demo_sources.csv", folders)
    print(f"[2/5] 01_download: {sources} -> {root / 'raw'}")
    d = download(read_sources(sources), root)
    print(d.summary())
    print("[3/5] 02_split_label: chunk, split by song, label, caption, manifests")
    a.dsp_only = a.dsp_only or not a.with_taggers  # offline by design: taggers only when asked for
    result = prepare(root, prepare_config_from_args(a))
    print(result.summary())
    print(result.counts().to_string())
    for path in save_summary_plots(root):
        print(f"plot: {path}")
    for split, path in result.manifests.items():
        print(f"manifest {split}: {path}")
    if a.train_steps > 0:
        from .train import run_training

        print(f"[4/5] 03/04: {a.train_steps} steps of full and LoRA fine-tuning of the tiny model (CPU)")
        for mode, lr in (("full", 1e-3), ("lora", 3e-3)):
            cfg = train_config_from_args(a, mode=mode, model="tiny", steps=a.train_steps,
                                         lr=a.lr or lr, eval_every=max(a.train_steps // 4, 1),
                                         save_every=a.train_steps)
            result_t = run_training(root, root / "runs" / f"tiny-{mode}", cfg, a.device or "cpu")
            print(f"{mode}: ", end="")
            _print_training(result_t)
        from .evaluate import EvalConfig, evaluate_run

        print("[5/5] 05_eval_listen: base vs fine-tuned (full run)")
        # offline by design: no CLAP download (the report says so)
        summary = evaluate_run(root, root / "runs" / "tiny-full",
                               EvalConfig(n_prompts=4, duration=4.0, clap_checkpoint=None),
                               device=a.device or "cpu")
        _print_evaluation(summary, root / "runs" / "tiny-full")
    return 0 if result.rows else 1


def _add_train_args(p: argparse.ArgumentParser, demo: bool = False) -> None:
    from .train import TrainConfig

    d = TrainConfig()
    g = p.add_argument_group("training")
    if not demo:
        # --run-dir too: under torchrun, "--run" is taken for torchrun's own --run-path
        g.add_argument("--run", "--run-dir", dest="run", required=True,
                       help="run folder (re-running the same command resumes it)")
        g.add_argument("--mode", choices=["full", "lora"], default=d.mode)
        g.add_argument("--model", default=d.model, help="facebook/musicgen-{small,medium,large,melody}, a folder, or tiny")
        g.add_argument("--steps", type=int, default=d.steps)
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--grad-accum", type=int, default=d.grad_accum)
    g.add_argument("--lr", type=float, default=None, help="default 1e-5 (full) / 1e-4 (LoRA)")
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    g.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default=d.precision)
    g.add_argument("--cfg-dropout", type=float, default=d.cfg_dropout)
    g.add_argument("--activation-checkpointing", action="store_true")
    g.add_argument("--optimizer", choices=["adamw", "adamw8bit"], default=d.optimizer)
    g.add_argument("--lora-rank", type=int, default=d.lora_rank)
    g.add_argument("--lora-alpha", type=float, default=d.lora_alpha)
    g.add_argument("--eval-every", type=int, default=d.eval_every)
    g.add_argument("--save-every", type=int, default=d.save_every)
    g.add_argument("--keep-last", type=int, default=d.keep_last)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--device", default=None, help="default: cuda if available, else cpu")


def train_config_from_args(a: argparse.Namespace, **override):
    from .train import TrainConfig

    fields = dict(mode=getattr(a, "mode", "full"), model=getattr(a, "model", "tiny"), steps=getattr(a, "steps", 100),
                  batch_size=a.batch_size, grad_accum=a.grad_accum, lr=a.lr, warmup_steps=a.warmup_steps,
                  precision=a.precision, cfg_dropout=a.cfg_dropout, activation_checkpointing=a.activation_checkpointing,
                  optimizer=a.optimizer, lora_rank=a.lora_rank, lora_alpha=a.lora_alpha, eval_every=a.eval_every,
                  save_every=a.save_every, keep_last=a.keep_last, seed=a.seed)
    fields.update(override)
    return TrainConfig(**fields)


def _print_training(result) -> None:
    valid = [m for m in result.metrics if "valid/ce" in m]
    if valid:
        print(f"valid CE {valid[0]['valid/ce']:.3f} (step {valid[0]['step']}) -> {valid[-1]['valid/ce']:.3f} "
              f"(step {valid[-1]['step']}), perplexity {valid[-1]['valid/ppl']:.2f}")
    print(f"run: {result.run_dir} (metrics.jsonl, curves.png, checkpoints/)")


def cmd_train(a: argparse.Namespace) -> int:
    from .train import dist_info, run_training

    result = run_training(a.root, a.run, train_config_from_args(a), a.device)
    if dist_info()[0] == 0:
        _print_training(result)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from .export import export_run

    out = export_run(a.run, a.out)
    print(f"exported {a.run} -> {out} (load with MusicGen.get_pretrained('{out}'))")
    return 0


def _print_evaluation(summary: dict, run_dir: Path) -> None:
    for r in summary["ce"]:
        print(f"{r['split']:>11} {r['model']:>9}: CE {r['ce']:.4f}  PPL {r['ppl']:.2f}  ({r['clips']} clips, "
              f"{r['tokens']} tokens/codebook)")
    for r in summary["fad"]:
        print(f"FAD {r['model']}: {r['fad']:.3f} ({r['embedder']}, {r['clips_a']} vs {r['clips_b']} clips)")
    print(f"report: {Path(run_dir) / 'eval' / 'report.md'}")


def cmd_evaluate(a: argparse.Namespace) -> int:
    from .evaluate import EvalConfig, evaluate_run
    from .model import default_device

    cfg = EvalConfig(base=a.base, n_prompts=a.n_prompts, user_prompts=a.prompt, duration=a.duration,
                     other_genre_dir=a.other_genre, other_genre_prompt=a.other_genre_prompt, seed=a.seed,
                     clap_checkpoint=None if a.no_clap else a.clap)
    summary = evaluate_run(a.root, a.run, cfg, device=a.device or default_device())
    _print_evaluation(summary, a.run)
    return 0


def cmd_generate(a: argparse.Namespace) -> int:
    from .generate import GenerateConfig, generate_set
    from .model import default_device, load_musicgen

    device = a.device or default_device()
    if a.run:
        from .export import load_run_lm

        model, _ = load_run_lm(a.run, device)
    else:
        model = load_musicgen(a.model, device)
    rows = generate_set({a.name: model}, a.prompt, a.out, GenerateConfig(duration=a.duration, seed=a.seed))
    for r in rows:
        print(f"{r['path']}: {r['prompt']} (seed {r['seed']})")
    return 0


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
    p.add_argument("--train-steps", type=int, default=60, help="tiny-model fine-tuning steps per mode (0: skip)")
    _add_prepare_args(p)
    _add_train_args(p, demo=True)
    p.set_defaults(func=cmd_demo, batch_size=4, warmup_steps=5)

    p = sub.add_parser("train", help="03/04: fine-tune MusicGen's LM (full or LoRA); re-run to resume")
    p.add_argument("--root", required=True, help="prepared data root")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="05: CE/PPL base vs fine-tuned, forgetting, FAD, generation, report")
    p.add_argument("--root", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--base", default=None, help="base model (default: the run's own)")
    p.add_argument("--n-prompts", type=int, default=8, help="test-split captions to generate from")
    p.add_argument("--prompt", action="append", default=[], help="an extra prompt (repeatable)")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--other-genre", default=None, help="folder of out-of-genre audio (forgetting check)")
    p.add_argument("--other-genre-prompt", default="music")
    p.add_argument("--clap", default="laion/larger_clap_music", help="CLAP checkpoint (score + CLAP-FAD)")
    p.add_argument("--no-clap", action="store_true", help="skip CLAP (offline)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("generate", help="generate clips from prompts with fixed seeds")
    p.add_argument("--model", default="facebook/musicgen-small", help="model name or folder (ignored with --run)")
    p.add_argument("--run", default=None, help="generate with a run's fine-tuned model")
    p.add_argument("--name", default="model", help="sub-folder name for the files")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    p.add_argument("--out", required=True)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("export", help="write a run as a folder MusicGen.get_pretrained loads")
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)
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
