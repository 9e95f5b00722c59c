"""The live training curves: one display updated in place, the cell's other outputs left alone."""
import IPython
import IPython.display

from jpop_helpers.plots import live_curves


def test_live_curves_update_one_display_and_never_clear_the_output(monkeypatch):
    shown, updates = [], []

    class Handle:
        def update(self, obj):
            updates.append(obj)

    def display(obj, display_id=None):
        shown.append(obj)
        assert display_id is True  # a handle to update, not a new output each time
        return Handle()

    def clear_output(*args, **kwargs):
        raise AssertionError("clear_output would also erase the training progress bar")

    import matplotlib.pyplot as plt

    plt.close(plt.figure())  # pyplot asks IPython for its shell once, at its first figure: before the stand-in
    monkeypatch.setattr(IPython, "get_ipython", lambda: object())  # as in a notebook kernel
    monkeypatch.setattr(IPython.display, "display", display)
    monkeypatch.setattr(IPython.display, "clear_output", clear_output)
    show = live_curves("run")
    rows = [{"step": 0, "valid/ce": 6.0}]
    for step in (3, 6, 9):
        rows += [{"step": step, "train/ce": 6.0 - step / 10}, {"step": step, "valid/ce": 5.9 - step / 10}]
        show(rows)
    assert len(shown) == 1 and len(updates) == 2
    for image in shown + updates:
        assert image.format == "png" and image.data.startswith(b"\x89PNG")


def test_live_curves_outside_a_notebook_show_nothing(monkeypatch, capsys):
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    live_curves()([{"step": 1, "train/ce": 1.0}])
    assert capsys.readouterr().out == ""
