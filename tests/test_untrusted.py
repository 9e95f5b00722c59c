"""Nothing the toolkit loads can run code: a malicious pickle planted wherever it reads from stays inert.

(Checkpoints and the token cache have their own tests in test_checkpoint.py and test_tokens.py.)"""
import pickle
import shutil

import pytest
import torch


class Exploit:
    """Unpickling this creates a file: the proof that code ran."""

    target = None

    def __reduce__(self):
        return (open, (str(self.target), "w"))


@pytest.fixture
def exploit(tmp_path):
    Exploit.target = tmp_path / "PWNED"
    yield Exploit()
    assert not Exploit.target.exists(), "a planted pickle ran"


def _plant(path, payload):
    with open(path, "wb") as f:
        pickle.dump({"xp.cfg": "x", "best_state": payload}, f)


def test_a_model_folder_with_pickled_code_is_refused(tmp_path, exploit):
    """An export or the tiny model's folder: audiocraft's loader calls torch.load, which loads weights
    only by default since torch 2.6 (Colab has 2.11); our own loads pass weights_only=True."""
    from jpop_helpers.model import load_musicgen, resolve_model_name

    folder = tmp_path / "export"
    shutil.copytree(resolve_model_name("tiny"), folder)
    _plant(folder / "state_dict.bin", exploit)
    with pytest.raises(Exception):
        load_musicgen(str(folder), "cpu")
    _plant(folder / "compression_state_dict.bin", exploit)
    with pytest.raises(Exception):
        load_musicgen(str(folder), "cpu")


def test_a_planted_adapter_pickle_is_not_loaded(tmp_path, exploit):
    from jpop_helpers.lora import LoraConfig, add_lora, load_adapter, save_adapter
    from jpop_helpers.model import load_musicgen

    folder = save_adapter(add_lora(load_musicgen("tiny", "cpu").lm, LoraConfig(rank=2)), LoraConfig(rank=2),
                          tmp_path / "adapter")
    (folder / "adapter_model.safetensors").unlink()
    torch.save({"x": exploit}, folder / "adapter_model.bin")  # the pickle format peft also knows
    with pytest.raises(ValueError, match="adapter_model.safetensors: unreadable"):
        load_adapter(load_musicgen("tiny", "cpu").lm, folder)
    with open(folder / "adapter_model.safetensors", "wb") as f:  # a pickle under the safetensors name
        pickle.dump({"x": exploit}, f)
    with pytest.raises(ValueError, match="adapter_model.safetensors: unreadable"):
        load_adapter(load_musicgen("tiny", "cpu").lm, folder)


def test_a_run_folder_with_planted_pickles_loads_nothing_from_them(tmp_path, exploit, tiny_run):
    from jpop_helpers.runs import load_run_lm

    run = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns("eval"))
    for name in ("ckpt_99999999.pt", "model.bin", "checkpoint.pt"):  # names an older format or a user might use
        torch.save({"x": exploit}, run / "checkpoints" / name)
    newest = sorted((run / "checkpoints").glob("ckpt_*/"))[-1]
    with open(newest / "model.safetensors", "wb") as f:
        pickle.dump(exploit, f)
    with pytest.raises(FileNotFoundError, match="no readable checkpoint"):
        load_run_lm(run)  # the only real checkpoint was replaced by a pickle: refused, not unpickled
