import os

import pytest
import torch

from jpop_helpers.train import TrainConfig, evaluate_ce, train


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_export_loads_with_musicgen_get_pretrained_and_generates(tiny_tokens, tmp_path, mode):
    from audiocraft.models import MusicGen

    from jpop_helpers.export import export_run

    train_items, valid_items = tiny_tokens
    cfg = TrainConfig(model="tiny", mode=mode, steps=6, batch_size=4, lr=3e-3, warmup_steps=1, eval_every=6,
                      save_every=6)
    run = train(cfg, tmp_path / "run", train_items, valid_items, device="cpu")
    out = export_run(tmp_path / "run", tmp_path / "export")
    model = MusicGen.get_pretrained(str(out), device="cpu")
    ce = evaluate_ce(model.lm, valid_items, 4, "cpu")["ce"]
    assert ce == pytest.approx(run.final_valid["valid/ce"], abs=1e-5)  # the trained weights, not the base
    model.set_generation_params(duration=1.0, top_k=50)
    wav = model.generate(["upbeat j-pop with piano"])
    assert wav.shape == (1, 1, 32000) and torch.isfinite(wav).all()
    if mode == "lora":
        adapter = out / "adapter" / "adapter_model.safetensors"
        assert adapter.stat().st_size < 0.2 * (out / "state_dict.bin").stat().st_size
        # base + adapter (peft format) gives the same model as the merged export
        from peft import PeftModel

        from jpop_helpers.model import load_musicgen

        base = load_musicgen("tiny", "cpu")
        base.lm = PeftModel.from_pretrained(base.lm, str(out / "adapter")).eval()
        assert evaluate_ce(base.lm, valid_items, 4, "cpu")["ce"] == pytest.approx(ce, abs=1e-5)


def test_token_cache_encodes_once_and_notices_changed_audio(demo_root, tmp_path):

    from jpop_helpers.model import load_musicgen
    from jpop_helpers.tokens import encode_split

    model = load_musicgen("tiny", "cpu")
    items = encode_split(model, demo_root, "valid", "tiny-cache-test")
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
    again = encode_split(model, demo_root, "valid", "tiny-cache-test")
    assert calls["n"] == 0 and all(torch.equal(a.codes, b.codes) for a, b in zip(items, again))
    wav = sorted((demo_root / "clips" / "valid").glob("*.wav"))[0]
    os.utime(wav, ns=(wav.stat().st_atime_ns, wav.stat().st_mtime_ns + 10**9))  # the clip was rewritten
    encode_split(model, demo_root, "valid", "tiny-cache-test")
    assert calls["n"] == 1


def test_a_damaged_clip_is_reported_and_the_rest_is_encoded(demo_root, tmp_path):
    import json
    import shutil

    from jpop_helpers.model import load_musicgen
    from jpop_helpers.tokens import encode_split

    root = tmp_path / "root"
    shutil.copytree(demo_root / "clips", root / "clips")
    shutil.copytree(demo_root / "manifests", root / "manifests")
    lines = (root / "manifests" / "valid" / "data.jsonl").read_text().splitlines()
    moved = [json.loads(l) for l in lines]
    for m in moved:  # point the manifest at this copy
        m["path"] = str(root / "clips" / "valid" / m["path"].rsplit("/", 1)[1])
    (root / "manifests" / "valid" / "data.jsonl").write_text("".join(json.dumps(m) + "\n" for m in moved))
    bad = moved[0]["path"]
    open(bad, "wb").write(b"RIFF....WAVEtruncated")
    items = encode_split(load_musicgen("tiny", "cpu"), root, "valid", "tiny")
    assert len(items) == len(moved) - 1
    report = (root / "reports" / "tokens_problems.jsonl").read_text()
    assert bad in report and "cannot decode" in report


def test_a_clip_without_readable_metadata_is_reported_and_skipped(demo_root, tmp_path):
    import json
    import shutil

    from jpop_helpers.model import load_musicgen
    from jpop_helpers.tokens import encode_split

    root = tmp_path / "root"
    shutil.copytree(demo_root / "clips", root / "clips")
    shutil.copytree(demo_root / "manifests", root / "manifests")
    metas = [json.loads(l) for l in (root / "manifests" / "valid" / "data.jsonl").read_text().splitlines()]
    for m in metas:
        m["path"] = str(root / "clips" / "valid" / m["path"].rsplit("/", 1)[1])
    (root / "manifests" / "valid" / "data.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metas))
    sidecar = metas[-1]["path"][:-4] + ".json"
    open(sidecar, "w").write("{not json")
    items = encode_split(load_musicgen("tiny", "cpu"), root, "valid", "tiny")
    assert len(items) == len(metas) - 1
    assert sidecar in (root / "reports" / "tokens_problems.jsonl").read_text()
