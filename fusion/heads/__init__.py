"""Fusion heads: each turns the three modality vectors of a product into one output.

Every head takes the projected modality vectors as a (B, 3, D) tensor in MODALITIES order, where a
missing modality's row already contains its learned missing vector, and returns a HeadOutput.

Heads: `concat` (ConcatHead), `attention` (AttentionHead), `gated` (GatedHead) and `transformer`
(TransformerHead).
"""

from fusion.heads.attention import AttentionHead
from fusion.heads.base import HeadOutput
from fusion.heads.concat import ConcatHead
from fusion.heads.gated import GatedHead
from fusion.heads.transformer import TransformerHead

__all__ = ["AttentionHead", "ConcatHead", "GatedHead", "HeadOutput", "TransformerHead"]
