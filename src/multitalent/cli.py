"""The ``multitalent`` command: parses arguments, calls the API, prints. Errors a user can cause exit
with code 2 and a one-line message; no traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from multitalent import __version__
from multitalent.config import add_dataclass_arguments, from_namespace
from multitalent.errors import TrainingError, UserInputError

EXAMPLES = """examples:
  multitalent phantoms work/raw
  multitalent preprocess work/raw/collection.json -o work/pre --preset small
  multitalent train work/pre -o work/run --epochs 20 --iterations-per-epoch 50 --base-features 8
  multitalent validate work/run --checkpoint best
  multitalent predict -m work/run -i scan.nii.gz -o work/pred
  multitalent evaluate work/pred work/raw/Dataset001_Liver/labelsTs --heads work/run/heads.json -o work/eval
  multitalent extend -m work/run work/new/collection.json -o work/run_extended
  multitalent demo -o demo_output
"""


def _cmd_phantoms(a: argparse.Namespace) -> None:
    from multitalent.phantoms import generate_collection
    from multitalent.phantoms.config import PhantomsConfig

    manifest = generate_collection(a.out, from_namespace(PhantomsConfig, a), progress=not a.quiet)
    print(f"phantom collection written; manifest: {manifest}")


def _cmd_preprocess(a: argparse.Namespace) -> None:
    from multitalent.preprocessing.config import PreprocessConfig
    from multitalent.preprocessing.pipeline import run_preprocessing

    out = run_preprocessing(a.manifest, a.output, from_namespace(PreprocessConfig, a), progress=not a.quiet)
    print(f"preprocessed collection written to {out} (plans.json, heads.json, cases/)")


def _cmd_train(a: argparse.Namespace) -> None:
    from multitalent.training.config import TrainConfig
    from multitalent.training.loop import train

    cfg = from_namespace(TrainConfig, a, quiet=a.quiet)
    final = train(a.preprocessed, a.output, cfg)
    if os.environ.get("RANK", "0") == "0":
        print(f"training finished; checkpoint: {final}")


def _cmd_predict(a: argparse.Namespace) -> None:
    from multitalent.inference.config import PredictConfig
    from multitalent.inference.predict import predict

    cfg = from_namespace(PredictConfig, a, quiet=a.quiet)
    written = predict(a.model if len(a.model) > 1 else a.model[0], a.input, a.output, cfg)
    print(f"predicted {len(written)} case(s) into {a.output}")


def _cmd_evaluate(a: argparse.Namespace) -> None:
    from multitalent.evaluation import evaluate, format_dataset_table
    from multitalent.evaluation.config import EvaluateConfig
    from multitalent.registry import HeadRegistry

    registry = HeadRegistry.load(a.heads)
    summary = evaluate(Path(a.predictions), [Path(g) for g in a.ground_truth], registry, Path(a.output),
                       from_namespace(EvaluateConfig, a), progress=not a.quiet)
    print(format_dataset_table(summary))
    print(f"\nsummary written to {a.output}/summary.json")


def _cmd_finetune(a: argparse.Namespace) -> None:
    from multitalent.finetune import finetune
    from multitalent.training.config import FinetuneConfig

    cfg = from_namespace(FinetuneConfig, a, quiet=a.quiet)
    final = finetune(a.model, a.preprocessed, a.output, cfg)
    if os.environ.get("RANK", "0") == "0":
        print(f"fine-tuning finished; checkpoint: {final}")


def _cmd_extend(a: argparse.Namespace) -> None:
    from multitalent.extend import extend
    from multitalent.training.config import ExtendConfig

    cfg = from_namespace(ExtendConfig, a, quiet=a.quiet)
    final = extend(a.model, a.manifest, a.output, cfg, preprocessed=a.preprocessed_output)
    if os.environ.get("RANK", "0") == "0":
        print(f"extension finished; checkpoint: {final}")


def _cmd_validate(a: argparse.Namespace) -> None:
    from multitalent.evaluation import format_dataset_table
    from multitalent.training.validation import ValidateConfig, final_validation

    summary = final_validation(a.run, from_namespace(ValidateConfig, a), quiet=a.quiet)
    if summary is None:
        print(f"{a.run} was trained with --fold all: no held-out case to validate on")
        return
    print(format_dataset_table(summary))
    print(f"\nvalidation written to {Path(a.run) / 'validation'} (summary.json, summary.md)")


def _cmd_demo(a: argparse.Namespace) -> None:
    from multitalent.demo import DemoConfig, run_demo

    run_demo(Path(a.output), from_namespace(DemoConfig, a), quiet=a.quiet)


def _add_transfer_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``finetune`` and ``extend``: a trained model's network taken on to new datasets."""
    from multitalent.training.config import ExtendConfig, FinetuneConfig

    p = sub.add_parser("finetune", parents=[common],
                       help="fine-tune a trained network on a new collection (new heads)")
    p.add_argument("-m", "--model", required=True, help="run folder or checkpoint of the pre-trained network")
    p.add_argument("preprocessed", help="preprocessed target collection")
    p.add_argument("-o", "--output", required=True, help="run folder")
    add_dataclass_arguments(p, FinetuneConfig, skip=("quiet",))
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("extend", parents=[common],
                       help="add datasets to a trained model: its heads and weights kept, new heads trained on the "
                            "union (or, without the original data, with distillation)")
    p.add_argument("-m", "--model", required=True, help="run folder or checkpoint of the trained MultiTalent model")
    p.add_argument("manifest", help="manifest (collection.json or .yaml) of the datasets to add, raw nnU-Net format")
    p.add_argument("-o", "--output", required=True, help="run folder of the extended model")
    p.add_argument("--preprocessed-output", default=None,
                   help="where the union's preprocessed folder goes (default: OUTPUT/preprocessed)")
    add_dataclass_arguments(p, ExtendConfig, skip=("quiet", "from_scratch"))
    p.set_defaults(func=_cmd_extend)


def build_parser() -> argparse.ArgumentParser:
    # configuration modules only: building the parser must not import torch (fast --help and errors)
    from multitalent.demo import DemoConfig
    from multitalent.evaluation.config import EvaluateConfig
    from multitalent.inference.config import PredictConfig
    from multitalent.phantoms.config import PhantomsConfig
    from multitalent.preprocessing.config import PreprocessConfig
    from multitalent.training.config import TrainConfig
    from multitalent.training.validation import ValidateConfig

    parser = argparse.ArgumentParser(
        prog="multitalent", description="MultiTalent: one 3D network for many partially-labelled CT datasets.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"multitalent {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # -q / -v are accepted after the subcommand too (`multitalent predict -q ...`); SUPPRESS keeps the
    # top-level value when the subcommand does not repeat them
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")

    p = sub.add_parser("phantoms", parents=[common],
                       help="write the synthetic phantom collection (raw nnU-Net format)")
    p.add_argument("out", help="output folder")
    add_dataclass_arguments(p, PhantomsConfig)
    p.set_defaults(func=_cmd_phantoms)

    p = sub.add_parser("preprocess", parents=[common],
                       help="check, resample and write a collection for training")
    p.add_argument("manifest", help="collection manifest (collection.json or .yaml)")
    p.add_argument("-o", "--output", required=True, help="preprocessed folder to write")
    add_dataclass_arguments(p, PreprocessConfig)
    p.set_defaults(func=_cmd_preprocess)

    p = sub.add_parser("train", parents=[common], help="train one network on a preprocessed collection")
    p.add_argument("preprocessed", help="folder written by `multitalent preprocess`")
    p.add_argument("-o", "--output", required=True, help="run folder (checkpoints, log, plots)")
    add_dataclass_arguments(p, TrainConfig, skip=("quiet",))
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("predict", parents=[common], help="segment scans with every head in one pass")
    p.add_argument("-m", "--model", required=True, nargs="+",
                   help="run folder or checkpoint file; several (or a folder of run folders, like nnU-Net's "
                        "folds) predict as an ensemble that averages their logits")
    p.add_argument("-i", "--input", required=True, help="NIfTI file, folder of NIfTI files, or DICOM series folder")
    p.add_argument("-o", "--output", required=True, help="output folder")
    add_dataclass_arguments(p, PredictConfig, skip=("quiet",))
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("evaluate", parents=[common],
                       help="Dice and HD95 per head and case, summaries and plots")
    p.add_argument("predictions", help="folder written by `multitalent predict`")
    p.add_argument("ground_truth", nargs="+", help="label folders (e.g. DatasetNNN_Name/labelsTs) or D001=PATH")
    p.add_argument("--heads", required=True, help="heads.json of the model (RUN/heads.json)")
    p.add_argument("-o", "--output", required=True, help="folder for summary.json, summary.md and plots")
    add_dataclass_arguments(p, EvaluateConfig)
    p.set_defaults(func=_cmd_evaluate)

    _add_transfer_commands(sub, common)

    p = sub.add_parser("validate", parents=[common], help="predict and evaluate a run's held-out fold on whole scans "
                                        "(RUN/validation/; train does it at the end)")
    p.add_argument("run", help="run folder written by `multitalent train` or `finetune`")
    add_dataclass_arguments(p, ValidateConfig)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("demo", parents=[common],
                       help="phantoms -> preprocess -> train -> predict -> evaluate, end to end")
    p.add_argument("-o", "--output", default="demo_output", help="output folder (default: demo_output)")
    add_dataclass_arguments(p, DemoConfig)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="multitalent: %(levelname)s: %(message)s")
    import SimpleITK as sitk

    # ITK prints multi-line warnings straight to stderr (e.g. while probing a folder for DICOM series); the
    # checks here report problems in one line, so ITK's are shown only with --verbose
    itk_warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(bool(args.verbose))
    try:
        args.func(args)
    except UserInputError as e:
        print(f"multitalent: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("multitalent: interrupted", file=sys.stderr)
        return 130
    except TrainingError as e:  # a training that cannot go on (also a killed rank) is reported without a traceback
        print(f"multitalent: error: {e}", file=sys.stderr)
        return 1
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(itk_warnings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
