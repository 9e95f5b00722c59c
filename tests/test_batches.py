from jpop_helpers.batches import batch_indices, step_texts
from jpop_helpers.tokens import TokenItem


def test_batches_are_a_pure_function_of_the_step_and_cover_each_epoch():
    n, b = 10, 3
    epoch0 = sum((batch_indices(m, n, b, seed=1) for m in range(3)), [])
    assert len(set(epoch0)) == 9  # 3 full batches, last partial dropped
    assert batch_indices(5, n, b, 1) == batch_indices(5, n, b, 1)
    assert batch_indices(3, n, b, 1) != batch_indices(0, n, b, 1)  # a new permutation each epoch


def test_captions_are_varied_and_dropped_at_the_cfg_rate():
    items = [TokenItem(str(i), None, 0, [f"a{i}", f"b{i}", f"c{i}"]) for i in range(50)]
    texts = [t for m in range(40) for t in step_texts(items, m, seed=0, cfg_dropout=0.3)]
    dropped = sum(t is None for t in texts) / len(texts)
    assert 0.25 < dropped < 0.35  # 2000 draws: 0.3 +- 5 standard errors
    assert {t[0] for t in texts if t} == {"a", "b", "c"}  # every caption variant is used
    assert step_texts(items, 7, 0, 0.3) == step_texts(items, 7, 0, 0.3)  # a function of the step
