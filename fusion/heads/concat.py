"""Fusion by concatenating the modality vectors."""

from __future__ import annotations

import torch
from torch import nn

from fusion.heads.base import HeadOutput, run_prediction_mlp


class ConcatHead(nn.Sequential):
    """Concatenation of the three modality vectors, followed by a two-layer MLP.

    It subclasses nn.Sequential so that its parameters keep the names `head.0.*` and `head.3.*`,
    which checkpoints written before heads were selectable contain.
    """

    def __init__(self, *, modality_dim: int, n_modalities: int, hidden_dim: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(n_modalities * modality_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, 1),
        )

    def forward(self, tokens: torch.Tensor) -> HeadOutput:  # tokens (B, M, D)
        fused = tokens.flatten(start_dim=1)  # (B, M * D)
        prediction, hidden = run_prediction_mlp(self, fused)  # (B, 1), (B, H)
        return HeadOutput(prediction=prediction, hidden=hidden)
