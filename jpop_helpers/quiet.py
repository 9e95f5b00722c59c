"""Silence the dependencies' known messages that no user can act on, each by its own text.

Never a blanket filter: a message is dropped only when it starts with one of the texts below, from
the logger or warning category that emits it, so a new or real problem of the same library still shows.
Installed when jpop_helpers is imported (before audiocraft, xformers or bitsandbytes are), standard
library only (jpop_helpers.install runs before anything else is installed).
"""
from __future__ import annotations

import logging
import warnings

# (logger name, start of the message): why it is harmless for this toolkit
LOG_MESSAGES = [
    # audiocraft imports xformers.ops but attends with torch's own kernels (its default backend), so a
    # wheel built for another torch (0.0.35 is built for 2.10+cu128) loses nothing we use.
    ("xformers", "WARNING[XFORMERS]: xFormers can't load C++/CUDA extensions"),
    # bitsandbytes tries to fetch a 4-bit CPU kernel from a hub on CPUs with AVX512-BF16; we use its
    # 8-bit AdamW only, never 4-bit layers.
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
]
# (category, regular expression of the message start): why it is harmless
WARNINGS = [
    # audiocraft's EnCodec (the MusicGen codec) calls the old weight_norm; it still works in torch 2.x.
    (FutureWarning, r"`torch\.nn\.utils\.weight_norm` is deprecated"),
]


class _DropStartingWith(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefix)


def install() -> None:
    """Add the filters (idempotent: a filter already on its logger is not added twice)."""
    for logger_name, prefix in LOG_MESSAGES:
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, _DropStartingWith) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropStartingWith(prefix))
    for category, pattern in WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)


def quiet_essentia():
    """essentia with its INFO/WARNING lines off, set before `essentia.standard` is first imported (that
    import prints "MusicExtractorSVM: no classifier models were configured by default")."""
    import essentia

    essentia.log.infoActive = False
    essentia.log.warningActive = False
    return essentia
