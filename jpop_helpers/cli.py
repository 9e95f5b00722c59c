"""Command line: `python -m jpop_helpers <verb> --help`.

Every verb exits 0 on success and non-zero with a one-line reason on failure; per-item problems are
written under <root>/reports/ and summarised on stdout. The options come from the stage configs
(cliargs.py), so they match the notebooks' parameters and the Python API.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .captions import CaptionConfig
from .chunking import ChunkConfig
from .cliargs import add_config_args, config_from_args
from .demo import DEMO_BASE_STEPS, DEMO_TRAIN_STEPS
from .labeling import LabelConfig
from .split import SplitConfig

# Settings of stage 02, each config in its own --help group (their option names do not collide).
PREPARE_GROUPS = (("chunking", ChunkConfig), ("split (decided per song, before chunking)", SplitConfig),
                  ("labels", LabelConfig), ("captions", CaptionConfig))
DEMO_TRAIN_SKIP = ("model", "mode", "steps", "lr", "eval_every", "save_every")


PREPARE_NESTED = ("chunk", "split", "label", "captions")  # PrepareConfig's fields that are the groups above


def _add_prepare_args(p: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """Stage 02's options; `defaults`: class -> an instance whose values replace that group's defaults."""
    from .prepare import PrepareConfig

    for title, cls in PREPARE_GROUPS:
        add_config_args(p.add_argument_group(title), cls, defaults=(defaults or {}).get(cls))
    add_config_args(p.add_argument_group("vocal removal (Demucs)"), PrepareConfig, skip=PREPARE_NESTED)


def prepare_config_from_args(a: argparse.Namespace, keep_vocals: bool | None = None, **label_override):
    from .prepare import PrepareConfig

    extra = {} if keep_vocals is None else {"keep_vocals": keep_vocals}
    return config_from_args(PrepareConfig, a, chunk=config_from_args(ChunkConfig, a),
                            split=config_from_args(SplitConfig, a),
                            label=config_from_args(LabelConfig, a, **label_override),
                            captions=config_from_args(CaptionConfig, a), **extra)


def cmd_download(a: argparse.Namespace) -> int:
    from .download import DownloadConfig, download, read_sources

    result = download(read_sources(a.manifest), a.root, config_from_args(DownloadConfig, a))
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
    from .demo import run_demo
    from .train import TrainConfig

    # offline by design: the taggers run only when asked for
    # the demo corpus is rendered MIDI (no vocals) and offline (no separator weights): nothing to remove
    if a.base_steps < 1:
        raise ValueError(f"--base-steps must be at least 1, not {a.base_steps}: the base is pretrained before "
                         "it is fine-tuned")
    prepare_config = prepare_config_from_args(a, keep_vocals=True, dsp_only=a.dsp_only or not a.with_taggers)
    train_config = config_from_args(TrainConfig, a, model="tiny", mode="full", steps=max(a.train_steps, 1),
                                    lr=None, eval_every=max(a.train_steps // 4, 1), save_every=max(a.train_steps, 1))
    return run_demo(a.root, prepare_config, train_config, seconds=a.seconds, per_artist=a.per_artist,
                    train_steps=a.train_steps, base_steps=a.base_steps, lr=a.lr, device=a.device or "cpu")


def cmd_train(a: argparse.Namespace) -> int:
    from .distributed import dist_info
    from .finetune import describe_training, run_training
    from .train import TrainConfig

    result = run_training(a.root, a.run, config_from_args(TrainConfig, a), a.device)
    if dist_info()[0] == 0:
        print(describe_training(result))
    return 0


def cmd_plan(a: argparse.Namespace) -> int:
    from .plan import checkpoint_gib, plan_training, read_arch
    from .train import TrainConfig

    config = config_from_args(TrainConfig, a)
    arch = read_arch(config.model)
    plan, config = plan_training(arch, config, a.clip_seconds, a.gpu_gib, a.gpus)  # MemoryError: says what would fit
    print(plan.describe())
    print(f"one checkpoint: ~{checkpoint_gib(arch, config.mode, config.resolved_optimizer(), config.lora.rank):.2f} GiB "
          f"(keep_last={config.keep_last}: {config.keep_last + 1} exist during a save)")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from .export import export_run

    out = export_run(a.run, a.out)
    print(f"exported {a.run} -> {out} (load with MusicGen.get_pretrained('{out}'))")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from .evaluate import EvalConfig, evaluate_run
    from .model import default_device
    from .report import describe_evaluation

    summary = evaluate_run(a.root, a.run, config_from_args(EvalConfig, a), device=a.device or default_device())
    print(describe_evaluation(summary))
    return 0


def cmd_generate(a: argparse.Namespace) -> int:
    from .generate import GenerateConfig, check_melody_files, generate_set, read_melodies
    from .model import default_device, load_musicgen

    device = a.device or default_device()
    check_melody_files(a.melody or [])  # before the (slow) model load
    if a.run:
        from .runs import load_run_lm

        model, _ = load_run_lm(a.run, device)
    else:
        model = load_musicgen(a.model, device)
    melodies = read_melodies(a.melody, len(a.prompt), model, a.run or a.model) if a.melody else None
    rows = generate_set({a.name: model}, a.prompt, a.out, config_from_args(GenerateConfig, a), melodies=melodies)
    for r in rows:
        print(f"{r['path']}: {r['prompt']} (seed {r['seed']}{', melody ' + r['melody'] if r['melody'] else ''})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .download import DownloadConfig
    from .evaluate import EvalConfig
    from .generate import GenerateConfig
    from .train import TrainConfig

    parser = argparse.ArgumentParser(prog="python -m jpop_helpers", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("download", help="01: sources CSV -> <root>/raw (yt-dlp, resumable)")
    p.add_argument("--manifest", required=True, help="sources CSV (see data_manifest/sources_example.csv)")
    p.add_argument("--root", required=True, help="data root folder")
    add_config_args(p.add_argument_group("download"), DownloadConfig)
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("prepare", help="02: <root>/raw -> clips, split, labels, captions, manifests")
    p.add_argument("--root", required=True, help="data root folder (holds raw/)")
    _add_prepare_args(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="03/04: fine-tune MusicGen's LM (full or LoRA); re-run to resume")
    p.add_argument("--root", required=True, help="prepared data root")
    # --run-dir too: under torchrun, "--run" is taken for torchrun's own --run-path
    p.add_argument("--run", "--run-dir", dest="run", required=True,
                   help="run folder (re-running the same command resumes it)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    add_config_args(p.add_argument_group("training"), TrainConfig)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("plan", help="03/04: will a training choice fit the GPU and the disk? (no GPU needed)")
    p.add_argument("--gpu-gib", type=float, default=14.7, help="the GPU's memory (default: a Colab T4)")
    p.add_argument("--clip-seconds", type=float, default=30.0)
    p.add_argument("--gpus", type=int, default=1, help="GPUs of the run (--parallel fsdp splits the model over them)")
    add_config_args(p.add_argument_group("training"), TrainConfig)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("export", help="write a run as a folder MusicGen.get_pretrained loads")
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="05: CE/PPL base vs fine-tuned, forgetting, FAD, generation, report")
    p.add_argument("--root", required=True, help="prepared data root (its test split is evaluated)")
    p.add_argument("--run", required=True)
    p.add_argument("--device", default=None)
    add_config_args(p.add_argument_group("evaluation"), EvalConfig)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("generate", help="generate clips from prompts with fixed seeds")
    p.add_argument("--model", default="facebook/musicgen-small", help="model name or folder (ignored with --run)")
    p.add_argument("--run", default=None, help="generate with a run's fine-tuned model")
    p.add_argument("--name", default="model", help="sub-folder name for the files")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    p.add_argument("--melody", action="append", default=None, metavar="AUDIO",
                   help="melody models: an audio file (any format) to follow; one for every prompt, or one per --prompt")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default=None)
    add_config_args(p.add_argument_group("sampling"), GenerateConfig)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="build the offline demo corpus and run every stage on it")
    p.add_argument("--root", default="demo-data", help="where the demo writes (default: ./demo-data)")
    p.add_argument("--seconds", type=float, default=None, help="render this many seconds per piece")
    p.add_argument("--per-artist", type=int, default=None, help="pieces per demo artist")
    p.add_argument("--with-taggers", action="store_true", help="also run the essentia-tensorflow taggers (online)")
    p.add_argument("--train-steps", type=int, default=DEMO_TRAIN_STEPS,
                   help=f"fine-tuning steps per mode (0: stop after 02) (default: {DEMO_TRAIN_STEPS})")
    p.add_argument("--base-steps", type=int, default=DEMO_BASE_STEPS,
                   help=f"the base's pretraining steps on the base family (default: {DEMO_BASE_STEPS})")
    p.add_argument("--lr", type=float, default=None, help="one rate for every run (default: 3e-3 for the base's "
                   "pretraining, 1e-3 for full and LoRA fine-tuning)")
    p.add_argument("--device", default=None)
    # 10-s clips (the tiny model learns from more, shorter clips in the same CPU time) and a quarter of
    # the songs held out for test, so the story's CE is measured on several songs of each family
    _add_prepare_args(p, {ChunkConfig: ChunkConfig(chunk_seconds=10.0, min_tail_seconds=4.0),
                          SplitConfig: SplitConfig(valid_fraction=0.15, test_fraction=0.25)})
    add_config_args(p.add_argument_group("training (tiny model)"), TrainConfig, skip=DEMO_TRAIN_SKIP,
                    defaults=TrainConfig(batch_size=8, grad_accum=1, warmup_steps=5))
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
