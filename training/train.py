"""Training loop of the fusion model, with early stopping on the validation loss."""

from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fusion.batch import FusionBatch
from fusion.device import resolve_device
from fusion.labels import LabelScaling
from fusion.model import FusionConfig, FusionModel, Task
from training.auxiliary_tasks import (
    check_auxiliary_targets,
    fit_auxiliary_scalings,
    masked_auxiliary_loss,
    scale_auxiliary_targets,
)

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation settings of `train_fusion`."""

    epochs: int = 100  # maximum number of passes over the training split
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2  # AdamW decoupled weight decay, applied to Linear weights only
    patience: int = 10  # epochs without a validation-loss improvement before training stops
    min_delta: float = 0.0  # smallest decrease of the validation loss that counts as an improvement
    grad_clip: float | None = 1.0  # maximum gradient L2 norm; None disables clipping
    seed: int = 0
    device: str = "auto"  # "auto" (CUDA when available), "cpu" or "cuda[:N]"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be at least 1, got {getattr(self, name)}.")
        if self.learning_rate <= 0:
            raise ValueError(f"TrainConfig.learning_rate must be positive, got {self.learning_rate}.")
        if self.weight_decay < 0 or self.min_delta < 0:
            raise ValueError(
                f"TrainConfig.weight_decay and min_delta must not be negative, got {self.weight_decay} "
                f"and {self.min_delta}."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LabelledSplit:
    """Model inputs with their training targets, for one split."""

    features: FusionBatch
    targets: torch.Tensor  # (N,) float32: standardised labels for regression, 0 or 1 for binary
    weights: torch.Tensor | None = None  # (N,) float32 non-negative sample weights; None means all 1
    # (N, A) float32 auxiliary targets in label units, columns in FusionConfig.auxiliary_tasks order,
    # NaN where a product has no value. train_fusion standardises the regression columns itself.
    auxiliary_targets: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = len(self.features)
        if n == 0:
            raise ValueError("A training or validation split has no rows.")
        if tuple(self.targets.shape) != (n,):
            raise ValueError(f"Targets have shape {tuple(self.targets.shape)}, expected ({n},).")
        if not torch.isfinite(self.targets).all():
            raise ValueError("Targets contain NaN or infinite values. Drop those rows before training.")
        if self.weights is not None:
            if tuple(self.weights.shape) != (n,):
                raise ValueError(f"Sample weights have shape {tuple(self.weights.shape)}, expected ({n},).")
            if not torch.isfinite(self.weights).all() or (self.weights < 0).any():
                raise ValueError("Sample weights must be finite and non-negative.")
            if self.weights.sum() <= 0:
                raise ValueError("Sample weights sum to 0, so the loss is undefined.")
        if self.auxiliary_targets is not None:
            if self.auxiliary_targets.ndim != 2 or self.auxiliary_targets.shape[0] != n:
                raise ValueError(
                    f"Auxiliary targets have shape {tuple(self.auxiliary_targets.shape)}, expected ({n}, A)."
                )
            if torch.isinf(self.auxiliary_targets).any():
                raise ValueError("Auxiliary targets contain infinite values. Use NaN to mark a missing target.")

    def __len__(self) -> int:
        return len(self.features)


@dataclass
class TrainingHistory:
    """Per-epoch losses and the epoch whose weights `train_fusion` returned (0-based)."""

    train_loss: list[float] = field(default_factory=list)  # total training loss, auxiliary losses included
    validation_loss: list[float] = field(default_factory=list)
    # Mean masked auxiliary-task loss per epoch, before auxiliary_task_weight; empty without auxiliary tasks.
    auxiliary_task_loss: list[float] = field(default_factory=list)
    # Per auxiliary task, the scaling between its label units and the model's auxiliary output.
    auxiliary_scalings: dict[str, LabelScaling] = field(default_factory=dict)
    best_epoch: int = -1
    best_validation_loss: float = float("inf")
    stopped_early: bool = False
    seconds: float = 0.0

    @property
    def epochs_run(self) -> int:
        return len(self.train_loss)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "epochs_run": self.epochs_run}


def train_fusion(
    train: LabelledSplit,
    validation: LabelledSplit,
    model_config: FusionConfig,
    train_config: TrainConfig,
) -> tuple[FusionModel, TrainingHistory]:
    """Train a FusionModel and return it with the weights of its best validation epoch.

    The loss is the sample-weighted MSE on standardised labels for regression and the
    sample-weighted binary cross-entropy on logits for binary classification. With
    `model_config.auxiliary_loss_weight` above 0, the training loss adds that weight times the loss
    of the per-modality auxiliary heads. With `model_config.auxiliary_tasks`, it also adds
    `auxiliary_task_weight` times the mean masked loss of the auxiliary tasks (training.auxiliary_tasks),
    whose regression targets are standardised with the training rows' statistics. The validation
    loss and early stopping use the fused prediction only. The returned model is on the training
    device, in eval mode.
    """
    if model_config.task == "binary":
        _require_binary_targets(train, "training")
        _require_binary_targets(validation, "validation")
    _require_auxiliary_targets(train, model_config)
    device = resolve_device(train_config.device)

    # Seed every random source, so the same data and configs give the same model on CPU.
    # NOTE: on CUDA some backward kernels (embedding, index) use atomics and may differ run to run.
    _seed_everything(train_config.seed)
    shuffle_generator = torch.Generator().manual_seed(train_config.seed)

    model = FusionModel(model_config).to(device)
    optimizer = _build_optimizer(model, train_config)
    train_features = train.features.to(device)
    train_targets = train.targets.to(device)
    train_weights = _weights_or_ones(train).to(device)

    history = TrainingHistory()
    train_auxiliary: torch.Tensor | None = None  # (N, A) model targets, NaN where missing
    if train.auxiliary_targets is not None:
        history.auxiliary_scalings = fit_auxiliary_scalings(model_config.auxiliary_tasks, train.auxiliary_targets)
        train_auxiliary = scale_auxiliary_targets(history.auxiliary_scalings, train.auxiliary_targets).to(device)

    best_state = copy.deepcopy(model.state_dict())
    epochs_without_improvement = 0
    started = time.perf_counter()
    logger.info(
        "Training fusion model (%s) on %d products, validating on %d, device %s",
        model_config.task, len(train), len(validation), device,
    )

    # Epochs count from 0 here and in TrainingHistory.best_epoch, and from 1 in the log.
    for epoch in range(train_config.epochs):
        # 1. One pass over the training split in a fresh random order.
        model.train()
        order = torch.randperm(len(train), generator=shuffle_generator).to(device)
        loss_sum = 0.0
        auxiliary_sum = 0.0
        weight_sum = 0.0
        for start in range(0, len(train), train_config.batch_size):
            index = order[start : start + train_config.batch_size]
            batch_weights = train_weights[index]  # (b,)

            # 2. Forward pass and weighted loss of the minibatch, plus the auxiliary losses when enabled.
            outputs = train_features.select(index).run_outputs(model)
            batch_targets = train_targets[index]  # (b,)
            loss = _weighted_loss(model_config.task, outputs.prediction.squeeze(-1), batch_targets, batch_weights)
            if outputs.modality_predictions is not None:
                auxiliary = _auxiliary_loss(
                    model_config.task, outputs.modality_predictions, outputs.present, batch_targets, batch_weights
                )
                loss = loss + model_config.auxiliary_loss_weight * auxiliary
            if outputs.auxiliary is not None and train_auxiliary is not None:
                auxiliary_task_loss = masked_auxiliary_loss(
                    model_config.auxiliary_tasks, outputs.auxiliary, train_auxiliary[index], batch_weights
                )
                loss = loss + model_config.auxiliary_task_weight * auxiliary_task_loss
                auxiliary_sum += auxiliary_task_loss.item() * batch_weights.sum().item()

            # 3. Backward pass, gradient clipping and optimiser step.
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train_config.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
            optimizer.step()

            loss_sum += loss.item() * batch_weights.sum().item()
            weight_sum += batch_weights.sum().item()

        # 4. Validation loss in eval mode (no dropout, no modality dropout).
        validation_loss = evaluate_loss(model, validation, batch_size=train_config.batch_size)
        history.train_loss.append(loss_sum / weight_sum)
        history.validation_loss.append(validation_loss)
        if train_auxiliary is not None:
            history.auxiliary_task_loss.append(auxiliary_sum / weight_sum)
        logger.info(
            "epoch %d: train loss %.5f, validation loss %.5f", epoch + 1, history.train_loss[-1], validation_loss
        )

        # 5. Early stopping: keep a copy of the best weights, stop after `patience` epochs without improvement.
        if validation_loss < history.best_validation_loss - train_config.min_delta:
            history.best_validation_loss = validation_loss
            history.best_epoch = epoch
            best_state = copy.deepcopy(model.state_dict())
            epochs_without_improvement = 0
        else:
            epochs_without_improvement += 1
            if epochs_without_improvement >= train_config.patience:
                history.stopped_early = True
                logger.info(
                    "Stopping early after epoch %d: no improvement for %d epochs", epoch + 1, train_config.patience
                )
                break

    # 6. Restore the weights of the best validation epoch.
    model.load_state_dict(best_state)
    model.eval()
    history.seconds = time.perf_counter() - started
    logger.info(
        "Training finished after %d epochs in %.1f s, best epoch %d with validation loss %.5f",
        history.epochs_run, history.seconds, history.best_epoch + 1, history.best_validation_loss,
    )
    return model, history


@torch.no_grad()
def evaluate_loss(model: FusionModel, split: LabelledSplit, *, batch_size: int = 1024) -> float:
    """Compute the model's weighted loss on a split in eval mode, then restore the model's previous mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    weights = _weights_or_ones(split)

    loss_sum = 0.0
    for start in range(0, len(split), batch_size):
        index = torch.arange(start, min(start + batch_size, len(split)))
        outputs = split.features.select(index).to(device).run(model)  # (b,)
        batch_weights = weights[index].to(device)
        loss = _weighted_loss(model.config.task, outputs, split.targets[index].to(device), batch_weights)
        loss_sum += loss.item() * batch_weights.sum().item()

    model.train(was_training)
    return loss_sum / weights.sum().item()


def _weighted_loss(task: Task, outputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Return the weighted mean loss of a minibatch, or 0 when its weights sum to 0."""
    if task == "binary":
        per_row = F.binary_cross_entropy_with_logits(outputs, targets, reduction="none")  # (b,)
    else:
        per_row = F.mse_loss(outputs, targets, reduction="none")  # (b,)
    return (per_row * weights).sum() / weights.sum().clamp_min(1e-12)


def _auxiliary_loss(
    task: Task,
    predictions: torch.Tensor,  # (b, 3) per-modality outputs
    present: torch.Tensor,  # (b, 3) bool, after modality dropout
    targets: torch.Tensor,  # (b,)
    weights: torch.Tensor,  # (b,)
) -> torch.Tensor:
    """Return the weighted mean loss of the per-modality predictions over the modalities present.

    A modality that is missing (or dropped by modality dropout) has no input to predict from, so its
    rows get weight 0.
    """
    expanded_targets = targets.unsqueeze(1).expand_as(predictions)  # (b, 3)
    expanded_weights = weights.unsqueeze(1) * present.float()  # (b, 3)
    return _weighted_loss(task, predictions.flatten(), expanded_targets.flatten(), expanded_weights.flatten())


def _build_optimizer(model: FusionModel, config: TrainConfig) -> torch.optim.AdamW:
    """Build AdamW with weight decay on Linear weights only.

    Biases, LayerNorm parameters, embeddings and the missing vectors are not decayed, because decay
    would pull offsets and the learned stand-in vectors toward 0 without limiting the model's capacity.
    """
    decayed = {id(module.weight) for module in model.modules() if isinstance(module, nn.Linear)}
    groups = [
        {"params": [p for p in model.parameters() if id(p) in decayed], "weight_decay": config.weight_decay},
        {"params": [p for p in model.parameters() if id(p) not in decayed], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.learning_rate)


def _weights_or_ones(split: LabelledSplit) -> torch.Tensor:
    if split.weights is None:
        return torch.ones(len(split), dtype=torch.float32)
    return split.weights.float()


def _require_auxiliary_targets(train: LabelledSplit, config: FusionConfig) -> None:
    """Raise ValueError unless the training split has auxiliary targets exactly when the config has tasks."""
    if train.auxiliary_targets is None:
        if config.auxiliary_tasks:
            names = [name for name, _ in config.auxiliary_tasks]
            raise ValueError(
                f"FusionConfig.auxiliary_tasks names {names}, but the training split has no auxiliary_targets."
            )
        return
    if not config.auxiliary_tasks:
        raise ValueError(
            "The training split has auxiliary_targets, but FusionConfig.auxiliary_tasks is empty. "
            "Name the tasks in the config or leave the targets out."
        )
    check_auxiliary_targets(config.auxiliary_tasks, train.auxiliary_targets, "training")


def _require_binary_targets(split: LabelledSplit, name: str) -> None:
    invalid = torch.unique(split.targets[(split.targets != 0) & (split.targets != 1)])
    if invalid.numel():
        raise ValueError(f"Binary {name} targets must be 0 or 1, got the values {invalid[:10].tolist()}.")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
