"""The output type shared by the fusion heads, and the prediction MLP every head ends with."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class HeadOutput:
    """Output of a fusion head for B products."""

    prediction: torch.Tensor  # (B, 1) standardised label or logit
    # (B, H) the prediction MLP's hidden layer after dropout, which its last Linear maps to `prediction`.
    # FusionModel's auxiliary-task outputs read it too.
    hidden: torch.Tensor
    modality_weights: torch.Tensor | None = None  # (B, 3) softmax weights over MODALITIES, rows sum to 1
    modality_gates: torch.Tensor | None = None  # (B, 3) sigmoid gates in (0, 1), one per modality


def prediction_mlp(input_dim: int, hidden_dim: int, dropout: float) -> nn.Sequential:
    """Build the two-layer MLP that maps a fused vector (B, input_dim) to one output (B, 1)."""
    return nn.Sequential(
        nn.Linear(input_dim, hidden_dim),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden_dim, 1),
    )


def run_prediction_mlp(mlp: nn.Sequential, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a prediction MLP on (B, input_dim) and return its output (B, 1) and hidden layer (B, H).

    The result equals `mlp(fused)`: the layers run in the same order, with the last one split off.
    """
    hidden = fused
    for layer in list(mlp)[:-1]:
        hidden = layer(hidden)  # (B, H) after the last hidden layer
    return mlp[-1](hidden), hidden
