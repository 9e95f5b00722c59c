"""The essentia-tensorflow tagging path, run offline on tiny stand-in graphs (tests/fixtures/
essentia_models, made by make_tiny_essentia_models.py) that have the real files' names, node names,
shapes and metadata layout. essentia's own TensorflowPredictEffnetDiscogs / TensorflowPredict2D run them."""
import functools
import http.server
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

import jpop_helpers.labeling as labeling
from conftest import click_track, demo_prepare_config
from jpop_helpers.labeling import EMBEDDING, HEADS, LabelConfig, Labeler

FIXTURES = Path(__file__).parent / "fixtures" / "essentia_models"


def test_tagger_scores_every_label_of_every_head_and_applies_top_k():
    cfg = LabelConfig(models_dir=str(FIXTURES), download_models=False, genre_top_k=2, mood_top_k=3,
                      instrument_top_k=1, genre_threshold=0.5)
    labels = Labeler(cfg)(click_track(120, 12, 32000), 32000)
    assert {h: len(s) for h, s in labels.scores.items()} == {"genre": 400, "moods": 56, "instruments": 40}
    assert labels.genres[0] == "j-pop"  # "Pop---J-pop" shown as the style name
    assert len(labels.genres) == 2 and len(labels.moods) == 3 and len(labels.instruments) == 1
    g = labels.scores["genre"]
    assert all(g[name] >= 0.5 for name in labels.genres)
    ranked = sorted(g, key=g.get, reverse=True)
    assert g[labels.genres[1]] == pytest.approx(g[ranked[1]])  # the 2nd best style
    assert abs(labels.bpm - 120) < 2.4  # DSP labels still computed


def test_tagger_output_depends_on_the_audio():
    labeler = Labeler(LabelConfig(models_dir=str(FIXTURES), download_models=False))
    a = labeler(click_track(120, 10, 32000), 32000).scores["moods"]
    b = labeler((np.random.RandomState(0).randn(320000) * 0.3).astype(np.float32), 32000).scores["moods"]
    assert max(abs(a[k] - b[k]) for k in a) > 0.01


def test_missing_graphs_are_downloaded_into_the_cache(tmp_path, monkeypatch):
    """The download path, against a loopback server laid out like essentia's model site."""
    site = tmp_path / "site"
    for spec in [EMBEDDING, *HEADS.values()]:
        (site / spec.folder).mkdir(parents=True, exist_ok=True)
        for f in FIXTURES.glob(f"{spec.name}.*"):
            shutil.copy(f, site / spec.folder / f.name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(labeling, "MODEL_SITE", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        cache = tmp_path / "cache"
        labels = Labeler(LabelConfig(models_dir=str(cache)))(click_track(100, 10, 32000), 32000)
    finally:
        server.shutdown()
    assert sorted(p.name for p in cache.iterdir()) == sorted(p.name for p in FIXTURES.iterdir() if p.suffix in (".pb", ".json"))
    assert labels.genres and labels.moods and labels.instruments


def test_prepare_with_taggers_writes_tags_scores_and_captions(demo_root, tmp_path):
    from jpop_helpers.manifest import load_labels
    from jpop_helpers.prepare import prepare

    root = tmp_path / "root"
    artist = sorted((demo_root / "raw").iterdir())[0]
    shutil.copytree(artist, root / "raw" / artist.name)
    for info in (root / "raw" / artist.name).glob("*.info.json"):  # no genre from the sources CSV
        d = json.loads(info.read_text(encoding="utf-8"))
        d["genre"] = None
        info.write_text(json.dumps(d, ensure_ascii=False), encoding="utf-8")
    cfg = demo_prepare_config()
    cfg.label = LabelConfig(models_dir=str(FIXTURES), download_models=False)
    prepare(root, cfg)
    df = load_labels(root)
    assert len(df) >= 4
    assert (df["genre"] == df["genres"].map(lambda g: g[0])).all()  # the tagger's top style becomes the genre
    assert df["moods"].map(len).gt(0).all() and df["instruments"].map(len).gt(0).all()
    scores = json.loads(df["genre_scores"].iloc[0])
    assert len(scores) == 400 and max(scores, key=scores.get) in (df["genre"].iloc[0], "j-pop")
    side = json.loads(Path(df["path"].iloc[0]).with_suffix(".json").read_text())
    assert side["instrument"] == ", ".join(side["instruments"]) and side["moods"]
    assert any(i in side["description"] for i in side["instruments"] + side["moods"])
