"""Embeddings stored as feature values: packed little-endian float32 bytes."""

from __future__ import annotations

import numpy as np

# Same layout as the pq.v1.Embedding wire format, whatever the host's byte order.
EMBEDDING_DTYPE = np.dtype("<f4")


def pack_embedding(vector: np.ndarray) -> bytes:
    """Pack a 1-d vector (D,) into 4 * D bytes of little-endian float32."""
    if vector.ndim != 1:
        raise ValueError(f"expected a 1-d embedding, got shape {vector.shape}")
    return np.ascontiguousarray(vector, dtype=EMBEDDING_DTYPE).tobytes()


def unpack_embedding(data: bytes, dim: int) -> np.ndarray:
    """Unpack bytes from `pack_embedding` into a float32 vector (dim,); raise ValueError on a size mismatch."""
    if len(data) != 4 * dim:
        raise ValueError(f"embedding has {len(data)} bytes but dimension {dim} needs {4 * dim}")
    return np.frombuffer(data, dtype=EMBEDDING_DTYPE).astype(np.float32)
