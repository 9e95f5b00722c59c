import hashlib
import json
import os
import pickle

import numpy as np
import pytest
import soundfile as sf
import torch

import jpop_helpers.tokens as T
from jpop_helpers.manifest import split_clips
from jpop_helpers.model import load_musicgen
from jpop_helpers.tokens import encode_audio, encode_split, valid_frames


def _count_encoded(model) -> list[int]:
    """Wrap the codec's encode; the list receives each batch's number of clips."""
    seen, real = [], model.compression_model.encode

    def counting(x):
        seen.append(x.shape[0])
        return real(x)

    model.compression_model.encode = counting
    return seen


def _files(folder) -> dict:
    """name -> (inode, mtime, size): a file rewritten or replaced shows up as a changed value."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir()}


def _index(folder) -> dict:
    return json.loads((folder / "index.json").read_text())


def _add_clips(root, ids, seconds=0.2):
    """Short noise clips c<id> appended to the valid manifest (with sidecars), for tests of many clips."""
    folder, manifest = root / "clips" / "valid", root / "manifests" / "valid" / "data.jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with open(manifest, "a") as f:
        for i in ids:
            wav = folder / f"c{i:04d}.wav"
            sf.write(wav, np.random.RandomState(i).randn(int(32000 * seconds)).astype(np.float32) * 0.1, 32000)
            wav.with_suffix(".json").write_text(json.dumps({"name": f"c{i:04d}", "description": f"clip {i}"}))
            f.write(json.dumps({"path": str(wav), "duration": seconds}) + "\n")


def _fake_codec(model) -> list[int]:
    """A cheap stand-in for the codec's encode (codes [B, 4, T // 1280] from the audio); counts clips."""
    seen = []

    def encode(wav):
        seen.append(wav.shape[0])
        frames = wav[..., : wav.shape[-1] // 1280 * 1280].reshape(wav.shape[0], 1, -1, 1280).abs().sum(-1)
        return (frames * 1000).long().remainder(2048).repeat(1, 4, 1), None

    model.compression_model.encode = encode
    return seen


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
    folder = data_copy / "tokens" / "tiny-cache-test" / "valid"
    before = _files(folder)
    again = encode_split(model, data_copy, "valid", "tiny-cache-test")
    assert calls["n"] == 0 and all(torch.equal(a.codes, b.codes) for a, b in zip(items, again))
    assert _files(folder) == before  # a re-run with nothing new writes nothing
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
    assert not set(before) - {"index.json"} & set(_files(folder))  # the old codec's shards are gone


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


def test_a_split_of_any_size_is_a_few_files(tmp_path, monkeypatch):
    model = load_musicgen("tiny", "cpu")
    encoded = _fake_codec(model)
    _add_clips(tmp_path, range(150))
    items = encode_split(model, tmp_path, "valid", "tiny", batch_size=50)
    assert sorted(os.listdir(tmp_path / "tokens" / "tiny" / "valid")) == ["index.json", "shard-00001.safetensors"]
    assert [it.clip_id for it in items] == [f"c{i:04d}" for i in range(150)]
    want = {it.clip_id: it.codes for it in items}

    # small shards, then a dozen runs that each add a few clips, then most clips removed
    monkeypatch.setattr(T, "SHARD_CLIPS", 16)
    folder = tmp_path / "tokens" / "small" / "valid"
    n = 150
    for run in range(13):
        if run:
            _add_clips(tmp_path, range(n, n + 3))
            n += 3
        items = encode_split(model, tmp_path, "valid", "small", batch_size=50)
        # full shards + a few partial ones (a shard per run would make 22 shards by the last run) + index.json
        assert len(items) == n and len(os.listdir(folder)) <= n // 16 + T.MAX_PARTIAL + 1, (run, os.listdir(folder))
    manifest = tmp_path / "manifests" / "valid" / "data.jsonl"
    kept = manifest.read_text().splitlines()[::3]
    manifest.write_text("\n".join(kept) + "\n")
    encoded.clear()
    items = encode_split(model, tmp_path, "valid", "small", batch_size=50)
    assert not encoded and [it.clip_id for it in items] == [f"c{i:04d}" for i in range(0, n, 3)]
    assert set(_index(folder)["clips"]) == {it.clip_id for it in items}  # removed clips leave the index
    assert len(os.listdir(folder)) <= 2 * len(items) / 16 + T.MAX_PARTIAL + 1
    assert all(torch.equal(it.codes, want[it.clip_id]) for it in items if it.clip_id in want)  # packed intact
    assert all(p.name == "index.json" or p.name.startswith("shard-") for p in folder.iterdir())


def test_a_torn_missing_or_altered_shard_re_encodes_only_its_clips(data_copy, monkeypatch):
    monkeypatch.setattr(T, "SHARD_CLIPS", 3)
    model = load_musicgen("tiny", "cpu")
    encoded = _fake_codec(model)
    items = encode_split(model, data_copy, "train", "tiny")
    folder = data_copy / "tokens" / "tiny" / "train"
    shards = sorted(_index(folder)["shards"])
    assert len(shards) == 4 and len(items) == 12
    torn, lost, altered, kept = (folder / s for s in shards)
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])  # a Drive sync cut off
    lost.unlink()
    data = bytearray(altered.read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])  # same size, still parses: only the checksum tells
    altered.write_bytes(bytes(data))
    untouched = _files(folder)[kept.name]
    encoded.clear()
    again = encode_split(model, data_copy, "train", "tiny")
    assert sum(encoded) == 9 and _files(folder)[kept.name] == untouched
    assert [it.clip_id for it in again] == [it.clip_id for it in items]
    assert all(torch.equal(a.codes, b.codes) and a.valid_frames == b.valid_frames for a, b in zip(items, again))
    assert not torn.exists() and not altered.exists() and torn.name not in _index(folder)["shards"]
    # a torn index: everything is encoded again, nothing crashes
    index = folder / "index.json"
    index.write_bytes(index.read_bytes()[:100])
    encoded.clear()
    again = encode_split(model, data_copy, "train", "tiny")
    assert sum(encoded) == 12 and all(torch.equal(a.codes, b.codes) for a, b in zip(items, again))


def test_nothing_in_the_token_cache_is_unpickled(data_copy, tmp_path, monkeypatch):
    ran = tmp_path / "exploit-ran"

    class Exploit:
        def __reduce__(self):
            return (open, (str(ran), "w"))

    monkeypatch.setattr(T, "SHARD_CLIPS", 2)
    folder = data_copy / "tokens" / "tiny" / "valid"
    folder.mkdir(parents=True)
    ids = [c.clip_id for c in split_clips(data_copy, "valid")]
    for clip_id in ids:  # the previous format, with a pickle's payload
        torch.save({"codes": Exploit(), "audio_sig": "", "codec_sig": ""}, folder / f"{clip_id}.pt")
    model = load_musicgen("tiny", "cpu")
    items = encode_split(model, data_copy, "valid", "tiny")
    assert [it.clip_id for it in items] == ids and not ran.exists()
    assert not list(folder.glob("*.pt"))  # the old format is cleaned away
    # a pickle in place of a shard, with an index that vouches for it, and one more under a shard's name
    index = _index(folder)
    evil = pickle.dumps(Exploit())
    name = sorted(index["shards"])[0]
    (folder / name).write_bytes(evil)
    index["shards"][name].update(bytes=len(evil), sha1=hashlib.sha1(evil).hexdigest())
    (folder / "index.json").write_text(json.dumps(index))
    (folder / "shard-99999.safetensors").write_bytes(evil)
    encoded = _count_encoded(model)
    again = encode_split(model, data_copy, "valid", "tiny")
    assert not ran.exists() and sum(encoded) == 2  # the shard's two clips, encoded again
    assert all(torch.equal(a.codes, b.codes) for a, b in zip(items, again))
    assert not (folder / "shard-99999.safetensors").exists()


def test_a_rerun_writes_only_what_changed(data_copy, monkeypatch):
    """New, re-chunked and removed clips: new shards are appended, no existing shard is rewritten."""
    monkeypatch.setattr(T, "SHARD_CLIPS", 4)
    model = load_musicgen("tiny", "cpu")
    encoded = _fake_codec(model)
    manifest = data_copy / "manifests" / "train" / "data.jsonl"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines[:-2]) + "\n")
    encode_split(model, data_copy, "train", "tiny")
    folder = data_copy / "tokens" / "tiny" / "train"

    def rerun(n_encoded, n_new_shards):
        shards = {k: v for k, v in _files(folder).items() if k != "index.json"}
        encoded.clear()
        items = encode_split(model, data_copy, "train", "tiny")
        now = _files(folder)
        assert sum(encoded) == n_encoded
        assert all(now.get(k) == v for k, v in shards.items())  # no shard rewritten or removed
        assert len(now) == len(shards) + 1 + n_new_shards
        return items

    manifest.write_text("\n".join(lines) + "\n")  # two clips added
    items = rerun(2, 1)
    assert [it.clip_id for it in items] == [json.loads(l)["path"].split("/")[-1][:-4] for l in lines]
    wav = json.loads(lines[0])["path"]
    os.utime(wav, ns=(os.stat(wav).st_atime_ns, os.stat(wav).st_mtime_ns + 10**9))  # one clip re-chunked
    rerun(1, 1)
    manifest.write_text("\n".join(lines[:1] + lines[2:]) + "\n")  # one clip removed
    items = rerun(0, 0)
    gone = json.loads(lines[1])["path"].split("/")[-1][:-4]
    assert len(items) == 11 and gone not in {it.clip_id for it in items} | set(_index(folder)["clips"])
    sidecar = json.loads(lines[-1])["path"][:-4] + ".json"
    side = json.loads(open(sidecar).read())
    open(sidecar, "w").write(json.dumps({**side, "descriptions": ["edited caption"]}))  # captions edited
    items = rerun(0, 0)
    assert items[-1].descriptions == ["edited caption"] == _index(folder)["clips"][items[-1].clip_id]["descriptions"]


def test_a_crash_before_the_index_is_written_keeps_the_previous_cache(data_copy, monkeypatch):
    model = load_musicgen("tiny", "cpu")
    items = encode_split(model, data_copy, "valid", "tiny")
    folder = data_copy / "tokens" / "tiny" / "valid"
    index = (folder / "index.json").read_bytes()
    wav = json.loads((data_copy / "manifests" / "valid" / "data.jsonl").read_text().splitlines()[0])["path"]
    os.utime(wav, ns=(os.stat(wav).st_atime_ns, os.stat(wav).st_mtime_ns + 10**9))

    def disconnected(*a, **k):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(T, "write_json", disconnected)
    with pytest.raises(OSError):
        encode_split(model, data_copy, "valid", "tiny")
    assert (folder / "index.json").read_bytes() == index  # the previous index, whose shard is intact
    assert sorted(os.listdir(folder)) == ["index.json", "shard-00001.safetensors", "shard-00002.safetensors"]
    monkeypatch.undo()
    encoded = _count_encoded(model)
    again = encode_split(model, data_copy, "valid", "tiny")
    assert sum(encoded) == 1  # the re-chunked clip only
    assert sorted(os.listdir(folder)) == ["index.json", "shard-00001.safetensors", "shard-00003.safetensors"]
    assert all(torch.equal(a.codes, b.codes) for a, b in zip(items, again))
