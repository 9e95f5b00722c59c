"""The offline demo (the README's main command) runs every stage and tells a true story: the base knows
its own family, fine-tuning (full and LoRA) lowers the held-out genre's CE, and it costs the base
something on its own family. Directions with margins, never exact values: the margins are below what
five runs of the demo measured (README, "The offline demo"), whose numbers move with the thread
count and the seed (training a tiny LM from scratch is chaotic), but whose directions did not.
The split no longer moves between sessions: song ids come from the rendered files' bytes (not the
folder they were rendered to) and the split is stratified by artist, so on one machine every session
draws the same songs (at --seconds 20: one song of each genre artist in test)."""
import pytest

pytestmark = pytest.mark.slow


def test_the_readme_demo_command_runs_every_stage(demo_story):
    root, printed, summary, _ = demo_story
    for stage in ("[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"):
        assert stage in printed
    assert (root / "models" / "base" / "state_dict.bin").exists()  # the exported base
    for mode in ("full", "lora"):
        assert (root / "runs" / f"tiny-{mode}" / "curves.png").exists()
    report = (root / "eval" / "report.md").read_text()
    assert report.startswith("#") and "full" in report and "lora" in report
    assert {"base", "full", "lora"} <= {r["model"] for r in summary["ce"]}


def test_the_base_knows_its_own_family_better_than_the_genre(demo_story):
    """Measured: 5.49-5.63 nats on its family's held-out songs, 6.20-7.35 on the genre's."""
    ce = demo_story[3]
    assert ce["base_family"]["base"] < ce["genre"]["base"] - 0.3, ce


def test_full_fine_tuning_lowers_the_held_out_genre_ce_and_learns_more_than_lora(demo_story):
    """Held-out genre songs (never trained on): full fine-tuning beats the base by a margin (measured in
    nine runs: -0.30 to -1.09) and LoRA in the same steps (by 0.14 to 0.35). LoRA's own gain is not
    asserted: it ranged from -0.83 to +0.01 (one CI session, whose split drew hard songs). The spread
    was mostly which songs the test split drew, when the ids of the demo's songs hashed the path they
    were rendered to; the split is now the same in every session (full -1.23, LoRA -0.93 on it, on
    2 cores)."""
    g = demo_story[3]["genre"]
    assert g["full"] < g["base"] - 0.15, g
    assert g["full"] < g["lora"] - 0.05, g


def test_fine_tuning_on_the_genre_costs_the_base_on_its_own_family(demo_story):
    """The forgetting check: CE on the base family's held-out songs rises after fine-tuning on the genre
    (measured in five runs: full +0.14 to +0.30, LoRA +0.35 to +0.39; a sixth passed). That full fine-tuning forgets
    MORE than LoRA is not asserted: at this scale it forgot less in every run (README)."""
    b = demo_story[3]["base_family"]
    assert b["lora"] > b["base"] + 0.15, b
    assert b["full"] > b["base"] + 0.05, b


def test_the_story_is_measured_on_held_out_songs_of_each_family(demo_story):
    """No song the models trained on is in either test set, and each test set has several songs."""
    from jpop_helpers.manifest import split_clips

    root, _, _, ce = demo_story
    for data in (root, root / "base-family"):
        train = {c.song_id for c in split_clips(data, "train")}
        test = {c.song_id for c in split_clips(data, "test")}
        assert len(test) >= 2 and not train & test
    assert {r["split"] for r in ce["rows"]} == {"test", "other_genre"}
    assert all(r["tokens"] > 100 for r in ce["rows"])
