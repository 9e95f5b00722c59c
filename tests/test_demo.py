"""The demo corpus renders to the same bytes in any folder, so its song ids (and the seeded split that
hashes them) do not depend on where a demo or a test session runs."""
import hashlib

from jpop_helpers.demo import build_corpus, read_spec, write_demo_sources
from jpop_helpers.download import download, read_sources
from jpop_helpers.layout import DataLayout
from jpop_helpers.prepare import find_songs


def _one_piece_per_format():
    spec, seen = [], set()
    for piece in read_spec():
        if piece.format not in seen:
            seen.add(piece.format)
            spec.append(piece)
    assert seen == {"mp3", "ogg", "m4a", "wav48"}
    return spec


def test_the_demo_songs_have_the_same_ids_whatever_folder_they_are_rendered_to(tmp_path):
    spec = _one_piece_per_format()
    ids, digests = [], []
    for base in (tmp_path / "a", tmp_path / "some" / "other" / "b"):
        folders = build_corpus(base / "corpus", spec=spec, seconds=3, family=None)
        digests.append(sorted(hashlib.sha256(f.read_bytes()).hexdigest() for f in (base / "corpus").rglob("*.*")))
        result = download(read_sources(write_demo_sources(base / "sources.csv", folders)), base / "root")
        assert len(result.downloaded) == len(spec), result.summary()
        ids.append(sorted(s.song_id for s in find_songs(DataLayout(base / "root"))))
    assert digests[0] == digests[1]  # fluidsynth and ffmpeg (bitexact: no random Ogg serial) repeat themselves
    assert ids[0] == ids[1] and len(set(ids[0])) == len(spec)
