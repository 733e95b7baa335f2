"""Mean pooling and L2 normalisation of a transformer's token states into sentence embeddings.

The pooling matches sentence-transformers' Pooling(mode="mean") followed by Normalize.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token states of each sequence over its attention mask, ignoring padding."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    summed = (hidden * mask).sum(dim=1)  # (B, H)
    # The clamp only matters for an all-padding row, which the tokenizer never produces because
    # [CLS] and [SEP] are always present. 1e-9 is the value sentence-transformers uses.
    counts = mask.sum(dim=1).clamp(min=1e-9)  # (B, 1)
    return summed / counts


class SentenceEmbeddingModel(torch.nn.Module):
    """A transformer followed by mean pooling and L2 normalisation: token ids in, unit vectors out.

    The torch runtime calls it, and the ONNX runtime exports it, so both compute the same steps. It
    shares its parameters with `transformer`, so changes to the transformer's weights reach it.
    """

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T) int64
        attention_mask: torch.Tensor,  # (B, T) int64, 1 for tokens and 0 for padding
        token_type_ids: torch.Tensor,  # (B, T) int64
    ) -> torch.Tensor:  # (B, H) float32, L2-normalised
        hidden = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
        ).last_hidden_state  # (B, T, H)
        pooled = mean_pool(hidden, attention_mask)  # (B, H)
        return F.normalize(pooled, p=2, dim=1)
