"""Typed configuration dataclasses that become CLI flags (one field = one ``--flag``)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any


def option(default: Any, help: str, choices: list | None = None, nargs: str | int | None = None,
           flag: str | None = None) -> Any:
    """A dataclass field carrying its CLI help (and optional choices / nargs / short flag)."""
    meta = {"help": help, "choices": choices, "nargs": nargs, "flag": flag}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--field-name`` option per field of ``cls`` (defaults shown in --help)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get("help"):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        names = [f"--{f.name.rstrip('_').replace('_', '-')}"] + ([f.metadata["flag"]] if f.metadata.get("flag") else [])
        hint = hints[f.name]
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                                  "help": f"{f.metadata['help']} (default: {default:.4g})" if isinstance(default, float)
                                  else f"{f.metadata['help']} (default: {default})"}
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            base = _scalar_type(hint)
            kwargs["type"] = base
            if f.metadata.get("nargs") is not None:
                kwargs["nargs"] = f.metadata["nargs"]
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(*names, **kwargs)


def _scalar_type(hint: Any) -> type:
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (list, tuple):
        return args[0] if args else str
    if args:  # Optional[X] / X | None
        return _scalar_type(args[0])
    return hint if isinstance(hint, type) else str


def from_namespace(cls: type, ns: argparse.Namespace, **overrides: Any) -> Any:
    """Build ``cls`` from the parsed options that were given (others keep their defaults)."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in vars(ns).items() if k in names}
    given.update(overrides)
    return cls(**given)


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)
