"""Fuzzing the readers of files a user (or an attacker) can hand us: no input crashes them with
anything but a clear, per-item error, and nothing is ever written outside the data root."""
import json
import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jpop_helpers.io import load_audio
from jpop_helpers.manifest import read_sidecar, split_clips
from jpop_helpers.problems import ProblemLog

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=5),
                           max_leaves=15)


def _tree(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


@FUZZ
@given(lines=st.lists(st.one_of(st.text(max_size=60), json_values.map(json.dumps)), max_size=6),
       sidecar=st.one_of(st.binary(max_size=80), json_values.map(lambda v: json.dumps(v).encode())))
def test_manifest_and_sidecar_readers_report_bad_input_and_never_crash(tmp_path, lines, sidecar):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (root / "clips").mkdir(parents=True, exist_ok=True)
    wav = root / "clips" / "a.wav"
    wav.write_bytes(b"")
    wav.with_suffix(".json").write_bytes(sidecar)
    lines = lines + [json.dumps({"path": str(wav), "duration": 10.0})]
    manifest = root / "manifests" / "train" / "data.jsonl"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text("\n".join(l.replace("\n", " ") for l in lines), encoding="utf-8")
    before = _tree(outside)
    problems = ProblemLog.for_stage(root, "fuzz")
    clips = split_clips(root, "train", problems)
    good = [c for c in clips if c.path == wav]
    assert len(clips) + len(problems) >= 1  # the sidecar'd line is either a clip or a named problem
    assert all(isinstance(c.descriptions, list) and c.clip_id for c in good) or not good
    assert all(str(p["item"]) for p in problems.items)
    assert _tree(outside) == before


@FUZZ
@given(data=st.binary(max_size=200))
def test_a_sidecar_is_a_json_object_or_a_named_error(tmp_path, data):
    (tmp_path / "x.json").write_bytes(data)
    try:
        info = read_sidecar(tmp_path / "x.wav")
        assert isinstance(info, dict)
    except ValueError as e:
        assert "x.json" in str(e)


@FUZZ
@given(data=st.binary(max_size=400), header=st.booleans())
def test_the_audio_loader_raises_only_a_named_value_error(tmp_path, data, header):
    f = tmp_path / "x.wav"
    riff = b"RIFF" + (36 + len(data)).to_bytes(4, "little") + b"WAVEfmt " if header else b""
    f.write_bytes(riff + data)
    try:
        audio = load_audio(f, 16000)
        assert audio.dtype == np.float32 and audio.size and np.isfinite(audio).all()
    except ValueError as e:
        assert "x.wav" in str(e)


def test_a_hostile_clip_name_writes_nothing_outside_the_root(data_copy, tmp_path):
    """A sidecar `name` of ../../x used to become the token cache's file name."""
    from jpop_helpers.model import load_musicgen
    from jpop_helpers.tokens import encode_split

    manifest = data_copy / "manifests" / "valid" / "data.jsonl"
    first = json.loads(manifest.read_text().splitlines()[0])
    side = json.loads(open(first["path"][:-4] + ".json").read())
    side["name"] = "../../../../escaped"
    open(first["path"][:-4] + ".json", "w").write(json.dumps(side))
    before = {p for p in tmp_path.parent.rglob("escaped*")}
    items = encode_split(load_musicgen("tiny", "cpu"), data_copy, "valid", "tiny")
    assert any(it.clip_id == "../../../../escaped" for it in items)  # it is only a key
    assert {p for p in tmp_path.parent.rglob("escaped*")} == before
    assert all(os.path.realpath(p).startswith(os.path.realpath(data_copy)) for p in (data_copy / "tokens").rglob("*"))


@FUZZ
@given(text=st.text(max_size=300), encoding=st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]))
def test_the_sources_parser_returns_sources_or_a_named_error(tmp_path, text, encoding):
    from jpop_helpers.download import read_sources

    f = tmp_path / "sources.csv"
    try:
        f.write_bytes(text.encode(encoding))
    except UnicodeEncodeError:
        return
    before = _tree(tmp_path)
    try:
        sources = read_sources(f)
        assert sources and all(s.artist and s.source and (s.limit is None or s.limit >= 1) for s in sources)
    except ValueError as e:
        assert "sources.csv" in str(e)
    assert _tree(tmp_path) == before  # reading writes nothing
