"""Fusion by a small Transformer encoder over the modality vectors as tokens."""

from __future__ import annotations

import torch
from torch import nn

from fusion.heads.base import HeadOutput, prediction_mlp, run_prediction_mlp


class _EncoderLayer(nn.Module):
    """A pre-norm Transformer encoder layer that also returns its head-averaged attention weights.

    nn.TransformerEncoderLayer does not return attention weights, so this layer is written out with
    the same structure as nn.TransformerEncoderLayer(norm_first=True, activation="gelu").
    """

    def __init__(self, *, dim: int, heads: int, feedforward_dim: int, dropout: float) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.attention_dropout = nn.Dropout(dropout)
        self.feedforward_norm = nn.LayerNorm(dim)
        self.feedforward = nn.Sequential(
            nn.Linear(dim, feedforward_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(feedforward_dim, dim),
            nn.Dropout(dropout),
        )

    def forward(
        self,
        tokens: torch.Tensor,  # (B, T, D)
        attention_mask: torch.Tensor,  # (T, T) bool, True where a query must not attend to a key
    ) -> tuple[torch.Tensor, torch.Tensor]:  # (B, T, D), (B, T, T)
        normed = self.attention_norm(tokens)  # (B, T, D)
        attended, weights = self.attention(
            normed, normed, normed, attn_mask=attention_mask, need_weights=True, average_attn_weights=True
        )  # (B, T, D), (B, T, T)
        tokens = tokens + self.attention_dropout(attended)  # (B, T, D)

        tokens = tokens + self.feedforward(self.feedforward_norm(tokens))  # (B, T, D)
        return tokens, weights


class TransformerHead(nn.Module):
    """Co-attention over modalities: a Transformer encoder over a pool token and three modality tokens.

    Each modality vector gets a learned modality type embedding added, and a learned pool token
    (like BERT's [CLS]) is put first. The pool token attends only to the modality tokens, never to
    itself, so its attention weights in the last layer, averaged over heads, are a distribution over
    the three modalities. The prediction comes from the pool token's final vector.
    """

    def __init__(
        self,
        *,
        modality_dim: int,
        n_modalities: int,
        layers: int,
        heads: int,
        feedforward_dim: int,
        hidden_dim: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.type_embeddings = nn.Parameter(torch.randn(n_modalities, modality_dim) * 0.02)  # (M, D)
        self.pool_token = nn.Parameter(torch.randn(1, 1, modality_dim) * 0.02)  # (1, 1, D)
        self.layers = nn.ModuleList(
            _EncoderLayer(dim=modality_dim, heads=heads, feedforward_dim=feedforward_dim, dropout=dropout)
            for _ in range(layers)
        )
        self.final_norm = nn.LayerNorm(modality_dim)
        self.mlp = prediction_mlp(modality_dim, hidden_dim, dropout)

        # Token 0 is the pool token, which must not attend to itself (key 0). Every other pair may attend.
        mask = torch.zeros(n_modalities + 1, n_modalities + 1, dtype=torch.bool)  # (T, T)
        mask[0, 0] = True
        self.register_buffer("attention_mask", mask, persistent=False)

    def forward(self, tokens: torch.Tensor) -> HeadOutput:  # tokens (B, M, D)
        # Modality type embeddings and the pool token in front.
        tokens = tokens + self.type_embeddings  # (B, M, D)
        pool = self.pool_token.expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        tokens = torch.cat([pool, tokens], dim=1)  # (B, T, D) with T = M + 1

        # Encoder layers, keeping the attention weights of the last one.
        weights = torch.empty(0)
        for layer in self.layers:
            tokens, weights = layer(tokens, self.attention_mask)  # (B, T, D), (B, T, T)

        # Predict from the pool token. Its attention over the modality tokens sums to 1 because its
        # weight on itself is masked to 0.
        pooled = self.final_norm(tokens[:, 0])  # (B, D)
        modality_weights = weights[:, 0, 1:]  # (B, M)
        prediction, hidden = run_prediction_mlp(self.mlp, pooled)  # (B, 1), (B, H)
        return HeadOutput(prediction=prediction, hidden=hidden, modality_weights=modality_weights)
