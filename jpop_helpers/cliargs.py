"""Command-line options derived from the stage configs (dataclasses), so the CLI, the notebooks and
the Python API share one definition of every setting, its default and its allowed values.

Each field becomes `--field-name` (nested configs: `--<prefix>-field-name`; a class attribute
`CLI_NAMES` renames a field's option where two configs share a field name), typed from its
annotation, with the comment after the field as its help text and `CHOICES` (a class attribute
mapping field -> allowed values) as argparse choices. bool fields become `--x / --no-x`.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing


def _field_comments(cls) -> dict[str, str]:
    """field name -> the comment written after it in the class body."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    return {m[1]: m[2].strip() for m in re.finditer(r"^\s+(\w+):[^#\n]*#\s*(.+)$", source, re.M)}


def _scalar(tp):
    """(the scalar type, is-a-list) of an annotation such as `int`, `float | None`, `list[str]`."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _scalar(args[0])
    if typing.get_origin(tp) is list:
        return typing.get_args(tp)[0], True
    return tp, False


def _option(cls, name: str, prefix: str) -> str:
    """The option's name without dashes, e.g. "lora_rank"; also its argparse dest."""
    return getattr(cls, "CLI_NAMES", {}).get(name, f"{prefix}{name}")


def add_config_args(parser, cls, prefix: str = "", skip: tuple[str, ...] = (), defaults=None) -> None:
    """Add one option per field of dataclass `cls` to `parser` (a parser or an argument group).

    Args:
        skip: field names left out (they are set another way).
        defaults: an instance whose values are shown and used as defaults (default: cls()).
    """
    defaults = defaults if defaults is not None else cls()
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    choices = getattr(cls, "CHOICES", {})
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        value = getattr(defaults, f.name)
        dest = _option(cls, f.name, prefix)
        flag = "--" + dest.replace("_", "-")
        if dataclasses.is_dataclass(hints[f.name]):
            add_config_args(parser, hints[f.name], prefix=f"{dest}_", defaults=value)
            continue
        tp, is_list = _scalar(hints[f.name])
        help_text = f"{comments.get(f.name, '')} (default: {value})".strip().replace("%", "%%")  # argparse formats help
        kw = dict(dest=dest, default=value, help=help_text)
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            parser.add_argument(flag, type=tp, nargs="+" if is_list else None, choices=choices.get(f.name), **kw)


def config_from_args(cls, args: argparse.Namespace, prefix: str = "", **override):
    """Build `cls` from options added by `add_config_args`; `override` wins over the options.
    The dataclass validates the values (e.g. TrainConfig refuses an unknown precision)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        dest = _option(cls, f.name, prefix)
        if f.name in override:
            values[f.name] = override[f.name]
        elif dataclasses.is_dataclass(hints[f.name]):
            values[f.name] = config_from_args(hints[f.name], args, prefix=f"{dest}_")
        elif hasattr(args, dest):
            values[f.name] = getattr(args, dest)
    return cls(**values)
