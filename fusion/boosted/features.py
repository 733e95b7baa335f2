"""The fused feature matrix of the boosted head: attributes, tag counts and embedding projections.

Columns, in order: the attribute encoder's numeric block (standardised values, missing indicators,
tag multi-hot), the number of tags per tag column, the categorical vocabulary indices (which the
members treat as categorical), then the image and the text EmbeddingProjection features.
A modality marked missing gets what a product without it would get: the encoding of an empty
attribute row, or NaN projection features.
"""

from __future__ import annotations

import numpy as np

from fusion.attributes import AttributeEncoder, EncodedAttributes
from fusion.boosted.projections import EmbeddingProjection

IMAGE, TEXT, ATTRIBUTES = 0, 1, 2  # columns of `present`, in MODALITIES order


class FusedFeatures:
    """Builds the (B, F) float64 feature matrix from encoded attributes and embeddings."""

    def __init__(self, encoder: AttributeEncoder, image: EmbeddingProjection, text: EmbeddingProjection) -> None:
        self.encoder = encoder
        self.image = image
        self.text = text
        self._empty_row = encoder.transform([None])  # the encoding of a product without attributes

    @property
    def feature_names(self) -> list[str]:
        names = [f"numeric_{i}" for i in range(self.encoder.numeric_dim)]
        names += [f"{column}__count" for column in self.encoder.tags]
        names += list(self.encoder.categorical)
        names += [f"image_{name}" for name in self.image.feature_names]
        names += [f"text_{name}" for name in self.text.feature_names]
        return names

    @property
    def categorical_positions(self) -> list[int]:
        """Column positions of the categorical indices in the feature matrix."""
        start = self.encoder.numeric_dim + len(self.encoder.tags)
        return list(range(start, start + len(self.encoder.categorical)))

    def attribute_block(self, encoded: EncodedAttributes, present: np.ndarray) -> np.ndarray:
        """Return the attribute columns (B, Fa); rows without attributes get the empty-row encoding."""
        numeric = np.where(present[:, None], encoded.numeric, self._empty_row.numeric)  # (B, Fn)
        categorical = np.where(present[:, None], encoded.categorical, self._empty_row.categorical)  # (B, Fc)
        return np.hstack([numeric, self._tag_counts(numeric), categorical]).astype(np.float64)

    def projection_block(self, projected: np.ndarray, present: np.ndarray) -> np.ndarray:
        """Set the projection features (B, Fp) of rows without the modality to NaN."""
        return np.where(present[:, None], projected, np.nan)

    def build(
        self, encoded: EncodedAttributes, image: np.ndarray, text: np.ndarray, present: np.ndarray
    ) -> np.ndarray:
        """Return the features (B, F) of products with embeddings image (B, Di) and text (B, Dt)."""
        image = np.where(present[:, IMAGE, None], image, np.nan)  # (B, Di), NaN rows are missing
        text = np.where(present[:, TEXT, None], text, np.nan)  # (B, Dt)
        return np.hstack(
            [
                self.attribute_block(encoded, present[:, ATTRIBUTES]),
                self.image.transform(image),
                self.text.transform(text),
            ]
        )

    def _tag_counts(self, numeric: np.ndarray) -> np.ndarray:
        """Number of tags per tag column (B, T): vocabulary slots set plus the other-tags count."""
        counts = []
        offset = 2 * len(self.encoder.numeric)
        for column in self.encoder.tags:
            slots = len(self.encoder.tag_vocabularies[column])
            known = numeric[:, offset : offset + slots].sum(axis=1)
            other = np.expm1(numeric[:, offset + slots])  # the block stores log1p of the count
            counts.append(known + other)
            offset += slots + 2
        return np.column_stack(counts) if counts else np.zeros((len(numeric), 0))
