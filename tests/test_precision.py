import pytest
import torch

import jpop_helpers.precision as P


@pytest.mark.parametrize("capability,expected", [((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                                                 ((9, 0), torch.bfloat16), ((6, 1), torch.float16)])
def test_auto_uses_bf16_only_where_the_gpu_runs_it_natively(monkeypatch, capability, expected):
    """A T4 (7.5) answers is_bf16_supported() == True (emulation counts): it must still get fp16 + scaling."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert P.choose_precision("auto", "cuda") == expected
    assert P.choose_precision("auto", "cuda:0") == expected


def test_cpu_and_explicit_choices():
    assert P.choose_precision("auto", "cpu") == torch.float32
    assert P.choose_precision("fp16", "cpu") == torch.float16 and P.choose_precision("bf16", "cuda") == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, fp16, bf16, not 'half'"):
        P.choose_precision("half", "cpu")
