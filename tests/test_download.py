import functools
import http.server
import json
import threading

import pytest
import soundfile as sf

from conftest import ffmpeg_tone
from jpop_helpers.download import download, read_sources


@pytest.fixture(scope="module")
def local_sources(tmp_path_factory):
    """Files of several formats, a corrupt one and a Japanese title, plus a sources CSV listing them."""
    base = tmp_path_factory.mktemp("dl")
    src = base / "album"
    ffmpeg_tone(src / "stereo48k.wav", 3, 440, rate=48000, channels=2)
    ffmpeg_tone(src / "song.mp3", 3, 330)
    ffmpeg_tone(src / "song2.ogg", 3, 220, codec=["-c:a", "libvorbis"])
    ffmpeg_tone(src / "song3.m4a", 3, 550, codec=["-c:a", "aac"])
    ffmpeg_tone(src / "夜に駆ける.mp3", 3, 660)
    (src / "corrupt.mp3").write_bytes(b"\xff\xfb" + bytes(range(256)) * 40)
    csv = base / "sources.csv"
    csv.write_text("# test sources\nartist,source,limit,genre\nテスト Artist,album,,j-pop\nGhost,missing-folder,,\n",
                   encoding="utf-8")
    return csv


def test_download_local_files_reports_bad_ones_and_keeps_going(local_sources, tmp_path):
    root = tmp_path / "root"
    result = download(read_sources(local_sources), root)
    wavs = sorted((root / "raw").glob("*/*.wav"))
    assert len(result.downloaded) == 5 and len(wavs) == 5
    problems = [json.loads(l) for l in (root / "reports" / "download_problems.jsonl").read_text().splitlines()]
    items = " ".join(p["item"] + " " + p["problem"] for p in problems)
    assert "corrupt.mp3" in items and "not decodable" in items
    assert "missing-folder" in items
    assert not any("song" in p["item"] for p in problems)
    # every output is real wav, named safely, with the Japanese title kept in its metadata
    titles = set()
    for wav in wavs:
        assert wav.name.isascii() and sf.info(str(wav)).frames > 0
        info = json.loads(wav.with_suffix(".info.json").read_text(encoding="utf-8"))
        assert info["artist"] == "テスト Artist" and info["genre"] == "j-pop" and info["duration"] > 2.5
        titles.add(info["title"])
    assert "夜に駆ける" in titles
    stereo = next(w for w in wavs if w.name.startswith("stereo48k"))
    assert sf.info(str(stereo)).samplerate == 48000 and sf.info(str(stereo)).channels == 2  # resampled later

    again = download(read_sources(local_sources), root)  # resumable: nothing fetched twice
    assert again.downloaded == [] and again.skipped == 5


def test_download_over_http_uses_the_archive(tmp_path):
    served = tmp_path / "www"
    ffmpeg_tone(served / "track.mp3", 2, 440)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/track.mp3"
        csv = tmp_path / "s.csv"
        csv.write_text(f"artist,source\nWeb,{url}\n")
        first = download(read_sources(csv), tmp_path / "root")
        assert len(first.downloaded) == 1, first.summary()
        assert (tmp_path / "root" / "raw" / "download_archive.txt").read_text().strip()
        second = download(read_sources(csv), tmp_path / "root")
        assert second.downloaded == [] and second.skipped == 1
    finally:
        server.shutdown()


def test_read_sources_names_the_bad_row(tmp_path):
    csv = tmp_path / "s.csv"
    csv.write_text("artist,source,limit\nA,ytsearch2:foo,2\nB,ytsearch2:bar,many\n")
    with pytest.raises(ValueError, match=r"row 3: limit must be an integer"):
        read_sources(csv)
    csv.write_text("artist,source\n,ytsearch1:x\n")
    with pytest.raises(ValueError, match="row 2"):
        read_sources(csv)
