"""Exact Shapley values of the three modalities from a model's value on every modality subset.

Subset s contains modality m when bit m of s is set, so subset 0 is empty and subset 7 is full.
The Shapley value of modality m is

    phi_m = sum over S not containing m of |S|! (3 - |S| - 1)! / 3! * (v(S + {m}) - v(S)),

so the values add up to v(all) - v(none).
"""

from __future__ import annotations

import math

import numpy as np

N_MODALITIES = 3
# Row s has column m set when modality m is in subset s.
SUBSETS = np.array(
    [[(s >> m) & 1 for m in range(N_MODALITIES)] for s in range(2**N_MODALITIES)], dtype=bool
)  # (8, 3)


def shapley_weight(subset_size: int, n_players: int = N_MODALITIES) -> float:
    """Weight of a marginal contribution to a subset of `subset_size` players."""
    return math.factorial(subset_size) * math.factorial(n_players - subset_size - 1) / math.factorial(n_players)


def shapley_contributions(values: np.ndarray) -> np.ndarray:
    """Return the Shapley values (B, 3) from subset values (8, B) in SUBSETS order."""
    contributions = np.zeros((values.shape[1], N_MODALITIES), dtype=np.float64)  # (B, 3)
    for s, subset in enumerate(SUBSETS):
        for m in np.flatnonzero(~subset):
            contributions[:, m] += shapley_weight(int(subset.sum())) * (values[s | (1 << m)] - values[s])
    return contributions
