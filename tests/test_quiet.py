"""The dependencies' known, harmless messages are gone from a run's output; anything else from the
same loggers and warning categories still shows (jpop_helpers.quiet)."""
import subprocess
import sys

SCRIPT = r"""
import logging, warnings
logging.basicConfig(level=logging.WARNING)
import jpop_helpers
from jpop_helpers.model import load_musicgen
import xformers.ops  # what audiocraft imports: its extensions are built for another torch
model = load_musicgen("tiny", "cpu")  # EnCodec calls torch.nn.utils.weight_norm
import torch
torch.nn.utils.weight_norm(torch.nn.Linear(2, 2))  # the deprecated call itself, outside audiocraft too
logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
    "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure ...", "offline")
logging.getLogger("xformers").warning("xformers: another message")
logging.getLogger("bitsandbytes.backends.cpu.ops").warning("bitsandbytes: another message")
warnings.warn("another FutureWarning", FutureWarning)
print("done")
"""


def test_known_messages_are_silenced_and_others_still_show():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "done" in r.stdout, out[-2000:]
    for silenced in ("can't load C++/CUDA extensions", "weight_norm` is deprecated", "gemm_4bit_forward"):
        assert silenced not in out, out
    for kept in ("xformers: another message", "bitsandbytes: another message", "another FutureWarning"):
        assert kept in out, out


def test_installing_twice_adds_each_filter_once():
    import logging

    from jpop_helpers import quiet

    quiet.install()
    quiet.install()
    for name, prefix in quiet.LOG_MESSAGES:
        assert sum(getattr(f, "prefix", None) == prefix for f in logging.getLogger(name).filters) == 1
