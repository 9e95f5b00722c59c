from jpop_helpers.captions import CaptionConfig, make_captions


def test_captions_are_varied_deterministic_and_mention_the_tags():
    args = ("clip_001", "j-pop", ["happy", "energetic"], ["piano", "synthesizer"], 128.4, "A minor")
    caps = make_captions(*args, CaptionConfig(n_variants=4, seed=0))
    assert len(caps) == 4 and len(set(caps)) == 4
    assert caps == make_captions(*args, CaptionConfig(n_variants=4, seed=0))
    assert caps != make_captions(*args, CaptionConfig(n_variants=4, seed=1))
    for c in caps:
        assert "j-pop" in c.lower() and "A minor" in c and "128" in c
        assert "piano" in c and "synthesizer" in c


def test_missing_tags_are_left_out_not_printed():
    for c in make_captions("x", None, [], [], None, None, CaptionConfig(n_variants=3)):
        assert "None" not in c and "bpm" not in c.lower() and c.startswith(("Pop", "A pop", "Mid-tempo"))


def test_instrumental_is_said_only_of_instrumentals():
    args = ("clip_002", "j-pop", ["happy"], ["piano"], 128.4, "A minor")
    plain = make_captions(*args, CaptionConfig(n_variants=4))
    inst = make_captions(*args, CaptionConfig(n_variants=4), instrumental=True)
    assert not any("instrumental" in c.lower() for c in plain)
    assert len(inst) == 4 and all("instrumental j-pop" in c.lower() for c in inst)
    assert all(c.startswith(("Instrumental", "An instrumental", "Happy instrumental", "Upbeat instrumental")) for c in inst)
