import numpy as np
import pytest

from conftest import click_track
from jpop_helpers.labeling import LabelConfig, Labeler, MissingModelError, dsp_labels, select_top


@pytest.mark.parametrize("bpm", [72, 96, 120, 128, 150])
def test_bpm_within_two_percent_on_click_tracks(bpm):
    labels = dsp_labels(click_track(bpm, 30, 32000), 32000)  # at MusicGen's rate, as prepare calls it
    assert abs(labels.bpm - bpm) / bpm < 0.02, labels.bpm


def test_key_of_a_rendered_piece(tmp_path):
    """Bach's chorale BWV 269 (G major), rendered with fluidsynth from music21's corpus."""
    from jpop_helpers.demo import DemoPiece, render_piece
    from jpop_helpers.io import load_audio

    piece = DemoPiece("t", "chorale", "bach/bwv269", 19, 80, 30, "ogg")
    audio = load_audio(render_piece(piece, tmp_path / "c.ogg"), 32000)
    assert dsp_labels(audio, 32000).key == "G major"


def test_key_of_a_minor_triad_progression():
    sr = 32000
    t = np.arange(int(2 * sr)) / sr
    chord = lambda *hz: sum(np.sin(2 * np.pi * f * t) for f in hz) / len(hz)
    # i - iv - V - i in A minor (A C E / D F A / E G# B / A C E), repeated
    prog = [chord(220, 261.63, 329.63), chord(293.66, 349.23, 440), chord(329.63, 415.3, 493.88), chord(220, 261.63, 329.63)]
    audio = np.concatenate(prog * 4).astype(np.float32) * 0.5
    assert dsp_labels(audio, sr).key == "A minor"


def test_missing_tagger_graph_names_the_file_and_the_way_out(tmp_path):
    with pytest.raises(MissingModelError) as e:
        Labeler(LabelConfig(models_dir=str(tmp_path), download_models=False))
    msg = str(e.value)
    assert "discogs-effnet-bs64-1.pb" in msg and str(tmp_path) in msg
    assert "essentia.upf.edu/models" in msg and "dsp_only" in msg


def test_dsp_only_labeler_needs_no_model_files(tmp_path):
    labeler = Labeler(LabelConfig(dsp_only=True, models_dir=str(tmp_path), download_models=False))
    labels = labeler(click_track(100, 12, 32000), 32000)
    assert labels.genres == [] and abs(labels.bpm - 100) < 2


def test_select_top_applies_k_and_threshold():
    names = ["j-pop", "synth-pop", "city pop", "ballad"]
    scores = np.array([0.6, 0.3, 0.05, 0.31])
    assert select_top(names, scores, 2, 0.1) == ["j-pop", "ballad"]
    assert select_top(names, scores, 5, 0.1) == ["j-pop", "ballad", "synth-pop"]
    assert select_top(names, scores, 5, 0.9) == []


def test_an_instrumental_loses_only_its_voice_tags():
    from jpop_helpers.labeling import ClipLabels, without_vocal_tags

    labels = ClipLabels(key="A minor", bpm=120.0, genres=["j-pop", "vocal"], moods=["happy"],
                        instruments=["voice", "piano", "drums"], scores={"instruments": {"voice": 0.4, "piano": 0.3}})
    out = without_vocal_tags(labels)
    assert out.genres == ["j-pop"] and out.instruments == ["piano", "drums"] and out.moods == ["happy"]
    assert out.key == "A minor" and out.scores == labels.scores and labels.instruments[0] == "voice"  # input untouched
