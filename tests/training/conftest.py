"""Small synthetic experiment data with a planted signal, for the CV, baseline and tree-head tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.experiment_data import ExperimentData
from training.spec import spec_from_dict

TAGS = ("Dice Rolling", "Hand Management", "Trading", "Worker Placement", "Bluffing")


def make_experiment_data(n: int = 300, *, task: str = "regression", seed: int = 0) -> ExperimentData:
    """Build N products whose label is a known function of a number, a tag, a category and the text vector.

    label = 1.0 * size + 0.8 * [has "Trading"] + 0.5 * [colour is "red"] + 0.7 * text[:, 0] + N(0, 0.1),
    and for a binary task, 1 where that value is above its median.
    """
    rng = np.random.default_rng(seed)
    spec = spec_from_dict(
        {
            "name": f"synthetic_{task}",
            "id_column": "product_id",
            "image_column": "image_path",
            "text_columns": ["title", "tags"],
            "numeric_columns": ["size", "price"],
            "log_scale_columns": ["price"],
            "categorical_columns": ["colour"],
            "label_column": "label",
            "task": task,
        }
    )
    size = rng.normal(size=n)
    price = np.exp(rng.normal(3.0, 1.0, size=n))
    price[rng.random(n) < 0.2] = np.nan
    colour = rng.choice(["red", "green", "blue"], size=n)
    tag_lists = [list(rng.choice(TAGS, size=rng.integers(1, 4), replace=False)) for _ in range(n)]
    image = rng.normal(size=(n, 16)).astype(np.float32)  # (N, 16): pure noise
    text = rng.normal(size=(n, 8)).astype(np.float32)  # (N, 8): column 0 carries signal

    value = (
        1.0 * size
        + 0.8 * np.array(["Trading" in tags for tags in tag_lists])
        + 0.5 * (colour == "red")
        + 0.7 * text[:, 0]
        + rng.normal(0.0, 0.1, size=n)
    )
    labels = (value > np.median(value)).astype(np.float64) if task == "binary" else value

    return ExperimentData(
        spec=spec,
        product_ids=np.array([f"P{index:04d}" for index in range(n)], dtype=object),
        image=image,
        text=text,
        attributes=pd.DataFrame({"size": size, "price": price, "colour": colour.astype(object)}),
        texts=pd.DataFrame(
            {
                "title": [f"game {index} of {colour[index]}" for index in range(n)],
                "tags": ["; ".join(tags) for tags in tag_lists],
            }
        ),
        labels=labels,
    )


@pytest.fixture(scope="session")
def regression_data() -> ExperimentData:
    return make_experiment_data(task="regression")


@pytest.fixture(scope="session")
def binary_data() -> ExperimentData:
    return make_experiment_data(task="binary", seed=1)
