"""Vocal removal: the separator loads through demucs's own Hugging Face path (a real HTDemucs with
random weights, tests/hub_standin.py), only after its metadata names an allowed class."""
import json
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch

from hub_standin import build_demucs_standin, offline_hub, save_demucs_safetensors, build_htdemucs, write_demucs_repo


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The stand-in's convolutions are tiny: on a shared 2-core machine two threads spend ten times the
    CPU time of one (measured: 1.8 s against 0.18 s per separation) waiting for each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def demucs_hub(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf") / "hub"
    build_demucs_standin(cache)
    return cache


def test_load_separator_reads_the_hub_cache_as_demucs_itself_does(demucs_hub):
    from demucs.apply import BagOfModels
    from demucs.hf import get_hf_model
    from demucs.htdemucs import HTDemucs

    from jpop_helpers.separate import SOURCES, load_separator

    with offline_hub(demucs_hub):
        ours = load_separator("htdemucs", device="cpu")
        theirs = get_hf_model("htdemucs")  # demucs 4.1's own hub loader (what audiocraft reaches)
    assert isinstance(ours, BagOfModels) and not ours.training
    assert isinstance(ours.models[0], HTDemucs)
    assert tuple(ours.sources) == SOURCES and ours.samplerate == 44100 and ours.audio_channels == 2
    a, b = ours.models[0].state_dict(), theirs.models[0].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ours.models[0].segment == 2 and isinstance(ours.models[0].segment, Fraction)  # survived JSON


def test_load_separator_from_a_local_folder(tmp_path):
    from jpop_helpers.separate import load_separator

    folder = write_demucs_repo(tmp_path / "repo", seed=3)
    model = load_separator("htdemucs", device="cpu", folder=folder)
    ref = build_htdemucs(seed=3).state_dict()
    got = model.models[0].state_dict()
    # stored in half precision, as demucs's releases are
    assert all(torch.equal(got[k], ref[k].half().float()) for k in ref)
    with pytest.raises(FileNotFoundError, match="htdemucs_ft.yaml"):
        load_separator("htdemucs_ft", device="cpu", folder=folder)


def _evil_module(tmp_path, monkeypatch):
    """A module whose import leaves a marker file: what a crafted model file would make demucs run."""
    marker = tmp_path / "imported"
    (tmp_path / "evil_pkg_jpop.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\nclass Boom:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "evil_pkg_jpop", raising=False)
    return marker


def _crafted(folder, klass=None, structure=None):
    from safetensors.torch import save_file

    model = build_htdemucs()
    folder.mkdir(parents=True, exist_ok=True)
    save_demucs_safetensors(model, folder / "deadbeef.safetensors")
    if klass or structure:
        from safetensors import safe_open

        with safe_open(str(folder / "deadbeef.safetensors"), framework="pt") as f:
            meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        if klass:
            meta["klass"] = klass
        if structure:
            meta["structure"] = json.dumps(structure)
        save_file(tensors, str(folder / "deadbeef.safetensors"), metadata=meta)
    (folder / "htdemucs.yaml").write_text("models: ['deadbeef']\n")
    return folder


@pytest.mark.parametrize("where", ["klass", "structure"])
def test_a_model_file_naming_another_class_is_refused_before_any_import(tmp_path, monkeypatch, where):
    from demucs.hf import load_safetensors_model

    from jpop_helpers.separate import SeparatorError, load_separator

    marker = _evil_module(tmp_path, monkeypatch)
    if where == "klass":
        folder = _crafted(tmp_path / "repo", klass="evil_pkg_jpop.Boom")
    else:
        state = {"_dict": [["__quantized", True], ["klass", {"_class": "evil_pkg_jpop.Boom"}]]}
        folder = _crafted(tmp_path / "repo", structure=state)
    with pytest.raises(SeparatorError, match=r"deadbeef\.safetensors.*evil_pkg_jpop\.Boom"):
        load_separator("htdemucs", device="cpu", folder=folder)
    assert not marker.exists()
    # What the check prevents: demucs's own loader imports the named module (then fails or not).
    with pytest.raises((Exception, SystemExit)):  # demucs exits when diffq is missing
        load_safetensors_model(folder / "deadbeef.safetensors")
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("bag, problem", [("models: ['../../etc/x']\n", "signatures"),
                                          ("models: []\n", "signatures"),
                                          ("!!python/object/apply:os.system ['true']\n", "not a readable bag"),
                                          ("models: ['deadbeef']\nweights: [[1, 1]]\nsegment: -1\n", "segment")])
def test_a_malformed_bag_is_refused_naming_the_file(tmp_path, bag, problem):
    from jpop_helpers.separate import SeparatorError, load_separator

    folder = _crafted(tmp_path / "repo")
    (folder / "htdemucs.yaml").write_text(bag)
    with pytest.raises(SeparatorError, match=rf"htdemucs\.yaml.*{problem}"):
        load_separator("htdemucs", device="cpu", folder=folder)


def test_not_a_safetensors_file_is_refused(tmp_path):
    from jpop_helpers.separate import SeparatorError, load_separator

    folder = _crafted(tmp_path / "repo")
    (folder / "deadbeef.safetensors").write_bytes(np.arange(100, dtype=np.int64).tobytes())
    with pytest.raises(SeparatorError, match="deadbeef.safetensors: not a readable safetensors"):
        load_separator("htdemucs", device="cpu", folder=folder)


# ---------------------------------------------------------------- separating songs, and stage 02 with it
SR44 = 44100


def _song(path, seconds=5.0, f_left=440.0, f_right=660.0, rate=SR44):
    """A stereo song whose channels differ (two tones with a slow tremolo)."""
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    env = 0.5 + 0.25 * np.sin(2 * np.pi * 2 * t)
    wav = np.stack([np.sin(2 * np.pi * f_left * t), np.sin(2 * np.pi * f_right * t)], axis=1) * env[:, None] * 0.5
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wav.astype(np.float32), rate)
    return path


def test_separate_returns_demucs_stems_and_the_instrumental_is_their_non_vocal_sum(demucs_hub):
    from demucs.apply import apply_model

    from jpop_helpers.separate import INSTRUMENTAL, SOURCES, instrumental_of, load_separator, separate

    with offline_hub(demucs_hub):
        model = load_separator("htdemucs", device="cpu")
    rng = np.random.RandomState(0)
    mix = (rng.randn(2, 60000) * 0.1).astype(np.float32)
    stems = separate(model, mix, SR44)
    assert list(stems) == list(SOURCES) and all(s.shape == (2, 60000) and s.dtype == np.float32 for s in stems.values())
    # demucs's usage, done here directly: standardise by the mono mix-down, apply, restore
    x = torch.from_numpy(mix)
    m, sd = x.mean(0).mean(), x.mean(0).std() + 1e-8
    ref = (apply_model(model, ((x - m) / sd)[None], device="cpu", shifts=0, split=True, overlap=0.25)[0] * sd + m).numpy()
    for i, name in enumerate(SOURCES):
        np.testing.assert_allclose(stems[name], ref[i], atol=1e-5)
    inst = instrumental_of(stems)
    np.testing.assert_allclose(inst, ref[0] + ref[1] + ref[2], atol=1e-5)  # drums + bass + other
    assert INSTRUMENTAL == ("drums", "bass", "other")
    assert np.abs(inst - ref.sum(0)).max() > 1e-3  # the vocal stem is really left out
    with pytest.raises(ValueError, match="44100 Hz"):
        separate(model, mix, 32000)


def _config(**kw):
    from jpop_helpers.chunking import ChunkConfig
    from jpop_helpers.labeling import LabelConfig
    from jpop_helpers.prepare import PrepareConfig
    from jpop_helpers.split import SplitConfig

    chunk = {"chunk_seconds": 2.0, "min_tail_seconds": 1.5, **kw.pop("chunk", {})}
    return PrepareConfig(chunk=ChunkConfig(**chunk),
                         split=SplitConfig(valid_fraction=0.0, test_fraction=0.0), label=LabelConfig(dsp_only=True), **kw)


@pytest.fixture(scope="module")
def separated_root(demucs_hub, tmp_path_factory):
    """Two 3-s stereo songs prepared with vocal removal (stand-in htdemucs from the hub cache)."""
    from jpop_helpers.prepare import prepare

    root = tmp_path_factory.mktemp("sep") / "root"
    _song(root / "raw" / "a" / "one.flac", 3.0, 440, 660)
    _song(root / "raw" / "b" / "two.flac", 3.0, 330, 550)
    with offline_hub(demucs_hub):
        result = prepare(root, _config())
    return root, result


def test_prepare_trains_on_the_instrumental_of_each_song(separated_root, demucs_hub):
    import librosa
    import soundfile as sf

    from jpop_helpers.io import load_audio
    from jpop_helpers.separate import instrumental_of, load_separator, separate

    root, result = separated_root
    assert not result.problems.items and sorted(result.separation) == ["a__one", "b__two"]
    info = result.separation["a__one"]
    assert info["cached"] is False and 0 < info["vocals_energy"] < 10 and np.isfinite(info["energy_removed"])
    assert "vocals removed from 2 songs" in result.summary()
    assert list(result.separation_table()["song_id"]) == ["a__one", "b__two"]

    # the cached instrumental: drums + bass + other of the song, at the clips' rate, its length, level-matched
    flac, meta = root / "stems" / "a__one.flac", root / "stems" / "a__one.json"
    cached, sr = sf.read(flac, dtype="float32", always_2d=True)
    song = root / "raw" / "a" / "one.flac"
    assert sr == 32000 and cached.shape == (len(load_audio(song, 32000)), 2)
    with offline_hub(demucs_hub):
        model = load_separator("htdemucs", device="cpu")
    inst = instrumental_of(separate(model, load_audio(song, SR44, mono=False), SR44))
    expect = librosa.resample(inst, orig_sr=SR44, target_sr=32000, res_type="soxr_hq") * 10 ** (info["gain_db"] / 20)
    np.testing.assert_allclose(cached.T, expect, atol=2e-3)
    assert json.loads(meta.read_text())["models"] == model.signatures

    # each clip is that instrumental (mono mix-down), and says so
    rows = [r for r in result.rows if r["song_id"] == "a__one"]
    assert len(rows) == 1 and rows[0]["vocals_removed"] and rows[0]["channels"] == 1
    clip, clip_sr = sf.read(rows[0]["path"], dtype="float32")
    assert clip_sr == 32000 and clip.shape == (2 * 32000,)
    np.testing.assert_allclose(clip, cached[: 2 * 32000].mean(axis=1), atol=2e-4)
    assert all("instrumental" in d.lower() for d in rows[0]["descriptions"])


def test_a_rerun_never_separates_again_and_keep_vocals_uses_the_mix(separated_root, tmp_path, monkeypatch):
    import shutil

    import soundfile as sf

    import jpop_helpers.separate as S
    from jpop_helpers.io import load_audio
    from jpop_helpers.prepare import prepare

    root = tmp_path / "root"
    shutil.copytree(separated_root[0], root)
    calls = {"separate": 0, "load": 0}
    real_separate, real_load = S.separate, S.load_separator
    monkeypatch.setattr(S, "separate", lambda *a, **k: (calls.__setitem__("separate", calls["separate"] + 1), real_separate(*a, **k))[1])
    monkeypatch.setattr(S, "load_separator", lambda *a, **k: (calls.__setitem__("load", calls["load"] + 1), real_load(*a, **k))[1])
    # no hub here at all: anything that needed the model would fail
    again = prepare(root, _config())
    assert calls == {"separate": 0, "load": 0} and len(again.rows) == 2 and again.separation["a__one"]["cached"]
    # other chunking, in stereo: every clip is redone, from the cached stems
    stereo = prepare(root, _config(chunk={"channels": 2, "chunk_seconds": 1.5, "min_tail_seconds": 1.5}))
    assert calls == {"separate": 0, "load": 0} and all(r["channels"] == 2 for r in stereo.rows)
    cached, _ = sf.read(root / "stems" / "a__one.flac", dtype="float32", always_2d=True)
    clip, _ = sf.read(next(r["path"] for r in stereo.rows if r["clip_id"] == "a__one_000"), dtype="float32", always_2d=True)
    assert clip.shape == (48000, 2) and len(stereo.rows) == 4
    np.testing.assert_allclose(clip, cached[:48000], atol=2e-4)
    assert np.abs(clip[:, 0] - clip[:, 1]).max() > 0.05  # two channels, not one twice
    # keep_vocals: the clips are the original mix again, never called instrumental
    full = prepare(root, _config(keep_vocals=True))
    assert calls["separate"] == 0 and not full.separation
    row = next(r for r in full.rows if r["clip_id"] == "a__one_000")
    assert not row["vocals_removed"] and not any("instrumental" in d.lower() for d in row["descriptions"])
    clip, _ = sf.read(row["path"], dtype="float32")
    np.testing.assert_allclose(clip, load_audio(root / "raw" / "a" / "one.flac", 32000)[: 2 * 32000], atol=2e-4)
    both = prepare(root, _config(keep_vocals=True, chunk={"channels": 2}))  # stereo clips of the full mix
    clip, _ = sf.read(next(r["path"] for r in both.rows if r["clip_id"] == "a__one_000"), dtype="float32")
    np.testing.assert_allclose(clip.T, load_audio(root / "raw" / "a" / "one.flac", 32000, mono=False)[:, : 2 * 32000], atol=2e-4)


def test_a_song_that_fails_separation_is_reported_by_name_and_the_rest_goes_on(demucs_hub, tmp_path, monkeypatch):
    import jpop_helpers.separate as S
    from jpop_helpers.prepare import prepare

    root = tmp_path / "root"
    good = _song(root / "raw" / "a" / "good.flac", 2.0)
    bad = _song(root / "raw" / "b" / "long.flac", 2.0, 220, 330)
    real = S.separate

    def out_of_memory_on_one(model, wav, *a, **k):
        if np.argmax(np.abs(np.fft.rfft(wav[0, :44100]))) == 220:  # the 220-Hz song (1-s FFT: 1-Hz bins)
            raise RuntimeError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real(model, wav, *a, **k)

    monkeypatch.setattr(S, "separate", out_of_memory_on_one)
    with offline_hub(demucs_hub):
        result = prepare(root, _config())
    assert [(p["item"], p["problem"]) for p in result.problems.items] == [
        (str(bad), "RuntimeError: vocal separation failed (RuntimeError: CUDA out of memory. Tried to allocate 9.00 GiB)")]
    assert {r["song_id"] for r in result.rows} == {"a__good"} and list(result.separation) == ["a__good"]
    assert not (root / "stems" / "b__long.flac").exists() and not (root / "clips" / "train" / "b__long").exists()
    assert good.exists()


def test_without_the_separator_the_stage_stops_with_the_way_out_and_keeps_finished_songs(separated_root, tmp_path):
    import shutil

    from jpop_helpers.layout import DataLayout
    from jpop_helpers.prepare import prepare
    from jpop_helpers.separate import SeparatorUnavailable

    root = tmp_path / "root"
    shutil.copytree(separated_root[0], root)
    _song(root / "raw" / "0" / "new.flac", 2.0)  # sorted first: the model is needed before the finished songs
    with pytest.raises(SeparatorUnavailable, match=r"htdemucs.*keep_vocals / --keep-vocals"):
        prepare(root, _config(separator_folder=str(tmp_path / "nowhere")))
    listed = DataLayout(root).manifest("train").read_text()
    assert "a__one_000" in listed and "b__two_000" in listed and "0__new" not in listed
    assert not (root / "clips" / "train" / "0__new").exists()


def test_the_signature_follows_what_changes_the_clips():
    from jpop_helpers.prepare import _signature

    base = _signature(_config())
    assert _signature(_config(keep_vocals=True)) != base  # clips with vocals are other clips
    assert _signature(_config(separator="htdemucs_ft")) != base
    assert _signature(_config(chunk={"channels": 2})) != base
    assert _signature(_config(separator_device="cuda", separator_folder="/x")) == base  # same model, same clips
    assert _signature(_config(keep_vocals=True, separator="htdemucs_ft")) == _signature(_config(keep_vocals=True))


def test_match_level_restores_the_mix_level_within_its_limits():
    from jpop_helpers.separate import match_level

    rng = np.random.RandomState(1)
    mix = rng.randn(2, 8000) * 0.1
    assert match_level(mix * 0.7, mix) == pytest.approx(1 / 0.7)  # -3 dB of vocals removed: back to the mix's level
    assert match_level(mix * 0.1, mix) == pytest.approx(10 ** (6 / 20))  # mostly voice: at most +6 dB
    loud = mix * 0.5
    loud[0, 10] = 0.95  # a peak: the gain stops it at 0.99
    assert match_level(loud, mix) == pytest.approx(0.99 / 0.95)
    assert match_level(np.zeros((2, 100)), mix) == 1.0


def test_demucs_own_entry_point_can_be_routed_through_the_checks(demucs_hub, tmp_path, monkeypatch):
    """audiocraft's melody conditioner calls demucs.pretrained.get_model('htdemucs') itself."""
    from demucs import pretrained

    from jpop_helpers.separate import SeparatorError, safe_demucs_pretrained

    original = pretrained.get_model
    with offline_hub(demucs_hub), safe_demucs_pretrained():
        model = pretrained.get_model("htdemucs")
        assert model.signatures and not model.training
    assert pretrained.get_model is original
    marker = _evil_module(tmp_path, monkeypatch)
    folder = _crafted(tmp_path / "repo", klass="evil_pkg_jpop.Boom")
    with safe_demucs_pretrained(folder=folder), pytest.raises(SeparatorError, match="evil_pkg_jpop.Boom"):
        pretrained.get_model("htdemucs")
    with safe_demucs_pretrained(), pytest.raises(SeparatorError, match="pickles"):
        pretrained.get_model("htdemucs", repo=tmp_path)
    assert not marker.exists() and pretrained.get_model is original
