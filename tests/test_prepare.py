import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from conftest import demo_prepare_config, ffmpeg_tone
from jpop_helpers.layout import SPLITS, DataLayout
from jpop_helpers.manifest import MUSIC_INFO_FIELDS
from jpop_helpers.manifest import load_labels
from jpop_helpers.prepare import prepare


def _manifest_songs(root):
    out = {}
    for split in SPLITS:
        lines = DataLayout(root).manifest(split).read_text().splitlines()
        out[split] = {json.loads(l)["path"].rsplit("/", 1)[1].rsplit("_", 1)[0] for l in lines}
    return out


def test_no_song_appears_in_two_splits(demo_root):
    songs = _manifest_songs(demo_root)
    assert all(songs[s] for s in SPLITS)  # 6 songs: every split is used
    assert not (songs["train"] & songs["valid"]) and not (songs["train"] & songs["test"]) and not (songs["valid"] & songs["test"])
    labels = load_labels(demo_root)
    assert (labels.groupby("song_id")["split"].nunique() == 1).all()
    # stratified by artist: 3 artists x 2 songs, 1 held out for test and 1 for valid, so every artist
    # keeps a song to train on (a split by song alone could hold out both songs of one artist)
    songs = labels.drop_duplicates("song_id")
    assert set(songs[songs["split"] == "train"]["artist"]) == set(songs["artist"]) and songs["artist"].nunique() == 3


def test_clips_are_mono_32k_fixed_length_with_complete_sidecars(demo_root):
    labels = load_labels(demo_root)
    assert len(labels) >= 12
    # a folder per song, so no folder on Drive grows with the dataset (thousands of entries fail there)
    assert all(Path(p).parent.name == song for p, song in zip(labels["path"], labels["song_id"]))
    for path in labels["path"]:
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.frames) == (32000, 1, 320000)
        side = json.loads(open(path[:-4] + ".json", encoding="utf-8").read())
        assert set(MUSIC_INFO_FIELDS) <= set(side)
        assert side["description"] in side["descriptions"] and side["genre"] == "j-pop"
    assert labels["key"].notna().all() and labels["bpm_estimate"].notna().all()


def test_audiocraft_music_dataset_reads_our_manifests(demo_root):
    from audiocraft.data.music_dataset import MusicDataset

    ds = MusicDataset.from_meta(DataLayout(demo_root).manifests / "train", segment_duration=10.0, num_samples=4,
                                sample_rate=32000, channels=1, info_fields_required=True, return_info=True)
    wav, info = ds[0]
    assert tuple(wav.shape) == (1, 320000)
    assert info.description and "j-pop" in info.description.lower()
    assert info.artist and info.key and info.name
    attrs = info.to_condition_attributes()
    assert attrs.text["description"] == info.description


def test_bad_files_are_reported_by_name_and_the_rest_completes(demo_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(demo_root / "raw", root / "raw")
    (root / "raw" / "broken").mkdir()
    (root / "raw" / "broken" / "garbage.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    ffmpeg_tone(root / "raw" / "broken" / "short.wav", 2.0)
    result = prepare(root, demo_prepare_config())
    problems = {p["item"].rsplit("/", 1)[1]: p["problem"] for p in result.problems.items}
    assert set(problems) == {"garbage.wav", "short.wav"}
    assert "cannot decode" in problems["garbage.wav"] and "too short" in problems["short.wav"]
    assert len({r["song_id"] for r in result.rows}) == 6


def test_rerun_skips_done_songs_and_a_settings_change_redoes_them(demo_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(demo_root / "raw", root / "raw")
    first = prepare(root, demo_prepare_config())
    wav = sorted((root / "clips").glob("*/*/*.wav"))[0]
    mtime = wav.stat().st_mtime_ns
    splits_before = (root / "splits.csv").read_text()
    second = prepare(root, demo_prepare_config())
    assert wav.stat().st_mtime_ns == mtime and len(second.rows) == len(first.rows)
    assert (root / "splits.csv").read_text() == splits_before

    cfg = demo_prepare_config()
    cfg.chunk.chunk_seconds = 5.0
    third = prepare(root, cfg)
    assert len(third.rows) > len(first.rows)
    assert {sf.info(r["path"]).frames for r in third.rows} == {160000}
    assert len(list((root / "clips").glob("*/*/*.wav"))) == len(third.rows)  # old 10-s clips removed


def test_empty_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no audio files"):
        prepare(tmp_path, demo_prepare_config())


def test_same_stem_different_formats_are_two_songs(tmp_path):
    root = tmp_path / "root"
    ffmpeg_tone(root / "raw" / "me" / "x.mp3", 12, 300, codec=["-c:a", "libmp3lame"])
    ffmpeg_tone(root / "raw" / "me" / "x.flac", 12, 500)
    ffmpeg_tone(root / "raw" / "me" / "y.wav", 12, 700)
    result = prepare(root, demo_prepare_config())
    ids = sorted({r["song_id"] for r in result.rows})
    assert ids == ["me__x-flac", "me__x-mp3", "me__y"]  # before: both were "me__x", one overwrote the other
    paths = [json.loads(l)["path"] for s in SPLITS for l in DataLayout(root).manifest(s).read_text().splitlines()]
    assert len(paths) == len(set(paths)) == len(result.rows)


def test_a_moved_root_and_a_hand_edited_record_delete_nothing_outside_the_root(demo_root, tmp_path):
    """Before, records held absolute paths: re-preparing a copied root with new settings deleted the
    ORIGINAL root's clips, and an edited record could make prepare delete any file."""
    first = tmp_path / "first"
    artist = sorted((demo_root / "raw").iterdir())[0]
    shutil.copytree(artist, first / "raw" / artist.name)  # two songs are enough here
    prepare(first, demo_prepare_config())
    before = sorted(p.relative_to(first) for p in (first / "clips").rglob("*.wav"))
    moved = tmp_path / "moved"
    shutil.copytree(first, moved)
    victim = tmp_path / "precious.json"
    victim.write_text("{}")
    record = sorted((moved / "clips" / ".songs").glob("*.json"))[0]
    data = json.loads(record.read_text())
    data["rows"][0]["path"] = str(victim.with_suffix(".wav"))  # points outside the root
    victim.with_suffix(".wav").write_bytes(b"mine")
    record.write_text(json.dumps(data))
    cfg = demo_prepare_config()
    cfg.chunk.chunk_seconds = 5.0
    result = prepare(moved, cfg)
    assert sorted(p.relative_to(first) for p in (first / "clips").rglob("*.wav")) == before  # the original is intact
    assert victim.exists() and victim.with_suffix(".wav").read_bytes() == b"mine"
    assert "outside the data root" in result.problems.summary()
    assert all(r["path"].startswith(str(moved.resolve())) for r in result.rows)


def test_a_clip_deleted_from_disk_is_noticed_and_redone(demo_root, tmp_path):
    root = tmp_path / "root"
    artist = sorted((demo_root / "raw").iterdir())[0]
    shutil.copytree(artist, root / "raw" / artist.name)  # two songs are enough here
    first = prepare(root, demo_prepare_config())
    gone = Path(first.rows[0]["path"])
    gone.unlink()
    second = prepare(root, demo_prepare_config())
    assert gone.exists() and len(second.rows) == len(first.rows)  # before: "no problems", and a dangling manifest line
    listed = [json.loads(l)["path"] for s in SPLITS for l in DataLayout(root).manifest(s).read_text().splitlines()]
    assert all(Path(p).exists() for p in listed)


def test_a_full_disk_fails_the_stage_and_leaves_no_orphan_clips(demo_root, tmp_path, monkeypatch):
    """Before: exit 0 with 4 of 5 songs failed, and orphan clips that no manifest lists."""
    import errno

    import jpop_helpers.prepare as P

    root = tmp_path / "root"
    shutil.copytree(demo_root / "raw", root / "raw")
    real_write = P.write_wav
    written = {"n": 0}

    def disk_fills_up(path, audio, sr):
        written["n"] += 1
        if written["n"] > 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, audio, sr)

    monkeypatch.setattr(P, "write_wav", disk_fills_up)
    with pytest.raises(OSError, match=r"failed because of the machine.*No space left on device.*re-run"):
        prepare(root, demo_prepare_config())
    listed = {json.loads(l)["path"] for s in SPLITS for l in DataLayout(root).manifest(s).read_text().splitlines()}
    on_disk = {str(p.resolve()) for p in (root / "clips").rglob("*.wav")}
    assert on_disk == listed and listed  # the songs that finished are listed; no clip is orphaned
    monkeypatch.setattr(P, "write_wav", real_write)
    again = prepare(root, demo_prepare_config())  # space freed: the rest is done, finished songs kept
    assert len({r["song_id"] for r in again.rows}) == 6
