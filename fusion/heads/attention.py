"""Fusion by a softmax-weighted sum of the modality vectors."""

from __future__ import annotations

import torch
from torch import nn

from fusion.heads.base import HeadOutput, prediction_mlp, run_prediction_mlp


class AttentionHead(nn.Module):
    """Attention pooling over modalities: per-product softmax weights, then a weighted sum.

    A shared scoring MLP gives each modality vector a score, and the softmax over the three scores
    weights the sum. The scorer takes only the modality vector as input, but the vectors come from separate
    projections, so each modality can learn its own score range. A missing modality takes part with
    its learned missing vector, so the weights always cover all three modalities and sum to 1.
    """

    def __init__(self, *, modality_dim: int, attention_dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.scorer = nn.Sequential(
            nn.Linear(modality_dim, attention_dim),
            nn.Tanh(),
            nn.Linear(attention_dim, 1),
        )
        self.mlp = prediction_mlp(modality_dim, hidden_dim, dropout)

    def forward(self, tokens: torch.Tensor) -> HeadOutput:  # tokens (B, M, D)
        # Score each modality and normalise the scores over modalities.
        scores = self.scorer(tokens).squeeze(-1)  # (B, M)
        weights = torch.softmax(scores, dim=1)  # (B, M)

        # Weighted sum of the modality vectors.
        pooled = (weights.unsqueeze(-1) * tokens).sum(dim=1)  # (B, D)

        prediction, hidden = run_prediction_mlp(self.mlp, pooled)  # (B, 1), (B, H)
        return HeadOutput(prediction=prediction, hidden=hidden, modality_weights=weights)
