"""The boosted fusion head (fusion/boosted) as an experiment model on stored features.

It is the model the main job trains with `--fusion-head boosted` and the predictor serves: the
attribute encoder is fitted on the training rows exactly as the train stage fits it.
"""

from __future__ import annotations

import numpy as np

from fusion.attributes import AttributeEncoder, EncodedAttributes
from fusion.boosted.config import BoostedConfig
from fusion.boosted.model import BoostedFusionModel
from training.experiment_data import ExperimentData


def attribute_encoder_for(data: ExperimentData) -> AttributeEncoder:
    """Return the attribute encoder of the data's spec, fitted on its rows."""
    return data.spec.attribute_encoder().fit(data.attributes)


def model_inputs(data: ExperimentData, encoder: AttributeEncoder) -> tuple[EncodedAttributes, np.ndarray]:
    """Return the encoded attributes and the present mask (N, 3) in MODALITIES order."""
    encoded = encoder.transform_frame(data.attributes)
    present = np.column_stack(
        [~np.isnan(data.image).any(axis=1), ~np.isnan(data.text).any(axis=1), encoded.any_present]
    )
    return encoded, present


class BoostedHeadModel:
    """Experiment wrapper: fit a BoostedFusionModel on ExperimentData rows and predict others."""

    def __init__(self, config: BoostedConfig | None = None, *, seed: int = 0) -> None:
        self.config = config or BoostedConfig()
        self.seed = seed
        self.model: BoostedFusionModel | None = None

    def fit(self, data: ExperimentData) -> None:
        encoder = attribute_encoder_for(data)
        encoded, present = model_inputs(data, encoder)
        self.model = BoostedFusionModel(self.config, encoder, data.task, seed=self.seed)
        self.model.fit(encoded, data.image, data.text, present, data.labels, data.weights)

    def predict(self, data: ExperimentData) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("predict called before fit")
        encoded, present = model_inputs(data, self.model.encoder)
        return self.model.predict(encoded, data.image, data.text, present)
