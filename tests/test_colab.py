"""Colab placement logic, with a stand-in for google.colab (Colab itself cannot run here)."""
import sys
import types

import jpop_helpers.colab as colab


def test_outside_colab_data_and_runs_are_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    ws = colab.workspace()
    assert not colab.in_colab() and colab.mount_drive() is None
    assert ws.root == tmp_path / "jpop-musicgen-data" / "data" and ws.runs.parent == ws.root.parent
    explicit = colab.workspace(root=str(tmp_path / "mine" / "data"))
    assert explicit.runs == tmp_path / "mine" / "runs"  # runs beside an explicit root


def test_in_colab_everything_goes_to_drive(tmp_path, monkeypatch):
    mounted = []

    def mount(point):
        mounted.append(point)
        (tmp_path / "drive" / "MyDrive").mkdir(parents=True)

    fake = types.ModuleType("google.colab")
    fake.drive = types.SimpleNamespace(mount=mount)
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", fake)
    monkeypatch.setattr(colab, "DRIVE_MOUNT", tmp_path / "drive")
    monkeypatch.setattr(colab.mount_drive, "__defaults__", (tmp_path / "drive",))
    ws = colab.workspace()
    assert colab.in_colab() and mounted == [str(tmp_path / "drive")]
    assert ws.root == tmp_path / "drive" / "MyDrive" / "jpop-musicgen" / "data"
    assert ws.runs == tmp_path / "drive" / "MyDrive" / "jpop-musicgen" / "runs"
    colab.workspace()
    assert len(mounted) == 1  # an already mounted Drive is not mounted twice
