"""The command line's parser (``multitalent.cli``): global flags, and every subcommand built from its
configuration dataclass (``multitalent.config``): defaults, choices, presets.

How the commands refuse bad inputs (exit code 2, one line naming the file) is in ``tests/test_reliability.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import typing

import pytest

from multitalent.cli import main
from multitalent.errors import UserInputError


def test_global_flags_are_accepted_after_the_subcommand():
    from multitalent.cli import build_parser

    parser = build_parser()
    for argv in (["-q", "predict", "-m", "r", "-i", "x", "-o", "o"],
                 ["predict", "-q", "-m", "r", "-i", "x", "-o", "o"]):
        args = parser.parse_args(argv)
        assert args.quiet is True and args.verbose is False
    args = parser.parse_args(["train", "pre", "-o", "run", "-v"])
    assert args.verbose is True and args.quiet is False
    assert parser.parse_args(["validate", "run"]).quiet is False


# --- every subcommand from a dataclass ------------------------------------------------------------------
def _configs() -> dict[str, type]:
    from multitalent.demo import DemoConfig
    from multitalent.evaluation.config import EvaluateConfig
    from multitalent.inference.config import PredictConfig
    from multitalent.phantoms.config import PhantomsConfig
    from multitalent.preprocessing.config import PreprocessConfig
    from multitalent.training.config import ExtendConfig, FinetuneConfig, TrainConfig
    from multitalent.training.validation import ValidateConfig

    return {"phantoms": PhantomsConfig, "preprocess": PreprocessConfig, "train": TrainConfig,
            "predict": PredictConfig, "evaluate": EvaluateConfig, "finetune": FinetuneConfig,
            "extend": ExtendConfig, "validate": ValidateConfig, "demo": DemoConfig}


# subcommand -> (its arguments without options, the function it calls)
COMMANDS = {
    "phantoms": (["out"], "multitalent.phantoms.generate_collection"),
    "preprocess": (["m.json", "-o", "pre"], "multitalent.preprocessing.pipeline.run_preprocessing"),
    "train": (["pre", "-o", "run"], "multitalent.training.loop.train"),
    "predict": (["-m", "run", "-i", "x", "-o", "pred"], "multitalent.inference.predict.predict"),
    "evaluate": (["pred", "gt", "--heads", "h.json", "-o", "ev"], "multitalent.evaluation.evaluate"),
    "finetune": (["-m", "run", "pre", "-o", "run2"], "multitalent.finetune.finetune"),
    "extend": (["-m", "run", "new.json", "-o", "run2"], "multitalent.extend.extend"),
    "validate": (["run"], "multitalent.training.validation.final_validation"),
    "demo": (["-o", "d"], "multitalent.demo.run_demo"),
}


def _subparser(command: str) -> argparse.ArgumentParser:
    from multitalent.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_subcommand_calls_its_function_with_its_dataclass_defaults(command: str, monkeypatch, capsys):
    """``multitalent COMMAND ...`` without options hands the function exactly the configuration dataclass's
    defaults (``quiet`` aside, which -q sets)."""
    from multitalent.registry import HeadRegistry

    cls = _configs()[command]
    argv, target = COMMANDS[command]
    seen = []

    def fake(*args, **kwargs):
        seen.extend(a for a in [*args, *kwargs.values()] if isinstance(a, cls))
        return []

    module, name = target.rsplit(".", 1)
    monkeypatch.setattr(importlib.import_module(module), name, fake)
    monkeypatch.setattr(HeadRegistry, "load", classmethod(lambda c, path: None))
    monkeypatch.setattr("multitalent.evaluation.format_dataset_table", lambda summary: "")
    assert main(["-q", command, *argv]) == 0
    expected = cls(quiet=True) if "quiet" in {f.name for f in dataclasses.fields(cls)} else cls()
    assert seen == [expected]
    capsys.readouterr()


@pytest.mark.parametrize("command", ["phantoms", "preprocess", "evaluate", "validate", "demo"])
def test_function_defaults_come_from_the_dataclass(command: str):
    """The function behind the command repeats none of its configuration's defaults: it takes the
    configuration (or its fields as keyword options) and nothing else of it."""
    module, name = COMMANDS[command][1].rsplit(".", 1)
    fn = getattr(importlib.import_module(module), name)
    params = inspect.signature(fn).parameters
    fields = {f.name for f in dataclasses.fields(_configs()[command])}
    assert not fields & set(params), f"{name} repeats {sorted(fields & set(params))}"
    assert params["config"].default is None
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def test_preprocess_preset_resolves_the_unset_options():
    from multitalent.preprocessing.config import PreprocessConfig
    from multitalent.preprocessing.plans import PAPER_PATCH, PAPER_SPACING, SMALL_SPACING

    paper = PreprocessConfig().resolved()
    assert (paper.spacing, paper.patch_size, paper.batch_size) == (PAPER_SPACING, PAPER_PATCH, 4)
    small = PreprocessConfig(preset="small", patch_size=[16, 32, 32]).resolved()
    assert (small.spacing, small.patch_size, small.batch_size) == (SMALL_SPACING, (16, 32, 32), 2)
    with pytest.raises(UserInputError, match="unknown preset 'huge'"):
        PreprocessConfig(preset="huge").resolved()


def test_arch_choices_are_the_model_registry():
    from multitalent.models import list_models

    arch = next(a for a in _subparser("train")._actions if a.dest == "arch")
    assert arch.choices == list_models()


LITERAL_FIELDS = [("train", "objective"), ("train", "amp"), ("train", "channels_last"), ("train", "sampling"),
                  ("predict", "checkpoint"), ("preprocess", "preset"), ("phantoms", "scale"),
                  ("validate", "checkpoint")]


@pytest.mark.parametrize(("command", "field"), LITERAL_FIELDS)
def test_literal_fields_give_argparse_choices(command: str, field: str, capsys):
    hint = typing.get_type_hints(_configs()[command])[field]
    assert typing.get_origin(hint) is typing.Literal
    action = next(a for a in _subparser(command)._actions if a.dest == field)
    assert action.choices == list(typing.get_args(hint))
    with pytest.raises(SystemExit) as e:
        _subparser(command).parse_args([*COMMANDS[command][0], action.option_strings[0], "no_such_value"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_add_dataclass_arguments_choices_from_literal_or_explicit():
    from multitalent.config import add_dataclass_arguments, option

    @dataclasses.dataclass
    class Demo:
        mode: typing.Literal["a", "b"] = option("a", "a literal")
        picked: str = option("x", "explicit choices", choices=["x", "y"])
        modes: list[typing.Literal["p", "q"]] = option([], "a list of literals", nargs="+")
        size: int | None = option(None, "no default shown")

    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Demo)
    actions = {a.dest: a for a in parser._actions}
    assert actions["mode"].choices == ["a", "b"] and actions["picked"].choices == ["x", "y"]
    assert actions["modes"].choices == ["p", "q"] and actions["size"].type is int
    assert actions["size"].help == "no default shown" and actions["mode"].help == "a literal (default: a)"
    assert vars(parser.parse_args(["--mode", "b", "--modes", "p", "q"])) == {"mode": "b", "modes": ["p", "q"]}
