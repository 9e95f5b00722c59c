import pandas as pd
import torch

from jpop_helpers.generate import GenerateConfig, generate_set
from jpop_helpers.model import load_musicgen


def test_clips_are_keyed_by_what_made_them_and_the_index_keeps_every_clip(tmp_path):
    """Before: <model>/p000.wav was reused whenever it existed, so clips of an older model (or of
    other prompts) were judged as the new ones, and each call rewrote index.csv with its own rows."""
    model = load_musicgen("tiny", "cpu")
    calls = {"n": 0}
    real_generate = model.generate

    def counting(prompts):
        calls["n"] += 1
        return real_generate(prompts)

    model.generate = counting
    cfg = GenerateConfig(duration=0.4, top_k=20)
    first = generate_set({"tuned": model}, ["calm piano", "fast drums"], tmp_path, cfg)
    assert calls["n"] == 2
    again = generate_set({"tuned": model}, ["calm piano", "fast drums"], tmp_path, cfg)
    assert calls["n"] == 2 and [r["path"] for r in again] == [r["path"] for r in first]  # reused: same maker

    with torch.no_grad():  # "more training": the same model name, other weights
        next(model.lm.parameters()).add_(0.1)
    later = generate_set({"tuned": model}, ["calm piano", "fast drums"], tmp_path, cfg)
    assert calls["n"] == 4 and not {r["path"] for r in later} & {r["path"] for r in first}
    other = generate_set({"tuned": model}, ["city pop"], tmp_path, cfg)  # new prompt, same position p000
    assert calls["n"] == 5 and other[0]["path"] not in {r["path"] for r in later}
    longer = generate_set({"tuned": model}, ["city pop"], tmp_path, GenerateConfig(duration=0.6, top_k=20))
    assert calls["n"] == 6 and longer[0]["path"] != other[0]["path"]  # settings are part of the key too

    index = pd.read_csv(tmp_path / "index.csv")
    made = first + later + other + longer
    assert sorted(index["path"]) == sorted(r["path"] for r in made)  # every clip in the folder, once
    assert len(list((tmp_path / "tuned").glob("*.wav"))) == 6
    row = index[index["path"] == longer[0]["path"]].iloc[0]
    assert (row["prompt"], row["duration"]) == ("city pop", 0.6)
