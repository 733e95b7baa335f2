"""Fusion by gating each modality vector with a sigmoid computed from all modalities."""

from __future__ import annotations

import torch
from torch import nn

from fusion.heads.base import HeadOutput, prediction_mlp, run_prediction_mlp


class GatedHead(nn.Module):
    """Gated fusion: one sigmoid gate per modality, computed from all three modality vectors.

    Each modality vector is scaled by its gate, and the gated vectors are concatenated and passed to
    a two-layer MLP. Unlike attention weights, the gates are independent and need not sum to 1, so
    the head can shut out or pass through several modalities at once.
    """

    def __init__(self, *, modality_dim: int, n_modalities: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.gate = nn.Linear(n_modalities * modality_dim, n_modalities)
        self.mlp = prediction_mlp(n_modalities * modality_dim, hidden_dim, dropout)

    def forward(self, tokens: torch.Tensor) -> HeadOutput:  # tokens (B, M, D)
        # Gates from the concatenation of all modality vectors.
        concatenated = tokens.flatten(start_dim=1)  # (B, M * D)
        gates = torch.sigmoid(self.gate(concatenated))  # (B, M)

        # Gate each modality, then concatenate and predict.
        gated = tokens * gates.unsqueeze(-1)  # (B, M, D)
        prediction, hidden = run_prediction_mlp(self.mlp, gated.flatten(start_dim=1))  # (B, 1), (B, H)

        return HeadOutput(prediction=prediction, hidden=hidden, modality_gates=gates)
