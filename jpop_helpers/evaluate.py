"""Stage 05: did fine-tuning help? Held-out CE/perplexity, forgetting, FAD, generation, listening.

Everything is measured for the base model and the fine-tuned run side by side, with the sample sizes
behind each number, and written to <run>/eval/ (tables as CSV, plots as PNG, report.md).
- CE/PPL: the training loop's own loss (loss.evaluate_ce) on the test split (songs never trained on);
  perplexity = exp(mean CE) over valid tokens.
- Forgetting: the same metrics on clips outside the genre (any folder of audio; captions from a
  sidecar .json when present, else the folder's genre prompt).
- FAD: generated clips of each model against held-out real test clips, through a pluggable embedder.
- Listening: pairs for the blind A/B test (listen.py) and, when judgments exist, their summary.
The report itself is written by report.py.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .io import AUDIO_EXTENSIONS, atomic_path, load_audio, write_json
from .loss import evaluate_ce
from .manifest import read_sidecar, split_clips
from .problems import ProblemLog
from .report import ab_summary, write_report
from .runs import RunLayout, load_run_lm
from .tokens import TokenItem, encode_audio

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    base: str | None = None  # base model name; default: the run's own base
    n_prompts: int = 8  # test-split captions to generate from
    user_prompts: list[str] = field(default_factory=list)
    duration: float = 10.0  # seconds per generated clip
    other_genre_dir: str | None = None  # folder of out-of-genre audio for the forgetting check
    other_genre_prompt: str = "music"  # their caption when they have no sidecar
    batch_size: int = 4
    seed: int = 0
    clap_checkpoint: str | None = "laion/larger_clap_music"  # None: skip CLAP (score and CLAP-FAD)


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


def ce_rows(models: dict, items: list[TokenItem], split: str, batch_size: int, device: str) -> list[dict]:
    """CE/PPL of every model on the same clips, at the same precision (the autocast training uses)."""
    from .precision import choose_precision

    dtype = choose_precision("auto", device)
    rows = []
    for name, model in models.items():
        r = evaluate_ce(model.lm, items, batch_size, device, dtype, split=split)
        rows.append({"split": split, "model": name, "clips": len(items), **r})
    return rows


def evaluate_run(root: str | Path, run_dir: str | Path, config: EvalConfig | None = None, embedder=None,
                 device: str = "cpu", clap=None) -> dict:
    """Evaluate a run against its base model; writes <run>/eval/ and returns the summary dict.

    Args:
        embedder: the FAD embedder; default: CLAP when reachable, else the weight-free MelStatsEmbedder.
        clap: a loaded clap.Clap; default: loaded from `config.clap_checkpoint` (skipped, with the
            reason in the report, when it cannot be reached).
    """
    import pandas as pd

    from .fad import MelStatsEmbedder, fad
    from .generate import GenerateConfig, generate_set, test_prompts
    from .model import load_musicgen
    from .plots import save_training_curves
    from .tokens import encode_split

    config = config or EvalConfig()
    run = RunLayout(run_dir)
    out = run.eval
    out.mkdir(parents=True, exist_ok=True)
    tuned, run_cfg = load_run_lm(run_dir, device)
    base_name = config.base or run_cfg["model"]
    base = load_musicgen(base_name, device)
    models = {"base": base, "finetuned": tuned}
    test_items = encode_split(base, root, "test", base_name)

    rows = ce_rows(models, test_items, "test", config.batch_size, device)
    if config.other_genre_dir:
        other = folder_items(base, config.other_genre_dir, config.other_genre_prompt,
                             problems=ProblemLog.for_stage(root, "evaluate"))
        rows += ce_rows(models, other, "other_genre", config.batch_size, device)
    ce = pd.DataFrame(rows)
    with atomic_path(out / "ce_ppl.csv") as tmp:
        ce.to_csv(tmp, index=False)

    prompts = test_prompts(root, config.n_prompts, config.seed) + list(config.user_prompts)
    gen = generate_set(models, prompts, out / "generated", GenerateConfig(duration=config.duration, seed=config.seed))
    real = [str(c.path) for c in split_clips(root, "test", ProblemLog.for_stage(root, "evaluate"))]
    clap_note = None
    if clap is None and config.clap_checkpoint:
        from .clap import Clap

        try:
            clap = Clap.load(config.clap_checkpoint, device)
        except Exception as e:  # offline, or the hub unreachable: say so and go on
            clap_note = f"CLAP checkpoint {config.clap_checkpoint} not available ({type(e).__name__}); " \
                        "CLAP score and CLAP-FAD skipped"
            log.warning(clap_note)
    embedders = [embedder] if embedder is not None else [MelStatsEmbedder()]
    clap_rows = []
    if clap is not None:
        from .clap import ClapEmbedder, clap_score

        if embedder is None:
            embedders.append(ClapEmbedder(clap))
        for name in models:
            sel = [r for r in gen if r["model"] == name]
            scores = clap_score(clap, [r["prompt"] for r in sel], [r["path"] for r in sel])
            clap_rows.append({"model": name, "clap_score": float(sum(scores) / len(scores)) if scores else float("nan"),
                              "clips": len(scores), "checkpoint": clap.name})
    fad_rows = []
    for emb in embedders:
        for name in models:
            files = [r["path"] for r in gen if r["model"] == name]
            if files and real:
                fad_rows.append({"model": name, **fad(emb, files, real)})
    pairs = ab_pairs(gen)
    ab = ab_summary(run.dir, [p.pair_id for p in pairs])
    curves = save_training_curves(run_dir) if run.metrics.exists() else None
    summary = {"run": str(run.dir), "base_model": base_name, "mode": run_cfg["mode"], "ce": rows, "fad": fad_rows,
               "clap": clap_rows, "clap_note": clap_note, "prompts": prompts, "ab": ab,
               "pair_ids": [p.pair_id for p in pairs],
               "curves": str(curves) if curves else None}
    write_json(out / "summary.json", summary)
    write_report(out, summary)
    summary["pairs"] = pairs
    return summary


def ab_pairs(generated: list[dict]):
    """One listening pair per prompt (its clips by both models). A pair's id names its clips, so a
    judgment of older clips (before more training, or of another prompt) never counts for new ones."""
    from .io import short_hash
    from .listen import Pair

    by_prompt: dict[str, list[dict]] = {}
    for r in generated:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    return [Pair(f"{pid}-{short_hash('|'.join(sorted(r['path'] for r in rs)))}", rs[0]["prompt"], rs[0]["seed"],
                 {r["model"]: r["path"] for r in rs}) for pid, rs in sorted(by_prompt.items())]
