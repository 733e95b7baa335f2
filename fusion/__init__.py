"""Fusion of image, text and attribute inputs into a product-quality prediction.

Modules: `attributes` (attribute encoding), `model` (FusionModel and FusionConfig), `heads` (the
fusion heads), `batch` (model inputs as tensors), `labels` (label scaling), `checkpoint` (saving and
loading), `inference` (FusionPredictor with Shapley contributions).
"""

from fusion.attributes import AttributeEncoder, AttributeEncodingError, EncodedAttributes
from fusion.batch import FusionBatch
from fusion.checkpoint import (
    CheckpointError,
    CheckpointIntegrityError,
    CheckpointMetadata,
    FusionBundle,
    load_checkpoint,
    save_checkpoint,
)
from fusion.inference import FusionInputs, FusionPredictions, FusionPredictor
from fusion.labels import LabelScaling
from fusion.model import FUSION_HEADS, MODALITIES, ConcatFusionModel, FusionConfig, FusionModel, FusionOutputs

__all__ = [
    "FUSION_HEADS",
    "MODALITIES",
    "AttributeEncoder",
    "AttributeEncodingError",
    "CheckpointError",
    "CheckpointIntegrityError",
    "CheckpointMetadata",
    "ConcatFusionModel",
    "EncodedAttributes",
    "FusionBatch",
    "FusionBundle",
    "FusionConfig",
    "FusionInputs",
    "FusionModel",
    "FusionOutputs",
    "FusionPredictions",
    "FusionPredictor",
    "LabelScaling",
    "load_checkpoint",
    "save_checkpoint",
]
