"""Conversion between NumPy embeddings and the pq.v1.Embedding message (packed float32 bytes)."""

from __future__ import annotations

import numpy as np

from pq.v1 import embedding_pb2

# The wire format is fixed to little-endian float32 whatever the host's byte order.
WIRE_DTYPE = np.dtype("<f4")


def to_message(vector: np.ndarray) -> embedding_pb2.Embedding:
    """Pack a 1-d vector (D,) into an Embedding message."""
    if vector.ndim != 1:
        raise ValueError(f"expected a 1-d embedding, got shape {vector.shape}")
    packed = np.ascontiguousarray(vector, dtype=WIRE_DTYPE)
    return embedding_pb2.Embedding(vector=packed.tobytes(), dimension=packed.shape[0])


def from_message(message: embedding_pb2.Embedding) -> np.ndarray:
    """Unpack an Embedding message into a float32 vector (D,); raise ValueError when inconsistent."""
    if len(message.vector) != 4 * message.dimension:
        raise ValueError(
            f"embedding has {len(message.vector)} bytes but dimension {message.dimension} "
            f"needs {4 * message.dimension}"
        )
    return np.frombuffer(message.vector, dtype=WIRE_DTYPE).astype(np.float32)
