"""Modules of the package that share their name with a public call (``multitalent.finetune``,
``multitalent.extend``): importing such a module replaces the package attribute of that name, so the module
itself answers ``mt.finetune(...)`` with the API function of its name (``multitalent.api``). Kept apart from
``api`` so that the modules behind the API do not import it."""

from __future__ import annotations

import importlib
import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        api = importlib.import_module("multitalent.api")  # at call time: api imports these modules lazily
        return getattr(api, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


def make_callable(module_name: str) -> None:
    """Let the module ``module_name`` be called as the API function of the same name."""
    sys.modules[module_name].__class__ = _CallableModule
