"""The fusion model with one of its heads as a model of the experiment harness.

Each fit encodes attributes and trains a FusionModel as the main job does (training/stages.py),
but on the rows of one training fold. A seeded random part of those rows is held out for early
stopping, and the model trains on the rest. Predictions are in label units, P(positive) for binary.
With `multitask`, the model also learns the spec's auxiliary labels as extra training targets.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from fusion.attributes import AttributeEncoder, is_missing_value
from fusion.batch import FusionBatch
from fusion.labels import LabelScaling
from fusion.model import FusionConfig, FusionHead, FusionModel, Task
from training.experiment_data import ExperimentData
from training.train import LabelledSplit, TrainConfig, train_fusion

logger = logging.getLogger(__name__)

VALIDATION_FRACTION = 0.15  # share of a training fold held out for early stopping
# NOTE: at most 60 epochs with patience 8, fewer than the main job's default of 100 and 10, so
# that 5 folds of 4 heads fit a CPU run. On the board games, training stopped early before 60.
DEFAULT_EPOCHS = 60
DEFAULT_PATIENCE = 8


class FusionHeadModel:
    """A FusionModel with the head `head`, fitted on one fold's training rows.

    With `multitask`, training adds the masked losses of the data's auxiliary labels, weighted by
    `auxiliary_task_weight` (FusionConfig). The predictions stay those of the main label.
    """

    def __init__(
        self,
        head: FusionHead,
        *,
        seed: int = 0,
        epochs: int = DEFAULT_EPOCHS,
        patience: int = DEFAULT_PATIENCE,
        validation_fraction: float = VALIDATION_FRACTION,
        device: str = "auto",
        multitask: bool = False,
        auxiliary_task_weight: float = 1.0,
    ) -> None:
        if not 0.0 < validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
        if not auxiliary_task_weight >= 0:
            raise ValueError(f"auxiliary_task_weight must not be negative, got {auxiliary_task_weight}")
        self.head = head
        self.multitask = multitask
        self.auxiliary_task_weight = auxiliary_task_weight
        self.seed = seed
        self.validation_fraction = validation_fraction
        self.train_config = TrainConfig(epochs=epochs, patience=patience, seed=seed, device=device)
        self.encoder: AttributeEncoder | None = None
        self.scaling: LabelScaling | None = None
        self.model: FusionModel | None = None

    def fit(self, data: ExperimentData) -> None:
        """Train on `data` minus a seeded validation part, keeping the best validation epoch."""
        spec = data.spec
        training_rows, validation_rows = self._split_rows(len(data))

        # Step 1: attribute statistics and vocabularies come from the rows trained on only.
        self.encoder = AttributeEncoder(
            numeric=list(spec.numeric_columns),
            categorical=list(spec.categorical_columns),
            log_scale=list(spec.log_scale_columns),
            tags=spec.tag_columns,
        ).fit(data.attributes.iloc[training_rows])
        batch = self._batch(data)

        # Step 2: targets, standardised with the training rows' statistics for regression.
        self.scaling = LabelScaling.fit(spec.task, data.labels[training_rows])
        targets = torch.from_numpy(self.scaling.to_model_targets(data.labels))  # (N,)

        # Step 3: auxiliary targets in label units. train_fusion standardises them on the training rows.
        auxiliary_tasks: tuple[tuple[str, Task], ...] = ()
        auxiliary_targets: torch.Tensor | None = None  # (N, A), NaN where missing
        if self.multitask:
            auxiliary_tasks, auxiliary_targets = _auxiliary_targets(data)

        def labelled(rows: np.ndarray) -> LabelledSplit:
            index = torch.from_numpy(rows)
            return LabelledSplit(
                features=batch.select(index),
                targets=targets[index],
                auxiliary_targets=None if auxiliary_targets is None else auxiliary_targets[index],
            )

        # Step 4: train with early stopping on the held-out part.
        model_config = FusionConfig(
            image_dim=int(data.image.shape[1]),
            text_dim=int(data.text.shape[1]),
            numeric_dim=self.encoder.numeric_dim,
            categorical_cardinalities=self.encoder.categorical_cardinalities,
            task=spec.task,
            head=self.head,
            auxiliary_tasks=auxiliary_tasks,
            auxiliary_task_weight=self.auxiliary_task_weight,
        )
        model, history = train_fusion(
            labelled(training_rows), labelled(validation_rows), model_config, self.train_config
        )
        self.model = model.to("cpu").eval()
        logger.info(
            "fusion %s head: best epoch %d of %d, validation loss %.4f",
            self.head, history.best_epoch + 1, history.epochs_run, history.best_validation_loss,
        )

    @torch.inference_mode()
    def predict(self, data: ExperimentData) -> np.ndarray:
        """Return (N,) predictions in label units: the label, or P(positive) for a binary task."""
        if self.model is None or self.scaling is None:
            raise RuntimeError("FusionHeadModel.predict needs a fitted model. Call fit first")
        outputs = self._batch(data).run(self.model)  # (N,) standardised labels or logits
        return self.scaling.to_label_units(outputs.double().numpy())

    def _split_rows(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Return sorted (training, validation) row positions, the validation part drawn with the seed."""
        validation_count = max(1, int(round(count * self.validation_fraction)))
        if validation_count >= count:
            raise ValueError(f"cannot hold out a validation part from {count} training rows")
        order = np.random.default_rng(self.seed).permutation(count)
        return np.sort(order[validation_count:]), np.sort(order[:validation_count])

    def _batch(self, data: ExperimentData) -> FusionBatch:
        """Encode `data` as model inputs. Stored all-NaN embedding rows mark a missing modality."""
        if self.encoder is None:
            raise RuntimeError("the attribute encoder is not fitted")
        present = np.column_stack(
            [
                ~np.isnan(data.image).all(axis=1),
                ~np.isnan(data.text).all(axis=1),
                _attributes_present(data),
            ]
        )  # (N, 3) in MODALITIES order
        attributes = self.encoder.transform_frame(data.attributes)
        return FusionBatch.from_numpy(data.image, data.text, attributes, present)


def _auxiliary_targets(data: ExperimentData) -> tuple[tuple[tuple[str, Task], ...], torch.Tensor]:
    """Return the spec's auxiliary (name, task) pairs and their (N, A) float32 targets, NaN where missing."""
    spec = data.spec
    if not spec.auxiliary_labels:
        raise ValueError(
            f"FusionHeadModel(multitask=True) needs auxiliary labels, but spec {spec.name!r} has no "
            "auxiliary_labels. Add them to the spec or use multitask=False"
        )
    loaded = data.auxiliary_labels or {}
    missing = [name for name in spec.auxiliary_labels if name not in loaded]
    if missing:
        raise ValueError(
            f"FusionHeadModel(multitask=True): the data lacks the auxiliary label(s) {missing} of spec "
            f"{spec.name!r}. Load it with load_experiment_data, which reads them from the catalogue"
        )
    tasks = tuple(spec.auxiliary_labels.items())
    targets = np.column_stack([loaded[name] for name, _ in tasks]).astype(np.float32)  # (N, A)
    return tasks, torch.from_numpy(targets)


def _attributes_present(data: ExperimentData) -> np.ndarray:
    """Return (N,) bool: rows with at least one attribute value, as FusionInputs.from_optional decides."""
    values = data.attributes.to_numpy(dtype=object)  # (N, columns)
    return np.array([any(not is_missing_value(value) for value in row) for row in values], dtype=bool)
