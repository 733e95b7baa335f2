"""The output type shared by the fusion heads, and the prediction MLP several of them end with."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class HeadOutput:
    """Output of a fusion head for B products."""

    prediction: torch.Tensor  # (B, 1) standardised label or logit
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
