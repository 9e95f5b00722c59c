"""Summary plots (matplotlib) for the notebooks and reports."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from .layout import SPLITS, DataLayout


def data_summary_figure(labels):
    """Four panels: clips per artist and split, BPM histogram, key counts, top tags.

    Args:
        labels: the DataFrame of manifest.load_labels().
    """
    import matplotlib.pyplot as plt  # without a display matplotlib falls back to Agg by itself

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    counts = labels.pivot_table(index="artist", columns="split", values="clip_id", aggfunc="count", fill_value=0)
    counts = counts.reindex(columns=[s for s in SPLITS], fill_value=0)
    counts.plot.barh(stacked=True, ax=axes[0, 0], color=["#4c72b0", "#dd8452", "#55a868"])
    axes[0, 0].set_title("clips per artist and split")
    axes[0, 0].set_xlabel("clips")
    bpm = labels["bpm_estimate"].dropna() if "bpm_estimate" in labels else labels["bpm"].dropna()
    axes[0, 1].hist(bpm, bins=20, color="#4c72b0")
    axes[0, 1].set_title("tempo (BPM estimate)")
    axes[0, 1].set_xlabel("BPM")
    keys = labels["key"].fillna("?").value_counts().head(24)
    keys.sort_index().plot.bar(ax=axes[1, 0], color="#8172b3")
    axes[1, 0].set_title("keys")
    tags = Counter()
    for col in ("genres", "moods", "instruments"):
        for lst in labels[col]:
            tags.update(lst)
    if tags:
        names, values = zip(*tags.most_common(15))
        axes[1, 1].barh(list(names)[::-1], list(values)[::-1], color="#c44e52")
        axes[1, 1].set_title("top tags (genre, mood, instrument)")
    else:
        axes[1, 1].text(0.5, 0.5, "no model tags\n(DSP-only labels)", ha="center", va="center")
        axes[1, 1].set_axis_off()
    fig.tight_layout()
    return fig


def save_summary_plots(root: str | Path) -> list[Path]:
    """Write reports/data_summary.png for a prepared root; returns the written paths."""
    import matplotlib.pyplot as plt

    from .io import atomic_path
    from .manifest import load_labels

    layout = DataLayout(root)
    if not layout.labels_csv.exists():
        return []
    fig = data_summary_figure(load_labels(root))
    out = layout.reports / "data_summary.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return [out]


def training_curves_figure(metrics: list[dict], title: str = ""):
    """CE (left) and perplexity (right) for train and valid, from a run's metrics.jsonl rows."""
    import math

    import matplotlib.pyplot as plt

    fig, (ax_ce, ax_ppl) = plt.subplots(1, 2, figsize=(11, 4))
    tr = [(m["step"], m["train/ce"]) for m in metrics if "train/ce" in m]
    va = [(m["step"], m["valid/ce"]) for m in metrics if "valid/ce" in m]
    for rows, label, style in ((tr, "train", "-"), (va, "valid", "o-")):
        if rows:
            steps, ce = zip(*rows)
            ax_ce.plot(steps, ce, style, label=label)
            ax_ppl.plot(steps, [math.exp(c) for c in ce], style, label=label)
    ax_ce.set(xlabel="step", ylabel="cross-entropy (nats, mean over codebooks)", title=f"{title} CE".strip())
    ax_ppl.set(xlabel="step", ylabel="perplexity = exp(CE)", title=f"{title} perplexity".strip(), yscale="log")
    for ax in (ax_ce, ax_ppl):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def save_training_curves(run_dir: str | Path) -> Path:
    """Write <run>/curves.png from <run>/metrics.jsonl."""
    import matplotlib.pyplot as plt

    from .io import atomic_path, read_jsonl
    from .runs import RunLayout

    run = RunLayout(run_dir)
    fig = training_curves_figure(read_jsonl(run.metrics), run.dir.name)
    out = run.curves
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return out


def live_curves(title: str = ""):
    """A training callback that redraws the CE/PPL curves in a notebook as metrics arrive.

    The curves live in one output, shown on the first call and replaced in place after that (an
    IPython display handle: `update_display_data`, which Colab's front end supports); nothing clears
    the cell's output, so the training progress bar above them stays visible.
    """
    import io

    import matplotlib.pyplot as plt
    from IPython import get_ipython
    from IPython.display import Image, display

    handle = None

    def show(metrics: list[dict]) -> None:
        nonlocal handle
        if get_ipython() is None:  # not in a notebook: nothing to show (curves.png is written at the end)
            return
        fig = training_curves_figure(metrics, title)
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=100)  # a PNG, whatever matplotlib backend the kernel has
        plt.close(fig)
        image = Image(data=png.getvalue(), format="png")
        if handle is None:
            handle = display(image, display_id=True)
        else:
            handle.update(image)

    return show


def eval_figures(summary: dict) -> dict:
    """The evaluation's figures from its summary: name -> matplotlib Figure.

    ce_per_codebook: CE per codebook as grouped bars, one panel per split (test, other_genre).
    fad: each model's FAD with its 95 % bootstrap interval, one panel per embedder, the floor (real
        half vs half) as a shaded band. ab: A/B win rate of each model vs the base with its Wilson 95 %
        interval (only once judgments exist).
    """
    import matplotlib.pyplot as plt
    import numpy as np

    figs = {}
    models = summary["models"]
    splits = list(dict.fromkeys(r["split"] for r in summary["ce"]))
    if splits:
        fig, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 4), squeeze=False)
        for ax, split in zip(axes[0], splits):
            rows = {r["model"]: r for r in summary["ce"] if r["split"] == split}
            k = max(int(key[4:]) for r in rows.values() for key in r if key.startswith("ce_q"))
            width = 0.8 / max(len(rows), 1)
            for j, m in enumerate(m for m in models if m in rows):
                ax.bar(np.arange(k) + j * width, [rows[m][f"ce_q{i + 1}"] for i in range(k)], width, label=m)
            ax.set_xticks(np.arange(k) + width * (len(rows) - 1) / 2, [f"q{i + 1}" for i in range(k)])
            ax.set(title=f"{split}: CE per codebook (lower is better)", xlabel="codebook", ylabel="CE (nats)")
            ax.legend()
            ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        figs["ce_per_codebook"] = fig
    embedders = list(dict.fromkeys(r["embedder"] for r in summary.get("fad", [])))
    if embedders:
        fig, axes = plt.subplots(1, len(embedders), figsize=(5 * len(embedders), 4), squeeze=False)
        for ax, emb in zip(axes[0], embedders):
            rows = [r for r in summary["fad"] if r["embedder"] == emb]
            x = np.arange(len(rows))
            val = np.array([r["fad"] for r in rows], dtype=float)
            lo = np.array([r["low"] for r in rows], dtype=float)
            hi = np.array([r["high"] for r in rows], dtype=float)
            err = np.nan_to_num(np.vstack([val - lo, hi - val]).clip(min=0))
            ax.errorbar(x, val, yerr=err, fmt="o", capsize=6)
            for floor in (f for f in summary.get("fad_floor", []) if f["embedder"] == emb):
                ax.axhline(floor["fad"], color="grey", ls="--", label="floor: real half vs half")
                if np.isfinite(floor["low"]) and np.isfinite(floor["high"]):
                    ax.axhspan(floor["low"], floor["high"], color="grey", alpha=0.2)
                ax.legend()
            ax.set_xticks(x, [f"{r['model']}\n({r['clips_a']} clips)" for r in rows])
            flag = " - indicative only" if any(r.get("indicative_only") for r in rows) else ""
            ax.set(title=f"FAD, {emb}{flag}", ylabel="FAD (lower is closer to the real clips)")
            ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        figs["fad"] = fig
    judged = [ab for ab in summary.get("ab") or [] if ab["decisive"]]
    if judged:
        fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(judged), 4))
        rate = np.array([ab["win_rate"] for ab in judged])
        err = np.vstack([rate - [ab["wilson95_low"] for ab in judged], [ab["wilson95_high"] for ab in judged] - rate])
        ax.bar(range(len(judged)), rate, yerr=err, capsize=8, color="#55a868")
        ax.axhline(0.5, color="grey", ls="--", label="no preference")
        ax.set_xticks(range(len(judged)), [f"{ab['model']} vs {ab['other']}\n(n={ab['decisive']})" for ab in judged])
        ax.set(ylim=(0, 1), ylabel="win rate (Wilson 95 % interval)", title="blind A/B listening")
        ax.legend()
        fig.tight_layout()
        figs["ab"] = fig
    return figs


def save_eval_plots(out: str | Path, summary: dict) -> list[Path]:
    """Write <out>/ce_per_codebook.png, fad.png and (with judgments) ab.png; returns the written paths."""
    import matplotlib.pyplot as plt

    from .io import atomic_path

    paths = []
    for name, fig in eval_figures(summary).items():
        path = Path(out) / f"{name}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
        paths.append(path)
    return paths
