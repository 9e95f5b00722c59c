"""Stage 05: did fine-tuning help? Held-out CE/perplexity, forgetting, FAD, CLAP, listening.

Any number of models are measured side by side against one base (the CLI and notebook 05: the base and
one run; the offline demo: the base, a full and a LoRA fine-tune), with the sample sizes and
uncertainty behind each number, and written to one folder (tables as CSV, plots as PNG, report.md).
- CE/PPL: the training loop's own loss (loss.evaluate_ce) on the test split (songs never trained on);
  perplexity = exp(mean CE) over valid tokens; per-clip CE too, for paired intervals of differences.
- Forgetting: the same metrics on held-out audio of another family (a token set, or any folder of
  audio; captions from a sidecar .json when present, else the folder's genre prompt).
- Generation: the same prompts and seeds for every model (generate.py), so every metric below is
  computed on the same prompts for every model.
- FAD: each model's clips against the held-out real test clips cut to the same length, per embedder,
  with a bootstrap interval, the clip counts, and the floor (two halves of the real clips).
- CLAP score: prompt vs clip, averaged over fixed 10-s windows (clap.py).
- Listening: pairs (base vs each model) for the blind A/B test (listen.py) and, when judgments exist,
  their summary. The report itself, opening with a verdict, is written by report.py.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .io import AUDIO_EXTENSIONS, atomic_path, load_audio, write_json
from .loss import EmptySplitError, evaluate_ce
from .manifest import read_sidecar, split_clips
from .problems import ProblemLog
from .report import ab_summary, verdict, write_report
from .runs import RunLayout, load_run_lm
from .tokens import TokenItem, encode_audio

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    base: str | None = None  # base model name; default: the run's own base
    n_prompts: int = 50  # generated clips per model (test captions, cycled with new seeds when fewer); FAD wants >= 50
    user_prompts: list[str] = field(default_factory=list)
    duration: float = 10.0  # seconds per generated clip; real clips are cut to it for FAD
    other_genre_dir: str | None = None  # folder of out-of-genre audio for the forgetting check
    other_genre_prompt: str = "music"  # their caption when they have no sidecar
    batch_size: int = 4
    seed: int = 0
    clap_checkpoint: str | None = "laion/larger_clap_music"  # None: skip CLAP (score and CLAP-FAD)
    vggish: str | None = "published"  # VGGish-FAD too (MusicGen paper): "published" weights (290 MB, once), a local .pth, or None
    n_boot: int = 200  # bootstrap resamples for the FAD, CE and CLAP intervals


def folder_items(model, folder: str | Path, prompt: str, seconds: float = 30.0,
                 problems: ProblemLog | None = None) -> list[TokenItem]:
    """The first `seconds` of every audio file in `folder` (recursively), encoded with the model's codec.

    A clip's caption is its sidecar's description when it has one, else `prompt`. A file that cannot be
    decoded (or whose sidecar cannot be read) is reported in `problems` and skipped.
    """
    folder = Path(folder)
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no audio files in {folder}")
    n = int(seconds * model.sample_rate)
    items = []
    for f in files:
        try:
            audio = load_audio(f, model.sample_rate)[:n]
            text = (read_sidecar(f) or {}).get("description") or prompt
        except ValueError as e:  # undecodable audio, or a sidecar that is not JSON
            if problems is not None:
                problems.add(f, str(e))
            else:
                log.warning("%s", e)
            continue
        padded = torch.nn.functional.pad(torch.from_numpy(audio), (0, n - len(audio))).numpy()
        [(codes, frames)] = encode_audio(model, [padded], [len(audio)])
        items.append(TokenItem(f.stem, codes, frames, [text]))
    return items


def ce_rows(models: dict, items: list[TokenItem], split: str, batch_size: int, device: str,
            per_clip: dict | None = None) -> list[dict]:
    """CE/PPL of every model on the same clips, at the same precision (the autocast training uses).

    Args:
        per_clip: when given, filled with model -> [CE of each clip] (mean over codebooks), in `items`
            order, for paired intervals of the difference between two models.
    """
    from .precision import choose_precision

    dtype = choose_precision("auto", device)
    rows = []
    for name, model in models.items():
        r = evaluate_ce(model.lm, items, batch_size, device, dtype, split=split)
        rows.append({"split": split, "model": name, "clips": len(items), **r})
        if per_clip is not None:
            per_clip[name] = [evaluate_ce(model.lm, [it], 1, device, dtype, split=split)["ce"] for it in items]
    return rows


def generation_prompts(root: str | Path, config: EvalConfig) -> list[str]:
    """`config.n_prompts` test-split captions (distinct first, then cycled: prompt i gets seed + i, so a
    repeated caption makes a new clip) followed by the user's prompts."""
    from .generate import test_prompts

    captions = test_prompts(root, config.n_prompts, config.seed)
    cycled = [captions[i % len(captions)] for i in range(config.n_prompts)] if captions else []
    return cycled + list(config.user_prompts)


def _load_clap(config: EvalConfig, device: str):
    """(Clap or None, the reason when None)."""
    if not config.clap_checkpoint:
        return None, "CLAP skipped (no checkpoint configured): CLAP score and CLAP-FAD not computed"
    from .clap import Clap

    try:
        return Clap.load(config.clap_checkpoint, device), None
    except Exception as e:  # offline, or the hub unreachable: say so and go on
        note = f"CLAP checkpoint {config.clap_checkpoint} not available ({type(e).__name__}); " \
               "CLAP score and CLAP-FAD skipped"
        log.warning(note)
        return None, note


def _load_vggish(config: EvalConfig, device: str):
    """(VGGishEmbedder or None, the reason when None)."""
    if not config.vggish:
        return None, None
    from .fad import VGGishEmbedder

    try:
        return VGGishEmbedder.load(None if config.vggish == "published" else config.vggish, device), None
    except Exception as e:  # not installed, offline, or a refused file: say so and go on
        note = f"VGGish not available ({type(e).__name__}: {str(e)[:120]}); VGGish-FAD skipped " \
               "(needs `pip install torchvggish resampy` and the published weights, downloaded once)"
        log.warning(note)
        return None, note


def _decodable(clips: list, problems: ProblemLog) -> list:
    """The clips whose audio decodes; the others are reported by name and left out (FAD embeds every
    real clip, and one bad file would stop it for every embedder)."""
    kept = []
    for clip in clips:
        try:
            load_audio(clip.path, 16000)
            kept.append(clip)
        except (OSError, ValueError) as e:
            problems.add(clip.path, str(e))
    return kept


def held_out_melodies(root: str | Path, models: dict, n: int, seed: int = 0,
                      problems: ProblemLog | None = None) -> list | None:
    """Melody models generate "in the style, following this melody": prompt i follows a held-out test
    clip (drawn with a fixed seed, one song after another), the same for every model compared. None
    when the models take no melody (all of them must, since every model gets the same inputs). A clip
    that cannot be decoded is reported in `problems` (by name) and skipped."""
    from .melody import melody_input, takes_melody

    takes = [takes_melody(m) for m in models.values()]
    if not takes or not all(takes):
        return None
    clips = split_clips(root, "test", problems)
    rng = random.Random(seed)
    rate = next(iter(models.values())).sample_rate
    melodies = []
    for clip in rng.sample(clips, len(clips)):
        if len(melodies) == n:  # enough: the rest are never decoded
            break
        try:
            melodies.append(melody_input(clip.path, rate))
        except ValueError as e:
            if problems is None:
                raise
            problems.add(clip.path, str(e))
    if not melodies:
        raise EmptySplitError(f"{root}: the test split has no clips to use as melodies")
    return [melodies[i % len(melodies)] for i in range(n)]


def evaluate_models(root: str | Path, out_dir: str | Path, models: dict, config: EvalConfig | None = None, *,
                    base: str = "base", codec_name: str = "base", test_items: list[TokenItem] | None = None,
                    forgetting: list[TokenItem] | None = None, embedder=None, clap=None, device: str = "cpu",
                    info: dict | None = None) -> dict:
    """Evaluate any number of models against one base; writes `out_dir` and returns the summary dict.

    Args:
        root: the prepared data root whose test split is the held-out genre (CE, prompts, real clips).
        models: name -> audiocraft MusicGen, `base` included; all share the base's codec.
        codec_name: the token cache folder of the test split (<root>/tokens/<codec_name>/test).
        test_items: the encoded test split, when the caller has it; default: encoded (cached) here.
        forgetting: held-out audio of another family, encoded: its CE/PPL per model is the forgetting
            check (split "other_genre"); default: `config.other_genre_dir` encoded, when set.
        embedder: the FAD embedder; default: the weight-free fallback, plus CLAP when it is loaded.
        clap: a loaded clap.Clap; default: loaded from `config.clap_checkpoint` (skipped, with the
            reason in the report, when it cannot be reached).
        info: extra keys for the summary and the report's title ("title", "run", "mode", "base_model").
    Returns:
        the summary (also <out>/summary.json) with "pairs" (listen.Pair, for the A/B widget) added.
    """
    import pandas as pd

    from .fad import MelStatsEmbedder, embed_clips, fad_floor, fad_of_embeddings
    from .generate import GenerateConfig, generate_set
    from .tokens import encode_split

    config = config or EvalConfig()
    if base not in models:
        raise KeyError(f"the base model {base!r} is not among the models {sorted(models)}")
    models = {base: models[base], **{k: v for k, v in models.items() if k != base}}  # the base first
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    problems = ProblemLog.for_stage(root, "evaluate")
    if test_items is None:
        test_items = encode_split(models[base], root, "test", codec_name)
    per_clip: dict = {"test": {}}
    rows = ce_rows(models, test_items, "test", config.batch_size, device, per_clip["test"])
    if forgetting is None and config.other_genre_dir:
        forgetting = folder_items(models[base], config.other_genre_dir, config.other_genre_prompt, problems=problems)
    if forgetting:
        per_clip["other_genre"] = {}
        rows += ce_rows(models, forgetting, "other_genre", config.batch_size, device, per_clip["other_genre"])
    with atomic_path(out / "ce_ppl.csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)

    prompts = generation_prompts(root, config)
    melodies = held_out_melodies(root, models, len(prompts), config.seed, problems)
    gen = generate_set(models, prompts, out / "generated", GenerateConfig(duration=config.duration, seed=config.seed),
                       melodies=melodies)
    files = {name: [r["path"] for r in gen if r["model"] == name] for name in models}  # same prompts, same order
    real_clips = _decodable(split_clips(root, "test", problems), problems)
    clap_note = None
    if clap is None:
        clap, clap_note = _load_clap(config, device)
    embedders = [embedder] if embedder is not None else [MelStatsEmbedder()]
    fad_notes = []
    if embedder is None:
        vggish, note = _load_vggish(config, device)
        embedders = ([vggish] if vggish is not None else []) + embedders
        fad_notes += [note] if note else []
    clap_rows, clap_clips = [], {}
    if clap is not None:
        from .clap import WINDOW_SECONDS, ClapEmbedder, clap_score

        if embedder is None:
            embedders.insert(0, ClapEmbedder(clap))  # the comparable ones first
        for name in models:
            scores = clap_score(clap, [r["prompt"] for r in gen if r["model"] == name], files[name])
            clap_clips[name] = scores
            clap_rows.append({"model": name, "clap_score": float(sum(scores) / len(scores)) if scores else float("nan"),
                              "clips": len(scores), "checkpoint": clap.name,
                              "window": f"consecutive {WINDOW_SECONDS:g}-s windows, mean cosine"})
    fad_rows, floors = [], []
    if real_clips and prompts:
        for emb in embedders:
            meta = {"embedder": emb.name, "window": getattr(emb, "window", ""),
                    "comparable": bool(getattr(emb, "comparable", False))}
            ref = embed_clips(emb, [c.path for c in real_clips], seconds=config.duration)
            floors.append({**meta, **fad_floor(ref, [c.song_id for c in real_clips], config.n_boot, config.seed)})
            for name in models:
                row = fad_of_embeddings(embed_clips(emb, files[name]), ref, config.n_boot, config.seed)
                fad_rows.append({"model": name, **meta, **row})
    pairs = ab_pairs(gen, base)
    pair_ids = [p.pair_id for p in pairs]
    summary = {**(info or {}), "base": base, "models": list(models), "ce": rows, "ce_clips": per_clip,
               "fad": fad_rows, "fad_floor": floors, "fad_notes": fad_notes + ([clap_note] if clap_note else []),
               "clap": clap_rows, "clap_clips": clap_clips, "clap_note": clap_note, "prompts": prompts, "duration": config.duration,
               "real_clips": len(real_clips), "n_boot": config.n_boot, "pair_ids": pair_ids,
               "ab": ab_summary(out, pair_ids, list(models), base)}
    summary.setdefault("title", out.name)
    summary["out"] = str(out)
    summary["verdict"] = verdict(summary)
    write_json(out / "summary.json", summary)
    write_report(out, summary)
    summary["pairs"] = pairs
    return summary


def evaluate_run(root: str | Path, run_dir: str | Path, config: EvalConfig | None = None, embedder=None,
                 device: str = "cpu", clap=None) -> dict:
    """Evaluate a run ("finetuned") against its base model; writes <run>/eval/ and returns the summary.
    More runs at once: `evaluate_models`.

    Args:
        embedder, clap: see `evaluate_models`.
    """
    from .model import load_musicgen

    config = config or EvalConfig()
    run = RunLayout(run_dir)
    tuned, run_cfg = load_run_lm(run_dir, device)
    base_name = config.base or run_cfg["model"]
    models = {"base": load_musicgen(base_name, device), "finetuned": tuned}
    curves = None
    if run.metrics.exists():
        from .plots import save_training_curves

        curves = str(save_training_curves(run_dir))
    info = {"title": f"`{run.dir.name}`", "run": str(run.dir), "base_model": base_name, "mode": run_cfg["mode"],
            "curves": curves}
    return evaluate_models(root, run.eval, models, config, base="base", codec_name=base_name, embedder=embedder,
                           clap=clap, device=device, info=info)


def ab_pairs(generated: list[dict], base: str = "base"):
    """One listening pair per prompt and compared model (its clip vs the base's clip). A pair's id names
    its clips, so a judgment of older clips (before more training, or of another prompt) never counts
    for new ones."""
    from .io import short_hash
    from .listen import Pair

    by_prompt: dict[str, dict[str, dict]] = {}
    for r in generated:
        by_prompt.setdefault(r["prompt_id"], {})[r["model"]] = r
    pairs = []
    for pid, rs in sorted(by_prompt.items()):
        for name, r in rs.items():
            if name == base or base not in rs:
                continue
            two = {base: rs[base]["path"], name: r["path"]}
            pairs.append(Pair(f"{pid}-{short_hash('|'.join(sorted(two.values())))}", r["prompt"], r["seed"], two))
    return pairs
