"""Fusion of image, text and attribute inputs into one quality output, with a selectable fusion head."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from fusion.heads import AttentionHead, ConcatHead, GatedHead, HeadOutput, TransformerHead
from fusion.names import MODALITIES, TASKS, Task

FusionHead = Literal["concat", "attention", "gated", "transformer"]
FUSION_HEADS: tuple[str, ...] = ("concat", "attention", "gated", "transformer")


@dataclass
class FusionConfig:
    """Architecture of a FusionModel.

    The output is one value per product: the standardised label for regression, the logit of the
    positive class for binary classification. A checkpoint written before `head` existed has no
    `head` field and loads as "concat", the only head at that time, and one written before
    auxiliary tasks existed loads without them.
    """

    image_dim: int
    text_dim: int
    numeric_dim: int  # width of the encoded numeric attributes, missing indicators included
    categorical_cardinalities: list[int] = field(default_factory=list)  # per column, unknown index included
    task: Task = "regression"
    hidden_dim: int = 512
    modality_dim: int = 128
    categorical_embedding_dim: int = 16
    dropout: float = 0.2
    modality_dropout: float = 0.1  # probability per product and modality of marking it missing in training
    head: FusionHead = "concat"  # how the three modality vectors are fused, see fusion.heads
    attention_dim: int = 64  # hidden width of the modality scorer of the "attention" head
    transformer_layers: int = 2  # encoder layers of the "transformer" head
    transformer_heads: int = 4  # attention heads per layer of the "transformer" head, a divisor of modality_dim
    transformer_feedforward_dim: int = 256  # feed-forward width of the "transformer" head's layers
    # Weight of the auxiliary per-modality losses in training, where a linear head per modality
    # predicts the label from that modality alone. At 0 the model has no auxiliary heads.
    auxiliary_loss_weight: float = 0.0
    # Auxiliary training targets as (name, task) pairs, in the column order of the auxiliary targets.
    # Each gets a linear output on the main head's hidden layer. The main prediction does not use them.
    auxiliary_tasks: tuple[tuple[str, Task], ...] = ()
    # Weight of the mean auxiliary-task loss that training adds to the main loss.
    auxiliary_task_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"Task {self.task!r} is not supported. Use one of {list(TASKS)}.")
        if self.head not in FUSION_HEADS:
            raise ValueError(f"Fusion head {self.head!r} is not supported. Use one of {list(FUSION_HEADS)}.")
        positive = (
            "image_dim", "text_dim", "hidden_dim", "modality_dim", "categorical_embedding_dim",
            "attention_dim", "transformer_layers", "transformer_heads", "transformer_feedforward_dim",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"FusionConfig.{name} must be at least 1, got {getattr(self, name)}.")
        if self.numeric_dim < 0:
            raise ValueError(f"FusionConfig.numeric_dim must not be negative, got {self.numeric_dim}.")
        if self.numeric_dim == 0 and not self.categorical_cardinalities:
            raise ValueError(
                "FusionConfig has no attribute inputs (numeric_dim is 0 and there are no categorical "
                "columns), but the attributes modality needs at least one column."
            )
        if any(cardinality < 1 for cardinality in self.categorical_cardinalities):
            raise ValueError(
                f"Categorical cardinalities must be at least 1, got {self.categorical_cardinalities}."
            )
        for name in ("dropout", "modality_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"FusionConfig.{name} must be in [0, 1), got {getattr(self, name)}.")
        if self.head == "transformer" and self.modality_dim % self.transformer_heads:
            raise ValueError(
                f"FusionConfig.modality_dim ({self.modality_dim}) must be divisible by transformer_heads "
                f"({self.transformer_heads}) for the transformer head."
            )
        if self.auxiliary_loss_weight < 0:
            raise ValueError(
                f"FusionConfig.auxiliary_loss_weight must not be negative, got {self.auxiliary_loss_weight}."
            )
        if not self.auxiliary_task_weight >= 0:
            raise ValueError(
                f"FusionConfig.auxiliary_task_weight must not be negative, got {self.auxiliary_task_weight}."
            )
        # JSON stores the pairs as lists, so they are converted back to tuples here.
        self.auxiliary_tasks = _checked_auxiliary_tasks(self.auxiliary_tasks)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FusionConfig:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"Unknown FusionConfig fields {unknown}. The checkpoint was written by a newer or other version of the code.")
        return cls(**{**data, "categorical_cardinalities": list(data.get("categorical_cardinalities", []))})


@dataclass(frozen=True)
class FusionOutputs:
    """Everything a FusionModel computes for B products."""

    prediction: torch.Tensor  # (B, 1) standardised label or logit
    modality_weights: torch.Tensor | None  # (B, 3) softmax weights of the attention and transformer heads
    modality_gates: torch.Tensor | None  # (B, 3) sigmoid gates of the gated head
    modality_predictions: torch.Tensor | None  # (B, 3) auxiliary per-modality outputs; None when disabled
    present: torch.Tensor  # (B, 3) bool: the modalities used, after modality dropout in training
    # (B, A) one output per FusionConfig.auxiliary_tasks entry, in that order: the standardised
    # target or the logit. None without auxiliary tasks.
    auxiliary: torch.Tensor | None = None


class FusionModel(nn.Module):
    """Late fusion of three modalities with a learned stand-in for each missing modality.

    Each modality is projected to `modality_dim` and layer-normalised, so that no modality dominates
    the fusion through the scale of its inputs. Where `present[:, m]` is False, modality m's
    projection is replaced by a learned missing vector, which also defines the model's output for
    subsets of modalities (used for Shapley contributions). Every head gets the missing vector in
    place of a missing modality and none masks it out, because with all three modalities missing a
    mask would leave nothing to predict from, and the empty subset is the Shapley baseline.
    The fusion head (`config.head`) then turns the (B, 3, D) modality vectors into the output.
    """

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        d = config.modality_dim

        self.image_projection = nn.Sequential(nn.Linear(config.image_dim, d), nn.LayerNorm(d))
        self.text_projection = nn.Sequential(nn.Linear(config.text_dim, d), nn.LayerNorm(d))

        self.categorical_embeddings = nn.ModuleList(
            nn.Embedding(cardinality, config.categorical_embedding_dim)
            for cardinality in config.categorical_cardinalities
        )
        attribute_width = config.numeric_dim + len(config.categorical_cardinalities) * config.categorical_embedding_dim
        self.attribute_projection = nn.Sequential(nn.Linear(attribute_width, d), nn.LayerNorm(d))

        # One row per modality in MODALITIES order. Zero start: a missing modality begins as the
        # mean of the layer-normalised projections.
        self.missing_vectors = nn.Parameter(torch.zeros(len(MODALITIES), d))  # (3, D)

        self.head = _build_head(config)

        # One linear head per modality, used only for the auxiliary training loss.
        self.auxiliary_heads: nn.ModuleList | None = None
        if config.auxiliary_loss_weight > 0:
            self.auxiliary_heads = nn.ModuleList(nn.Linear(d, 1) for _ in MODALITIES)

        # One linear output per auxiliary task on the main head's hidden layer, used only in training.
        # Created last, so the other layers get the same initial weights with or without them.
        self.auxiliary_task_outputs: nn.ModuleList | None = None
        if config.auxiliary_tasks:
            self.auxiliary_task_outputs = nn.ModuleList(
                nn.Linear(config.hidden_dim, 1) for _ in config.auxiliary_tasks
            )

    def forward(
        self,
        image: torch.Tensor,  # (B, Di) float32
        text: torch.Tensor,  # (B, Dt) float32
        numeric: torch.Tensor,  # (B, Fn) float32
        categorical: torch.Tensor,  # (B, Fc) int64
        present: torch.Tensor,  # (B, 3) bool, columns in MODALITIES order
    ) -> torch.Tensor:  # (B, 1)
        return self.forward_outputs(image, text, numeric, categorical, present).prediction

    def forward_outputs(
        self,
        image: torch.Tensor,  # (B, Di) float32
        text: torch.Tensor,  # (B, Dt) float32
        numeric: torch.Tensor,  # (B, Fn) float32
        categorical: torch.Tensor,  # (B, Fc) int64
        present: torch.Tensor,  # (B, 3) bool, columns in MODALITIES order
    ) -> FusionOutputs:
        """Compute the prediction and, where the head and config have them, the per-modality and auxiliary-task outputs."""
        self._check_shapes(image, text, numeric, categorical, present)

        # Modality dropout: in training, mark random modalities missing so the missing vectors learn
        # to stand in for them and the model does not rely on any single modality.
        if self.training and self.config.modality_dropout > 0:
            dropped = torch.rand(present.shape, device=present.device) < self.config.modality_dropout  # (B, 3)
            present = present & ~dropped

        # Zero the inputs of absent modalities: their values are replaced below anyway, and NaN there
        # would otherwise reach the projection's weight gradient.
        image = image.masked_fill(~present[:, 0:1], 0.0)  # (B, Di)
        text = text.masked_fill(~present[:, 1:2], 0.0)  # (B, Dt)
        numeric = numeric.masked_fill(~present[:, 2:3], 0.0)  # (B, Fn)

        # Per-modality projection to a common width and scale.
        image_h = self.image_projection(image)  # (B, D)
        text_h = self.text_projection(text)  # (B, D)
        embedded = [embedding(categorical[:, j]) for j, embedding in enumerate(self.categorical_embeddings)]
        attributes = torch.cat([numeric, *embedded], dim=1)  # (B, Fn + Fc * E)
        attributes_h = self.attribute_projection(attributes)  # (B, D)

        # Missing modalities take their learned missing vector.
        projected = torch.stack([image_h, text_h, attributes_h], dim=1)  # (B, 3, D)
        missing = self.missing_vectors.unsqueeze(0).expand_as(projected)  # (B, 3, D)
        tokens = torch.where(present.unsqueeze(-1), projected, missing)  # (B, 3, D)

        # Fuse and predict.
        head_output: HeadOutput = self.head(tokens)  # prediction (B, 1)

        # Auxiliary outputs from each modality's own projection. Rows of missing modalities are
        # meaningless, so the training loss masks them with `present`.
        modality_predictions = None
        if self.auxiliary_heads is not None:
            modality_predictions = torch.cat(
                [aux(projected[:, m]) for m, aux in enumerate(self.auxiliary_heads)], dim=1
            )  # (B, 3)

        # Auxiliary-task outputs from the same hidden layer that the main prediction comes from.
        auxiliary = None
        if self.auxiliary_task_outputs is not None:
            auxiliary = torch.cat(
                [output(head_output.hidden) for output in self.auxiliary_task_outputs], dim=1
            )  # (B, A)

        return FusionOutputs(
            prediction=head_output.prediction,
            modality_weights=head_output.modality_weights,
            modality_gates=head_output.modality_gates,
            modality_predictions=modality_predictions,
            present=present,
            auxiliary=auxiliary,
        )

    def _check_shapes(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        numeric: torch.Tensor,
        categorical: torch.Tensor,
        present: torch.Tensor,
    ) -> None:
        batch = image.shape[0]
        expected = {
            "image": (image, (batch, self.config.image_dim)),
            "text": (text, (batch, self.config.text_dim)),
            "numeric": (numeric, (batch, self.config.numeric_dim)),
            "categorical": (categorical, (batch, len(self.config.categorical_cardinalities))),
            "present": (present, (batch, len(MODALITIES))),
        }
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(f"Fusion input {name!r} has shape {tuple(tensor.shape)}, expected {shape}.")
        if present.dtype != torch.bool:
            raise ValueError(f"Fusion input 'present' has dtype {present.dtype}, expected torch.bool.")
        if categorical.dtype != torch.int64:
            raise ValueError(f"Fusion input 'categorical' has dtype {categorical.dtype}, expected torch.int64.")


# The model's name from when concatenation was its only head.
ConcatFusionModel = FusionModel


def _checked_auxiliary_tasks(tasks: Any) -> tuple[tuple[str, Task], ...]:
    """Return the (name, task) pairs as tuples, or raise ValueError naming the invalid entry."""
    checked: list[tuple[str, Task]] = []
    for entry in tasks:
        is_pair = isinstance(entry, (tuple, list)) and len(entry) == 2
        if not is_pair or not isinstance(entry[0], str) or not entry[0]:
            raise ValueError(
                f"FusionConfig.auxiliary_tasks must contain (name, task) pairs with a non-empty name, got {entry!r}."
            )
        name, task = entry
        if task not in TASKS:
            raise ValueError(
                f"FusionConfig.auxiliary_tasks: task {task!r} of {name!r} is not supported. Use one of {list(TASKS)}."
            )
        checked.append((name, task))
    names = [name for name, _ in checked]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"FusionConfig.auxiliary_tasks names {duplicates} more than once.")
    return tuple(checked)


def _build_head(config: FusionConfig) -> nn.Module:
    n_modalities = len(MODALITIES)
    if config.head == "concat":
        return ConcatHead(
            modality_dim=config.modality_dim, n_modalities=n_modalities,
            hidden_dim=config.hidden_dim, dropout=config.dropout,
        )
    if config.head == "attention":
        return AttentionHead(
            modality_dim=config.modality_dim, attention_dim=config.attention_dim,
            hidden_dim=config.hidden_dim, dropout=config.dropout,
        )
    if config.head == "gated":
        return GatedHead(
            modality_dim=config.modality_dim, n_modalities=n_modalities,
            hidden_dim=config.hidden_dim, dropout=config.dropout,
        )
    return TransformerHead(
        modality_dim=config.modality_dim, n_modalities=n_modalities,
        layers=config.transformer_layers, heads=config.transformer_heads,
        feedforward_dim=config.transformer_feedforward_dim, hidden_dim=config.hidden_dim,
        dropout=config.dropout,
    )
