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
