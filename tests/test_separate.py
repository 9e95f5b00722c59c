"""Vocal removal: the separator loads through demucs's own Hugging Face path (a real HTDemucs with
random weights, tests/hub_standin.py), only after its metadata names an allowed class."""
import json
import sys

import numpy as np
import pytest
import torch

from hub_standin import build_demucs_standin, offline_hub, save_demucs_safetensors, build_htdemucs, write_demucs_repo


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
    assert float(ours.models[0].segment) == pytest.approx(7.8)  # the Fraction survived the JSON round trip


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
