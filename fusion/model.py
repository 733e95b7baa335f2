"""Concatenation fusion of image, text and attribute inputs into one quality output."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

# Modality order of `present` columns, Shapley contributions and the missing vectors.
MODALITIES: tuple[str, str, str] = ("image", "text", "attributes")
TASKS: tuple[str, str] = ("regression", "binary")

Task = Literal["regression", "binary"]


@dataclass
class FusionConfig:
    """Architecture of a ConcatFusionModel.

    The output is one value per product: the standardised label for regression, the logit of the
    positive class for binary classification.
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

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"Task {self.task!r} is not supported. Use one of {list(TASKS)}.")
        for name in ("image_dim", "text_dim", "hidden_dim", "modality_dim", "categorical_embedding_dim"):
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FusionConfig:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"Unknown FusionConfig fields {unknown}. The checkpoint was written by a newer or other version of the code.")
        return cls(**{**data, "categorical_cardinalities": list(data.get("categorical_cardinalities", []))})


class ConcatFusionModel(nn.Module):
    """Late fusion by concatenation, with a learned stand-in for each missing modality.

    Each modality is projected to `modality_dim` and layer-normalised, so that no modality dominates
    the concatenation through the scale of its inputs. Where `present[:, m]` is False, modality m's
    projection is replaced by a learned missing vector, which also defines the model's output for
    subsets of modalities (used for Shapley contributions).
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

        self.head = nn.Sequential(
            nn.Linear(len(MODALITIES) * d, config.hidden_dim),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden_dim, 1),
        )

    def forward(
        self,
        image: torch.Tensor,  # (B, Di) float32
        text: torch.Tensor,  # (B, Dt) float32
        numeric: torch.Tensor,  # (B, Fn) float32
        categorical: torch.Tensor,  # (B, Fc) int64
        present: torch.Tensor,  # (B, 3) bool, columns in MODALITIES order
    ) -> torch.Tensor:  # (B, 1)
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
        fused = torch.where(present.unsqueeze(-1), projected, missing)  # (B, 3, D)

        # Concatenate and predict.
        fused = fused.flatten(start_dim=1)  # (B, 3 * D)
        return self.head(fused)  # (B, 1)

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
