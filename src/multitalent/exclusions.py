"""Exclusive heads: pairs of heads of different datasets whose structures never overlap.

MultiTalent's loss scores a head only on its own dataset's images, so a head learns "not here" only from the
anatomy its dataset shows. On anatomy its dataset rarely shows, a head can fire where the shared backbone has
learnt to pick out another dataset's structure (``docs/results_error_anatomy.md``: the thorax's heart head on
the liver of a scan that reaches the abdomen, the abdomen's pancreas head on the heart). Knowing that two
structures never overlap (a heart voxel is never liver) turns another dataset's annotation into negatives: on a
sample from dataset B, the voxels that B labels as a head that head h excludes are background for h, and h's loss
is computed on those voxels only (``multitalent train --exclusions FILE``; off by default, the paper's loss).

The file (JSON)::

    {"format": "multitalent-exclusions/1",
     "exclusive": {"D006_heart": ["D001_liver", "D005_liver", "D005_stomach"], ...}}

The relation is symmetric (listing a pair once is enough) and only between heads of different datasets (a
dataset's own labels exclude each other already). Overlapping structures must not be listed: a liver that
includes its tumour does not exclude the tumour, and an aorta that runs to the valve does not exclude a heart that
includes the aortic root. The phantom collection writes its own, from its anatomy (``exclusions.json``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from multitalent.errors import UserInputError
from multitalent.registry import HeadRegistry

FORMAT = "multitalent-exclusions/1"


def load_exclusions(path: str | os.PathLike, registry: HeadRegistry) -> dict[str, list[str]]:
    """The symmetric relation in ``path`` over the heads of ``registry``: head id -> sorted exclusive head ids.

    Heads the registry does not have are refused (a typo would silently train the paper's loss), as are pairs
    within one dataset (a head excluding itself among them). Check against the whole collection's registry: a
    ``--datasets`` subset then simply leaves out the pairs with a head it does not train
    (:func:`exclusion_rows`)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserInputError(f"{path}: exclusions file not found.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserInputError(f"{path}: not a readable JSON file ({e}).") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("exclusive"), dict):
        raise UserInputError(f"{path}: expected {{\"format\": \"{FORMAT}\", \"exclusive\": {{head: [heads]}}}}.")
    by_id = {h.id: h for h in registry.heads}
    relation: dict[str, set[str]] = {}
    for a, others in data["exclusive"].items():
        if not isinstance(others, list) or not all(isinstance(b, str) for b in others):
            raise UserInputError(f"{path}: 'exclusive'[{a!r}] must be a list of head ids.")
        for b in [a, *others]:
            if b not in by_id:
                raise UserInputError(f"{path}: unknown head {b!r}; the collection's heads are "
                                     f"{', '.join(sorted(by_id))}.")
        for b in others:
            if by_id[a].dataset == by_id[b].dataset:
                raise UserInputError(f"{path}: {a} and {b} are heads of one dataset, whose labels exclude each "
                                     "other already; list only heads of different datasets.")
            relation.setdefault(a, set()).add(b)
            relation.setdefault(b, set()).add(a)
    return {h: sorted(v) for h, v in sorted(relation.items())}


def exclusion_rows(registry: HeadRegistry, exclusions: dict[str, list[str]],
                   top: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For each dataset of ``registry``: the heads of other datasets that get negatives on its samples and, per
    such head, the label values of this dataset that are background for it (a [n, top] bool table, and the
    heads' indices). Datasets whose samples give no head negatives are left out."""
    rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for ds in registry.dataset_ids:
        own = {h.id: h for h in registry.heads_of(ds)}
        table, heads = [], []
        for h in registry.heads:
            if h.dataset == ds:
                continue
            values = sorted({v for other in exclusions.get(h.id, []) if other in own for v in own[other].labels})
            if values:
                row = torch.zeros(top, dtype=torch.bool)
                row[values] = True
                table.append(row)
                heads.append(registry.index(h.id))
        if heads:
            rows[ds] = (torch.stack(table), torch.tensor(heads, dtype=torch.long))
    return rows


__all__ = ["FORMAT", "load_exclusions", "exclusion_rows"]
