import json
import os

import numpy as np
import torch

from jpop_helpers.model import load_musicgen
from jpop_helpers.tokens import encode_audio, encode_split, valid_frames


def test_valid_frames_count_only_frames_that_end_inside_the_audio():
    # 25 Hz frames at 32 kHz: 1280 samples each
    assert valid_frames(1280 * 10, 32000, 25, 250) == 10
    assert valid_frames(1280 * 10 - 1, 32000, 25, 250) == 9  # the 10th frame would hold padding
    assert valid_frames(32000 * 20, 32000, 25, 250) == 250  # never more than the frames there are


def test_one_encoder_for_clips_and_folders():
    """A padded clip's codes and valid frames do not depend on what else is in the batch."""
    model = load_musicgen("tiny", "cpu")
    rng = np.random.RandomState(0)
    a = (rng.randn(32000 * 2) * 0.1).astype(np.float32)
    b = a.copy()
    b[32000:] = 0  # the second second is padding
    (ca, fa), (cb, fb) = encode_audio(model, [a, b], [len(a), 32000])
    [(cb_alone, fb_alone)] = encode_audio(model, [b], [32000])
    assert (fa, fb) == (50, 25) and ca.shape == (4, 50) and ca.dtype == torch.int16
    assert torch.equal(cb, cb_alone) and fb == fb_alone


def test_token_cache_encodes_once_and_notices_changed_audio_or_codec(data_copy):
    model = load_musicgen("tiny", "cpu")
    items = encode_split(model, data_copy, "valid", "tiny-cache-test")
    assert items and all(it.codes.dtype == torch.int16 and it.codes.shape[0] == 4 for it in items)
    assert all(it.codes.shape[1] == 250 for it in items)  # 10-s clips at 25 Hz
    padded = [it for it in items if it.valid_frames < 250]
    assert all(it.valid_frames >= 100 for it in padded)  # tails of >= 4 s keep their real frames only
    calls = {"n": 0}
    real_encode = model.compression_model.encode

    def counting(x):
        calls["n"] += 1
        return real_encode(x)

    model.compression_model.encode = counting
    again = encode_split(model, data_copy, "valid", "tiny-cache-test")
    assert calls["n"] == 0 and all(torch.equal(a.codes, b.codes) for a, b in zip(items, again))
    wav = sorted((data_copy / "clips" / "valid").glob("*/*.wav"))[0]
    os.utime(wav, ns=(wav.stat().st_atime_ns, wav.stat().st_mtime_ns + 10**9))  # the clip was rewritten
    encode_split(model, data_copy, "valid", "tiny-cache-test")
    assert calls["n"] == 1
    # another codec (e.g. a different model's EnCodec) under the same cache name: every clip again
    with torch.no_grad():
        for p in model.compression_model.parameters():
            p.add_(0.01)
    calls["n"] = 0
    changed = encode_split(model, data_copy, "valid", "tiny-cache-test")
    assert calls["n"] >= 1 and len(changed) == len(items)
    assert any(not torch.equal(a.codes, b.codes) for a, b in zip(items, changed))  # re-encoded, not reused


def test_a_damaged_clip_is_reported_and_the_rest_is_encoded(data_copy):
    root = data_copy
    moved = [json.loads(l) for l in (root / "manifests" / "valid" / "data.jsonl").read_text().splitlines()]
    bad = moved[0]["path"]
    open(bad, "wb").write(b"RIFF....WAVEtruncated")
    items = encode_split(load_musicgen("tiny", "cpu"), root, "valid", "tiny")
    assert len(items) == len(moved) - 1
    report = (root / "reports" / "tokens_problems.jsonl").read_text()
    assert bad in report and "cannot decode" in report


def test_a_clip_without_readable_metadata_is_reported_and_skipped(data_copy):
    root = data_copy
    metas = [json.loads(l) for l in (root / "manifests" / "valid" / "data.jsonl").read_text().splitlines()]
    sidecar = metas[-1]["path"][:-4] + ".json"
    open(sidecar, "w").write("{not json")
    items = encode_split(load_musicgen("tiny", "cpu"), root, "valid", "tiny")
    assert len(items) == len(metas) - 1
    assert sidecar in (root / "reports" / "tokens_problems.jsonl").read_text()
