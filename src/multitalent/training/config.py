"""Training configuration: every field is a ``multitalent train`` flag and is saved in ``config.json``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from multitalent.architectures import UNSET_VALUES, architecture_options, list_architectures
from multitalent.config import option
from multitalent.data.sampling import SamplingMode


@dataclass
class TrainConfig:
    arch: str = option("plain_unet", "backbone architecture", choices=list_architectures())
    objective: Literal["multitalent", "merged_softmax"] = option(
        "multitalent", "multitalent: one sigmoid head per (dataset, class) with the masked loss; merged_softmax: "
        "the baseline with one softmax over the union of classes")
    epochs: int = option(1000, "number of epochs (the paper trains MultiTalent for 2000)")
    iterations_per_epoch: int = option(250, "training iterations per epoch")
    val_iterations: int = option(50, "validation batches per epoch (fixed, no augmentation)")
    batch_size: int = option(0, "global batch size; 0 takes plans.json's (paper: 4)")
    lr: float = option(1e-2, "initial learning rate (SGD, poly decay)")
    momentum: float = option(0.99, "SGD Nesterov momentum")
    weight_decay: float = option(3e-5, "weight decay")
    poly_exponent: float = option(0.9, "exponent of the poly learning-rate decay")
    grad_clip: float = option(12.0, "gradient-norm clipping threshold")
    fold: str = option("0", "cross-validation fold 0-4 held out for validation, or 'all' (validate on training cases)")
    datasets: list[str] = option([], "train only on these dataset ids (e.g. D001 D003); default all", nargs="+")
    sampling: SamplingMode = option("inv_sqrt", "case sampling: 1/sqrt(n) per dataset (paper), uniform or "
                                    "dataset_balanced")
    fg_fraction: float = option(1 / 3, "fraction of patches centred on a random annotated head's foreground")
    mirror_axes: list[int] = option([0, 1], "axes (z=0, y=1, x=2) mirrored in augmentation; x is off by default "
                                    "because left/right heads would swap", nargs="*")
    augment: bool = option(True, "nnU-Net data augmentation")
    deep_supervision: bool = option(True, "deep supervision (CNN backbones)")
    head_prior: float = option(0.01, "initial foreground probability of every sigmoid head (output biases start at "
                               "logit(p), which speeds up early training a lot; 0: nnU-Net's zero bias)")
    bce_weight: float = option(1.0, "weight of each head's BCE against its batch Dice in the MultiTalent loss "
                               "(weight x BCE - Dice, summed over heads; the paper: 1); an ablation's knob")
    exclusions: str = option("", "JSON file of exclusive heads: pairs of heads of different datasets whose "
                             "structures never overlap; each also learns background on the voxels another dataset "
                             "labels as a head it excludes (beyond the paper; off by default; README, "
                             "multitalent.exclusions)")
    base_features: int = option(32, "features of the first stage (32 in nnU-Net; smaller for CPU tests)")
    max_features: int = option(320, "cap on the features of any stage (nnU-Net's and the paper's 320; 0: no cap)")
    n_stages: int = option(0, "truncate the U-Net to this many stages (0: all from plans)")
    feature_size: int = option(48, "SwinUNETR feature size")
    device: str = option("cpu", "cpu, cuda or cuda:N")
    amp: Literal["auto", "bf16", "fp16", "off"] = option(
        "auto", "mixed precision: on CUDA auto (bf16 if supported else fp16), bf16, fp16 or off; on the CPU "
                "float32 unless bf16 (about 2.2x faster steps on a CPU with AMX)")
    channels_last: Literal["auto", "on", "off"] = option(
        "auto", "channels-last 3D memory format: auto (on for CPU, where it made training about 1.9x faster here; "
        "off for CUDA, where it was slower), on or off")
    compile: bool = option(False, "torch.compile the network (CUDA)")
    num_workers: int = option(-1, "background processes building batches, per training process; -1: automatic "
                              "(on CUDA the CPU cores available / training processes on this node - 1, at most 12; "
                              "on CPU 2); 0: in the main process")
    final_validation: bool = option(True, "at the end, predict the held-out fold's whole scans and evaluate "
                                    "them into RUN/validation/ (summary.json, summary.md)")
    seed: int = option(0, "random seed (weights, sampling, augmentation)")
    resume: bool = option(False, "continue from RUN/checkpoint_latest.pt")
    max_nonfinite: int = option(5, "stop after this many consecutive steps with a non-finite loss")
    quiet: bool = option(False, "no progress bars")

    def model_kwargs(self) -> dict:
        """The builder options of ``arch`` (:mod:`multitalent.architectures`) with this configuration's values;
        one at its "unset" value (``n_stages`` 0) is left to the builder."""
        kw = {}
        for name in architecture_options(self.arch):
            value = getattr(self, name)
            if name in UNSET_VALUES and value == UNSET_VALUES[name]:
                continue
            kw[name] = value
        return kw


@dataclass
class FinetuneConfig(TrainConfig):
    batch_size: int = option(0, "global batch size; 0 takes the paper's fine-tuning batch, 2")
    head_warmup_epochs: int = option(10, "phase 1: epochs training only the new heads (AdamW, lr rising linearly)")
    head_lr: float = option(5e-4, "phase 1: learning rate reached at the end of the head warm-up")
    full_warmup_epochs: int = option(50, "phase 2: epochs of whole-network SGD with lr rising linearly to --lr")
    from_scratch: bool = option(False, "ignore the pre-trained weights: one poly phase as long as the three phases "
                                "together (the comparison baseline)")


@dataclass
class ExtendConfig(FinetuneConfig):
    batch_size: int = option(0, "global batch size; 0 takes plans.json's (the base model's, paper: 4)")
    head_warmup_epochs: int = option(10, "phase 1: epochs training only the output convolutions (the new heads start "
                                     "at the head prior; AdamW, lr rising linearly)")
    base_preprocessed: str = option("", "the base model's preprocessed folder (default: the one its checkpoint "
                                    "records); its cases are linked, not copied")
    without_original_data: bool = option(False, "the original data is not available: train on the new datasets "
                                         "only and keep the old heads close to the base model's outputs on the new "
                                         "scans (distillation)")
    distill_weight: float = option(1.0, "weight of the distillation term (old heads vs the base model's "
                                   "probabilities) with --without-original-data")
    preprocess_workers: int = option(1, "processes preprocessing the new datasets")
