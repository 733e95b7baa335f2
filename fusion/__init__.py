"""Fusion of image, text and attribute inputs into a product-quality prediction.

Modules: `attributes` (attribute encoding), `predictions` (inputs and outputs of every model kind),
`model` (the neural FusionModel and FusionConfig), `heads` (its fusion heads), `batch` (its inputs
as tensors), `labels` (label scaling), `checkpoint_files` and `checkpoint` (saving and loading),
`inference` (FusionPredictor with Shapley contributions), `boosted` (the boosted fusion head) and
`loading` (load a model directory of either kind).

The names below load their module on first use, so importing this package does not import torch.
A process that serves a boosted model never needs it.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY_NAMES = {
    "AttributeEncoder": "fusion.attributes",
    "AttributeEncodingError": "fusion.attributes",
    "EncodedAttributes": "fusion.attributes",
    "CheckpointError": "fusion.checkpoint_files",
    "CheckpointIntegrityError": "fusion.checkpoint_files",
    "CheckpointMetadata": "fusion.checkpoint_files",
    "FusionInputs": "fusion.predictions",
    "FusionPredictions": "fusion.predictions",
    "LabelScaling": "fusion.labels",
    "MODALITIES": "fusion.names",
    "FusionBatch": "fusion.batch",
    "FusionBundle": "fusion.checkpoint",
    "load_checkpoint": "fusion.checkpoint",
    "save_checkpoint": "fusion.checkpoint",
    "FusionPredictor": "fusion.inference",
    "FUSION_HEADS": "fusion.model",
    "ConcatFusionModel": "fusion.model",
    "FusionConfig": "fusion.model",
    "FusionModel": "fusion.model",
    "FusionOutputs": "fusion.model",
    "load_predictor": "fusion.loading",
}

__all__ = sorted(_LAZY_NAMES)


def __getattr__(name: str) -> Any:
    module = _LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'fusion' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
