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


def _stand_in_colab(monkeypatch):
    fake = types.ModuleType("google.colab")
    fake.drive = types.SimpleNamespace(mount=lambda point: None)
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", fake)


def test_gpu_check_says_how_to_attach_a_gpu_in_colab_only(monkeypatch):
    import torch

    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert colab.gpu_check() == "device: cpu"  # outside Colab: just the device
    _stand_in_colab(monkeypatch)
    for work in ("training", "evaluation"):
        msg = colab.gpu_check(work=work)
        assert msg.startswith("device: cpu\nWARNING") and "Runtime > Change runtime type > T4 GPU" in msg
        assert colab.CPU_MEANS[work] in msg  # and what the CPU would mean for that work
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda d: types.SimpleNamespace(name="Tesla T4", total_memory=15 * 2**30))
    assert colab.gpu_check() == "device: cuda (Tesla T4, 15.0 GiB)"  # a GPU: no warning


def test_hf_cache_report_sizes_what_is_cached_and_what_a_first_use_downloads(tmp_path, monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    hub = tmp_path / "hub"
    repo = hub / "models--facebook--musicgen-small"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "aaa").write_bytes(b"x" * 3_000_000)
    (repo / "snapshots" / "rev").mkdir(parents=True)
    (repo / "snapshots" / "rev" / "state_dict.bin").symlink_to(repo / "blobs" / "aaa")  # counted once
    report = colab.hf_cache_report("facebook/musicgen-medium", [hub])
    assert report.splitlines()[0].startswith(f"weights cache: {hub}; ") and "free there" in report
    assert "facebook/musicgen-small" in report and "3.0 MB" in report and "total 3.0 MB in 1 model(s)" in report
    assert "first use of facebook/musicgen-medium downloads about 3.92 GB (LM + EnCodec) + 0.89 GB (t5-base)" in report
    assert "downloads" not in colab.hf_cache_report("facebook/musicgen-small", [hub])  # cached: nothing to fetch
    assert "empty" in colab.hf_cache_report("tiny", [tmp_path / "none"])
    _stand_in_colab(monkeypatch)
    assert "not on Drive" in colab.hf_cache_report(None, [hub])
    monkeypatch.setenv("AUDIOCRAFT_CACHE_DIR", str(tmp_path / "ac"))
    assert colab.hf_cache_dirs()[0] == tmp_path / "ac"  # audiocraft's own cache folder is reported too
