"""Auxiliary training targets of the fusion model: checks, scaling and the masked loss.

Auxiliary targets form a (N, A) float32 tensor whose columns follow FusionConfig.auxiliary_tasks.
A NaN marks a product without that target. Such a product counts in no auxiliary loss for that
column, and a minibatch without any labelled product for a column adds 0 for it.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.nn import functional as F

from fusion.labels import LabelScaling
from fusion.model import Task

logger = logging.getLogger(__name__)


def check_auxiliary_targets(tasks: tuple[tuple[str, Task], ...], targets: torch.Tensor, split: str) -> None:
    """Raise ValueError unless `targets` has one column per task and every binary value is 0, 1 or NaN."""
    if targets.ndim != 2 or targets.shape[1] != len(tasks):
        raise ValueError(
            f"The {split} auxiliary targets have shape {tuple(targets.shape)}, but FusionConfig.auxiliary_tasks "
            f"names {len(tasks)} task(s), so (N, {len(tasks)}) was expected."
        )
    for column, (name, task) in enumerate(tasks):
        values = targets[:, column]
        labelled = values[torch.isfinite(values)]
        if task == "binary":
            invalid = torch.unique(labelled[(labelled != 0) & (labelled != 1)])
            if invalid.numel():
                raise ValueError(
                    f"The binary auxiliary task {name!r} has {split} targets other than 0, 1 or NaN: "
                    f"{invalid[:10].tolist()}."
                )


def fit_auxiliary_scalings(
    tasks: tuple[tuple[str, Task], ...], targets: torch.Tensor  # (N, A) training rows, NaN where missing
) -> dict[str, LabelScaling]:
    """Fit each task's scaling on its labelled training rows: standardisation for regression, none for binary."""
    scalings: dict[str, LabelScaling] = {}
    for column, (name, task) in enumerate(tasks):
        values = targets[:, column].double().numpy()
        labelled = values[np.isfinite(values)]
        if task == "binary":
            scalings[name] = LabelScaling(task="binary")
        elif labelled.size == 0:
            # Every row is masked, so the task adds nothing to the loss whatever the scaling.
            logger.warning("Auxiliary task %r has no labelled training row, so it cannot be learned", name)
            scalings[name] = LabelScaling(task="regression")
        else:
            scalings[name] = LabelScaling.fit("regression", labelled)
    return scalings


def scale_auxiliary_targets(scalings: dict[str, LabelScaling], targets: torch.Tensor) -> torch.Tensor:
    """Return (N, A) float32 model targets: each column through its task's scaling, NaN kept as NaN."""
    columns = [
        torch.from_numpy(scaling.to_model_targets(targets[:, column].double().numpy()))
        for column, scaling in enumerate(scalings.values())
    ]
    return torch.stack(columns, dim=1)  # (N, A)


def masked_auxiliary_loss(
    tasks: tuple[tuple[str, Task], ...],
    outputs: torch.Tensor,  # (b, A) standardised targets or logits
    targets: torch.Tensor,  # (b, A) model targets, NaN where missing
    weights: torch.Tensor,  # (b,) sample weights
) -> torch.Tensor:
    """Return the mean over tasks of each task's weighted loss on the rows where its target is finite.

    A task without a labelled row in the minibatch contributes 0 to the mean.
    """
    losses = []
    for column, (_, task) in enumerate(tasks):
        labelled = torch.isfinite(targets[:, column])  # (b,)
        # NaN targets are replaced before the loss, because NaN times a zero weight is still NaN
        # and would reach the gradient.
        filled = torch.where(labelled, targets[:, column], torch.zeros_like(targets[:, column]))  # (b,)
        if task == "binary":
            per_row = F.binary_cross_entropy_with_logits(outputs[:, column], filled, reduction="none")  # (b,)
        else:
            per_row = F.mse_loss(outputs[:, column], filled, reduction="none")  # (b,)
        row_weights = weights * labelled  # (b,)
        losses.append((per_row * row_weights).sum() / row_weights.sum().clamp_min(1e-12))
    return torch.stack(losses).mean()
