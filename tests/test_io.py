import json

import pytest

from jpop_helpers.io import atomic_path, read_jsonl, safe_name, slugify, write_json


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "state.json"
    write_json(target, {"step": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"step": 2, "trunc')  # half-written, then the writer dies
            raise RuntimeError("disconnect")
    assert json.loads(target.read_text()) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left behind


def test_atomic_files_get_normal_permissions(tmp_path):
    write_json(tmp_path / "a.json", {})
    assert (tmp_path / "a.json").stat().st_mode & 0o044  # readable by others, unlike mkstemp's 0600


def test_safe_names_for_japanese_titles_are_ascii_and_unique():
    a, b = safe_name("夜に駆ける"), safe_name("群青")
    assert a != b and a.isascii() and b.isascii()
    assert slugify("Ado - 唱 (Official Video)") == "ado-official-video"
    assert slugify("唱") == "item"


def test_read_jsonl_skips_a_torn_last_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 1}\n{"step": 2}\n{"st')
    assert [r["step"] for r in read_jsonl(p)] == [1, 2]


def test_an_append_after_a_torn_line_starts_a_new_line_and_keeps_its_row(tmp_path):
    """Before, the new row was glued onto the torn fragment and both were lost."""
    from jpop_helpers.io import append_jsonl

    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1}\n{"step": 2, "train/c')  # a kill mid-append
    append_jsonl(p, {"step": 3})
    append_jsonl(p, {"step": 4})
    assert [r["step"] for r in read_jsonl(p)] == [1, 3, 4]
