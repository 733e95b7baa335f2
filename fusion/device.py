"""Choice of the torch device for training and inference."""

from __future__ import annotations

import torch


def resolve_device(device: torch.device | str = "auto") -> torch.device:
    """Return the torch device for `device`, where "auto" means CUDA when available, else CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Device {device!r} was requested, but CUDA is not available. Use 'cpu' or 'auto'.")
    return resolved
