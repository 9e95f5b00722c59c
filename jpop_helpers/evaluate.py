"""Stage 05: did fine-tuning help? Held-out CE/perplexity, forgetting, FAD, generation, listening.

Everything is measured for the base model and the fine-tuned run side by side, with the sample sizes
behind each number, and written to <run>/eval/ (tables as CSV, plots as PNG, report.md).
- CE/PPL: the training loop's own loss (train.evaluate_ce) on the test split (songs never trained on);
  perplexity = exp(mean CE) over valid tokens.
- Forgetting: the same metrics on clips outside the genre (any folder of audio; captions from a
  sidecar .json when present, else the folder's genre prompt).
- FAD: generated clips of each model against held-out real test clips, through a pluggable embedder.
- Listening: pairs for the blind A/B test (listen.py) and, when judgments exist, their summary.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .io import AUDIO_EXTENSIONS, atomic_path, load_audio, read_json, write_json
from .problems import ProblemLog
from .tokens import TokenItem

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


@torch.no_grad()
def folder_items(model, folder: str | Path, prompt: str, seconds: float = 30.0,
                 problems: ProblemLog | None = None) -> list[TokenItem]:
    """The first `seconds` of every audio file in `folder` (recursively), encoded with the model's codec.

    A file that cannot be decoded (or whose sidecar cannot be read) is reported in `problems` and skipped.
    """
    folder = Path(folder)
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no audio files in {folder}")
    codec = model.compression_model
    device = next(codec.parameters()).device
    n = int(seconds * model.sample_rate)
    items = []
    for f in files:
        try:
            audio = load_audio(f, model.sample_rate)[:n]
            side = f.with_suffix(".json")
            text = read_json(side).get("description", prompt) if side.exists() else prompt
        except ValueError as e:  # undecodable audio, or a sidecar that is not JSON
            if problems is not None:
                problems.add(f, str(e))
            else:
                log.warning("%s: %s", f, e)
            continue
        valid = len(audio)
        audio = torch.nn.functional.pad(torch.from_numpy(audio), (0, n - valid))
        codes, _ = codec.encode(audio[None, None].to(device))
        items.append(TokenItem(f.stem, codes[0].cpu().to(torch.int16), math.floor(valid / model.sample_rate * model.frame_rate), [text]))
    return items


def ce_rows(models: dict, items: list[TokenItem], split: str, batch_size: int, device: str) -> list[dict]:
    from .train import evaluate_ce

    rows = []
    for name, model in models.items():
        r = evaluate_ce(model.lm, items, batch_size, device)
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

    from .export import load_run_lm
    from .fad import MelStatsEmbedder, fad
    from .generate import GenerateConfig, generate_set, test_prompts
    from .listen import Pair, read_results, summarize
    from .model import load_musicgen
    from .plots import save_training_curves
    from .tokens import encode_split

    config = config or EvalConfig()
    run_dir = Path(run_dir)
    out = run_dir / "eval"
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
    real = _test_wavs(root)
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
    by_prompt: dict[str, list[dict]] = {}
    for r in gen:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    pairs = [Pair(pid, rs[0]["prompt"], rs[0]["seed"], {r["model"]: r["path"] for r in rs})
             for pid, rs in sorted(by_prompt.items())]
    ab_csv = out / "ab_results.csv"
    ab = summarize(read_results(ab_csv), "finetuned", "base") if ab_csv.exists() else None
    curves = save_training_curves(run_dir) if (run_dir / "metrics.jsonl").exists() else None
    summary = {"run": str(run_dir), "base_model": base_name, "mode": run_cfg["mode"], "ce": rows, "fad": fad_rows,
               "clap": clap_rows, "clap_note": clap_note, "prompts": prompts, "ab": ab,
               "curves": str(curves) if curves else None}
    write_json(out / "summary.json", summary)
    _write_report(out, summary)
    summary["pairs"] = pairs
    return summary


def _test_wavs(root) -> list[str]:
    from .layout import DataLayout

    manifest = DataLayout(root).manifest("test")
    return [json.loads(line)["path"] for line in manifest.read_text().splitlines()] if manifest.exists() else []


def _write_report(out: Path, summary: dict) -> Path:
    """report.md: what was measured, on how much data, base vs fine-tuned."""
    lines = [f"# Evaluation of `{Path(summary['run']).name}`", "",
             f"Base model `{summary['base_model']}`, fine-tuning mode `{summary['mode']}`.", ""]
    if summary["curves"]:
        lines += ["## Training curves", "", "![curves](../curves.png)", ""]
    lines += ["## Cross-entropy and perplexity (lower is better)", "",
              "Same masked per-codebook CE as training; perplexity = exp(mean CE) over valid tokens.", "",
              "| split | model | clips | tokens/codebook | CE | PPL | CE q1 | CE q2 | CE q3 | CE q4 |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["ce"]:
        lines.append(f"| {r['split']} | {r['model']} | {r['clips']} | {r['tokens']} | {r['ce']:.4f} | {r['ppl']:.2f} | "
                     + " | ".join(f"{r.get(f'ce_q{k}', float('nan')):.3f}" for k in range(1, 5)) + " |")
    lines += ["", "`test`: held-out songs of the genre. `other_genre`: the forgetting check "
              "(a fine-tune that helps the genre should not make these much worse).", ""]
    lines += ["## Fréchet Audio Distance (generated vs held-out real test clips; lower is better)", ""]
    if summary["fad"]:
        lines += ["| model | FAD | embedder | generated clips | real clips | note |", "|---|---|---|---|---|---|"]
        for r in summary["fad"]:
            lines.append(f"| {r['model']} | {r['fad']:.3f} | {r['embedder']} | {r['clips_a']} | {r['clips_b']} | "
                         f"{r['warning'] or ''} |")
    else:
        lines.append("Not computed (no generated or no real test clips).")
    lines += ["", "## CLAP text-audio agreement (higher is better)", ""]
    if summary.get("clap"):
        lines += ["Cosine similarity of each prompt with its clip, averaged over fixed 10-s windows.", "",
                  "| model | CLAP score | clips | checkpoint |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['clap_score']:.4f} | {r['clips']} | {r['checkpoint']} |" for r in summary["clap"]]
    else:
        lines.append(summary.get("clap_note") or "Not computed.")
    lines += ["", "## Generation", "", f"{len(summary['prompts'])} prompts, the same seed per prompt for both models; "
              "files and index in `generated/`.", ""]
    lines += [f"- {p}" for p in summary["prompts"]]
    lines += ["", "## Blind A/B listening", ""]
    ab = summary["ab"]
    if ab and ab["decisive"]:
        lines.append(f"Fine-tuned preferred in {ab['wins']} of {ab['decisive']} decisive judgments "
                     f"(win rate {ab['win_rate']:.0%}, Wilson 95% CI {ab['wilson95_low']:.0%}-{ab['wilson95_high']:.0%}, "
                     f"two-sided binomial p = {ab['binomial_p']:.3g}); ties {ab['ties']}, skips {ab['skips']}.")
    else:
        lines.append("No judgments yet: run the listening widget in notebook 05, then re-run the report.")
    path = out / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def refresh_report(run_dir: str | Path) -> dict:
    """Re-read the A/B judgments and rewrite summary.json and report.md (no model work)."""
    from .listen import read_results, summarize

    out = Path(run_dir) / "eval"
    summary = read_json(out / "summary.json")
    ab_csv = out / "ab_results.csv"
    summary["ab"] = summarize(read_results(ab_csv), "finetuned", "base") if ab_csv.exists() else None
    write_json(out / "summary.json", summary)
    _write_report(out, summary)
    return summary
