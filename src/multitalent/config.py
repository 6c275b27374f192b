"""Typed configuration dataclasses that become CLI flags (one field = one ``--flag``)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Literal, TypeVar

T = TypeVar("T")


def option(default: Any, help: str, choices: list | None = None, nargs: str | int | None = None,
           flag: str | None = None, metavar: str | tuple[str, ...] | None = None) -> Any:
    """A dataclass field carrying its CLI help (and optional choices / nargs / short flag / metavar).

    A field typed ``Literal[...]`` gets its choices from the type; ``choices`` given here win.
    """
    meta = {"help": help, "choices": choices, "nargs": nargs, "flag": flag, "metavar": metavar}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--field-name`` option per field of ``cls`` (defaults shown in --help, except None)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get("help"):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        names = [f"--{f.name.rstrip('_').replace('_', '-')}"] + ([f.metadata["flag"]] if f.metadata.get("flag") else [])
        hint = hints[f.name]
        help_text = f.metadata["help"]
        if default is not None:
            help_text += f" (default: {default:.4g})" if isinstance(default, float) else f" (default: {default})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _scalar_type(hint)
            if f.metadata.get("nargs") is not None:
                kwargs["nargs"] = f.metadata["nargs"]
            choices = f.metadata.get("choices") or _literal_choices(hint)
            if choices:
                kwargs["choices"] = list(choices)
            if f.metadata.get("metavar") is not None:
                kwargs["metavar"] = f.metadata["metavar"]
        parser.add_argument(*names, **kwargs)


def _literal_choices(hint: Any) -> list | None:
    """The values of a ``Literal[...]`` type (also inside ``list[...]`` or ``... | None``), else None."""
    if typing.get_origin(hint) is Literal:
        return list(typing.get_args(hint))
    for arg in typing.get_args(hint):
        if arg is not type(None) and (found := _literal_choices(arg)) is not None:
            return found
    return None


def _scalar_type(hint: Any) -> type:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return type(typing.get_args(hint)[0])
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (list, tuple):
        return _scalar_type(args[0]) if args else str
    if args:  # Optional[X] / X | None
        return _scalar_type(args[0])
    return hint if isinstance(hint, type) else str


def from_namespace(cls: type, ns: argparse.Namespace, **overrides: Any) -> Any:
    """Build ``cls`` from the parsed options that were given (others keep their defaults)."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in vars(ns).items() if k in names}
    given.update(overrides)
    return cls(**given)


def with_options(cls: type[T], config: T | None = None, **options: Any) -> T:
    """``config`` (the defaults of ``cls`` when None) with the fields named in ``options`` replaced: how a
    function taking a configuration also takes its fields as keyword arguments. An unknown name raises
    TypeError, as for any unexpected keyword argument."""
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cls)})  # type: ignore[arg-type]
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}; the options are "
                        f"{cls.__name__} fields")
    return dataclasses.replace(config if config is not None else cls(), **options)  # type: ignore[type-var]


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)
