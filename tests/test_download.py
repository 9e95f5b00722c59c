import functools
import http.server
import json
import shutil
import subprocess
import threading
from pathlib import Path

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
    with pytest.raises(ValueError, match=r"row 3: limit must be a whole number"):
        read_sources(csv)
    csv.write_text("artist,source\n,ytsearch1:x\n")
    with pytest.raises(ValueError, match="row 2"):
        read_sources(csv)


BOT_CHECK = "Sign in to confirm you’re not a bot"  # what YouTube tells datacenter IPs such as Colab's


def test_a_sign_in_wall_is_reported_with_the_cookies_hint_and_the_batch_goes_on(tmp_path, monkeypatch):
    """YouTube's bot check, raised the way yt-dlp's own extractors raise it (through yt-dlp's error
    handling and our logger) and as a DownloadError out of extract_info; a local source still downloads."""
    import yt_dlp
    from yt_dlp.extractor.generic import GenericIE
    from yt_dlp.utils import DownloadError

    ffmpeg_tone(tmp_path / "ok" / "fine.mp3", 2, 440)
    real_extract, real_info = GenericIE._real_extract, yt_dlp.YoutubeDL.extract_info

    def extract(self, url):
        if "bot-check" in url:
            self.raise_login_required(BOT_CHECK, method="cookies")  # as the YouTube extractor does
        return real_extract(self, url)

    cookiefiles = []

    def extract_info(self, url, *args, **kwargs):
        cookiefiles.append(self.params.get("cookiefile"))
        if "raises" in url:
            raise DownloadError(f"ERROR: [youtube] abc: {BOT_CHECK}. Use --cookies-from-browser or --cookies")
        return real_info(self, url, *args, **kwargs)

    monkeypatch.setattr(GenericIE, "_real_extract", extract)
    monkeypatch.setattr(yt_dlp.YoutubeDL, "extract_info", extract_info)
    csv = tmp_path / "s.csv"
    csv.write_text("artist,source\nA,https://example.invalid/bot-check\nB,https://example.invalid/raises\n"
                   "C,ok\nD,missing-folder\n")

    result = download(read_sources(csv), tmp_path / "root")
    assert [p.name[:4] for p in result.downloaded] == ["fine"]  # the rest of the batch went on
    rows = {r["item"].rsplit("/", 1)[-1]: r for r in map(json.loads, (tmp_path / "root" / "reports" /
                                                                      "download_problems.jsonl").read_text().splitlines())}
    assert set(rows) == {"bot-check", "raises", "missing-folder"}
    for item in ("bot-check", "raises"):
        assert BOT_CHECK in rows[item]["problem"]
        assert "COOKIES_FILE" in rows[item]["hint"] and "--cookies-file" in rows[item]["hint"]
    assert "hint" not in rows["missing-folder"]  # only a sign-in wall gets the cookies hint
    summary = result.summary()
    assert summary.count("hint: ") == 1 and "Netscape" in summary  # the hint, once, for both sources

    cookies = tmp_path / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n")
    from jpop_helpers.download import DownloadConfig

    cookiefiles.clear()
    again = download(read_sources(csv), tmp_path / "root2", DownloadConfig(cookies_file=str(cookies)))
    assert cookiefiles and set(cookiefiles) == {str(cookies)}  # yt-dlp got the file for every source
    assert f"did not accept the cookies in {cookies}" in again.summary()
    with pytest.raises(FileNotFoundError, match="cookies file not found"):
        download(read_sources(csv), tmp_path / "root3", DownloadConfig(cookies_file=str(tmp_path / "nope.txt")))


def test_excel_utf8_bom_csv_is_read_and_latin1_is_named(tmp_path):
    """Excel's 'CSV UTF-8' starts with a byte-order mark: it was refused as 'artist ... required'."""
    excel = tmp_path / "excel.csv"
    excel.write_bytes("\ufeffartist,source,limit\nYOASOBI,ytsearch2:夜に駆ける,2\n".encode("utf-8"))
    [src] = read_sources(excel)
    assert (src.artist, src.source, src.limit) == ("YOASOBI", "ytsearch2:夜に駆ける", 2)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("artist,source\nBeyoncé,ytsearch1:x\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.csv: not UTF-8.*CSV UTF-8"):
        read_sources(latin)


@pytest.mark.parametrize("text", ["", "artist,source,limit\n", "# only a comment\n"])
def test_a_sources_file_with_nothing_to_do_says_so(tmp_path, text):
    """It used to exit 0 with '0 new tracks'."""
    (tmp_path / "s.csv").write_text(text)
    with pytest.raises(ValueError, match="no sources listed"):
        read_sources(tmp_path / "s.csv")


def test_limits_have_one_meaning_and_duplicates_are_read_once(tmp_path):
    """limit -1 used to drop a folder's last file, and 0 meant 'no limit' online but 'nothing' locally."""
    for bad in ("-1", "0"):
        (tmp_path / "s.csv").write_text(f"artist,source,limit\nMe,album,{bad}\n")
        with pytest.raises(ValueError, match="limit must be at least 1 \\(leave it empty for no limit\\)"):
            read_sources(tmp_path / "s.csv")
    (tmp_path / "s.csv").write_text("artist,source,limit\nMe,album,\nMe,album,\nYou,album,\n")
    assert [(s.artist, s.limit) for s in read_sources(tmp_path / "s.csv")] == [("Me", None), ("You", None)]


def test_a_non_audio_local_file_is_refused_before_anything_is_copied(tmp_path):
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0")
    (tmp_path / "s.csv").write_text(f"artist,source\nMe,{secret.as_uri()}\n")
    result = download(read_sources(tmp_path / "s.csv"), tmp_path / "root")
    assert "not an audio file" in result.problems.summary()
    assert not [p for p in (tmp_path / "root").rglob("*") if p.is_file() and "passwd" in p.name]  # never copied


def test_float_audio_with_nan_samples_is_refused_by_name_not_turned_into_clicks(tmp_path):
    import numpy as np
    import soundfile as sf

    x = (np.sin(np.arange(44100 * 3) / 20) * 0.5).astype(np.float32)
    x[1000:1100] = np.nan
    (tmp_path / "album").mkdir()
    sf.write(tmp_path / "album" / "broken.wav", x, 44100, subtype="FLOAT")
    sf.write(tmp_path / "album" / "good.wav", np.nan_to_num(x), 44100, subtype="FLOAT")
    (tmp_path / "s.csv").write_text("artist,source\nMe,album\n")
    result = download(read_sources(tmp_path / "s.csv"), tmp_path / "root")
    assert [p.name.startswith("good") for p in result.downloaded] == [True]
    assert "broken.wav" in result.problems.summary() and "NaN or infinite" in result.problems.summary()


def test_a_truncated_file_is_kept_and_reported_with_what_was_kept(tmp_path):
    full = ffmpeg_tone(tmp_path / "src" / "whole.flac", 20, 440, codec=["-c:a", "flac"])
    album = tmp_path / "album"
    album.mkdir()
    (album / "cut.flac").write_bytes(full.read_bytes()[: full.stat().st_size // 4])  # a download cut short
    shutil.copy(full, album / "whole.flac")
    (tmp_path / "s.csv").write_text("artist,source\nMe,album\n")
    result = download(read_sources(tmp_path / "s.csv"), tmp_path / "root")
    assert len(result.downloaded) == 2  # both kept
    summary = result.problems.summary()
    assert "cut.flac" in summary and "truncated or damaged: kept the first" in summary and "20.0 s" in summary
    assert "whole.flac" not in summary


def test_a_full_disk_fails_the_stage_leaves_no_orphan_and_a_rerun_finishes(tmp_path, monkeypatch):
    import errno

    import jpop_helpers.download as D

    for i in range(3):
        ffmpeg_tone(tmp_path / "album" / f"t{i}.mp3", 2, 300 + 100 * i, codec=["-c:a", "libmp3lame"])
    (tmp_path / "s.csv").write_text("artist,source\nMe,album\n")
    real_write, calls = D.write_json, {"n": 0}

    def disk_fills_up(path, obj):
        calls["n"] += 1
        if calls["n"] >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, obj)

    monkeypatch.setattr(D, "write_json", disk_fills_up)
    with pytest.raises(OSError, match=r"failure\(s\) of the machine.*No space left on device.*1 track\(s\) finished"):
        download(read_sources(tmp_path / "s.csv"), tmp_path / "root")
    raw = tmp_path / "root" / "raw"
    assert {p.stem for p in raw.rglob("*.wav")} == {p.name[: -len(".info.json")] for p in raw.rglob("*.info.json")}
    monkeypatch.setattr(D, "write_json", real_write)
    again = download(read_sources(tmp_path / "s.csv"), tmp_path / "root")
    assert (len(again.downloaded), again.skipped) == (2, 1) and len(list(raw.rglob("*.wav"))) == 3


def _serve(folder):
    """An HTTP server for `folder` on a free local port (a stand-in for an online source)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _song_ids(root):
    from jpop_helpers.layout import DataLayout
    from jpop_helpers.prepare import find_songs

    return sorted(s.song_id for s in find_songs(DataLayout(root)))


def test_the_same_local_file_from_two_folders_is_one_song_with_one_id(tmp_path):
    """A local file is named by its bytes, not its path: offered from two folders it is one song, and
    two roots fed from different folders give it the same id (the split hashes ids)."""
    from jpop_helpers.io import file_sha256

    tone = ffmpeg_tone(tmp_path / "one" / "tone.mp3", 2, 440)
    (tmp_path / "elsewhere" / "two").mkdir(parents=True)
    shutil.copy(tone, tmp_path / "elsewhere" / "two" / "tone.mp3")
    ffmpeg_tone(tmp_path / "one" / "other.mp3", 2, 550)
    (tmp_path / "both.csv").write_text("artist,source\nMe,one\nMe,elsewhere/two\n")
    result = download(read_sources(tmp_path / "both.csv"), tmp_path / "root")
    assert (len(result.downloaded), result.skipped) == (2, 1)
    assert len(list((tmp_path / "root" / "raw").glob("*/*.wav"))) == 2
    info = json.loads(next((tmp_path / "root" / "raw").glob("*/tone-*.info.json")).read_text())
    assert info["sha256"] == file_sha256(tone)

    (tmp_path / "two.csv").write_text("artist,source\nMe,elsewhere/two\n")
    download(read_sources(tmp_path / "two.csv"), tmp_path / "root2")
    [tone_id] = _song_ids(tmp_path / "root2")
    assert tone_id in _song_ids(tmp_path / "root")


def _legacy_track(raw, artist, url, title):
    """A track as the download stage wrote it before local files were named by content: the name's hash
    is that of 'extractor:id:url', and the info JSON has no sha256."""
    from jpop_helpers.io import safe_name, write_json

    src = url.removeprefix("file://")
    dest = raw / artist / f"{safe_name(title, f'Generic:{title}:{url}')}.wav"
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", src, str(dest)], check=True)
    write_json(dest.with_suffix(".info.json"), {"title": title, "artist": artist, "id": title, "extractor": "Generic",
                                                "url": url, "source": str(Path(src).parent), "duration": 2.0})


def test_a_root_written_before_content_names_keeps_its_ids_and_fetches_nothing_again(tmp_path):
    """Existing roots: their local tracks keep their names (song ids), online ones their archive and
    names; a re-run fetches nothing, nor does the same folder moved elsewhere; a new file is added."""
    from jpop_helpers.io import safe_name

    album = tmp_path / "album"
    for i, f in enumerate(("a", "b")):
        ffmpeg_tone(album / f"{f}.mp3", 2, 300 + 100 * i)
    root, raw = tmp_path / "root", tmp_path / "root" / "raw"
    for f in ("a", "b"):
        _legacy_track(raw, "me", (album / f"{f}.mp3").as_uri(), f)
    ffmpeg_tone(tmp_path / "www" / "track.mp3", 2, 440)
    server = _serve(tmp_path / "www")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/track.mp3"
        (tmp_path / "s.csv").write_text(f"artist,source\nMe,album\nWeb,{url}\n")
        first = download(read_sources(tmp_path / "s.csv"), root)  # the online track: named as always
        assert [p.name for p in first.downloaded] == [f"{safe_name('track', f'Generic:track:{url}')}.wav"]
        before = {p.relative_to(root): p.stat().st_mtime_ns for p in raw.rglob("*") if p.is_file()}
        ids = _song_ids(root)

        again = download(read_sources(tmp_path / "s.csv"), root)
        assert (again.downloaded, again.skipped) == ([], 3)
        shutil.copytree(album, tmp_path / "moved" / "album")
        (tmp_path / "moved.csv").write_text("artist,source\nMe,moved/album\n")
        moved = download(read_sources(tmp_path / "moved.csv"), root)
        assert (moved.downloaded, moved.skipped) == ([], 2)
        after = {p.relative_to(root): p.stat().st_mtime_ns for p in raw.rglob("*") if p.is_file()}
        assert after == before and _song_ids(root) == ids  # nothing renamed, rewritten or added

        ffmpeg_tone(album / "c.mp3", 2, 700)
        added = download(read_sources(tmp_path / "s.csv"), root)
        assert [p.name[:2] for p in added.downloaded] == ["c-"] and added.skipped == 3
    finally:
        server.shutdown()
