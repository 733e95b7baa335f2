"""Typed hyperparameters of the boosted fusion head, read from and written to plain dicts or YAML."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

MEMBERS = ("lightgbm", "catboost")
SAMPLE_WEIGHTINGS = ("none", "log1p")


class BoostedConfigError(ValueError):
    """A boosted-head setting is unknown, of the wrong type or out of range; the message names the setting."""


def _check_types(settings: object, prefix: str = "") -> None:
    """Raise BoostedConfigError naming every int or float field that contains another type."""
    wrong = []
    for item in fields(settings):  # type: ignore[arg-type]
        value = getattr(settings, item.name)
        if item.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            wrong.append(f"{prefix}{item.name}={value!r} (expected an integer)")
        if item.type == "float" and (isinstance(value, bool) or not isinstance(value, int | float)):
            wrong.append(f"{prefix}{item.name}={value!r} (expected a number)")
        if item.type == "tuple[int, ...]" and not all(
            isinstance(k, int) and not isinstance(k, bool) for k in value
        ):
            wrong.append(f"{prefix}{item.name}={list(value)!r} (expected a list of integers)")
    if wrong:
        raise BoostedConfigError(f"boosted head settings of the wrong type: {', '.join(wrong)}")


@dataclass(frozen=True)
class LightGBMSettings:
    """LightGBM member: leaf-wise trees on the fused features."""

    learning_rate: float = 0.01
    num_leaves: int = 15
    min_data_in_leaf: int = 20
    feature_fraction: float = 0.5
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    cat_smooth: float = 10.0


@dataclass(frozen=True)
class CatBoostSettings:
    """CatBoost member: symmetric trees, categorical columns as native categorical features."""

    learning_rate: float = 0.03
    depth: int = 6
    l2_leaf_reg: float = 3.0


@dataclass(frozen=True)
class BoostedConfig:
    """Settings of the boosted fusion head (fusion/boosted/model.py).

    The members' predictions are averaged. Each member picks its number of trees by early stopping
    on `early_stopping_share` of the training rows, then refits on all of them.
    """

    members: tuple[str, ...] = MEMBERS
    max_trees: int = 4000
    early_stopping_rounds: int = 200
    early_stopping_share: float = 0.15
    # Neighbour counts of the kNN features per embedding; each k gives a similarity-weighted label
    # mean. On board games text kNN added R^2 +0.018 and image kNN nothing, so images have none.
    text_knn_neighbours: tuple[int, ...] = (5, 20)
    image_knn_neighbours: tuple[int, ...] = ()
    # Folds of the inner cross-validation that makes out-of-fold projections of the training rows.
    projection_folds: int = 5
    # Share of training rows copied once per modality with that modality marked missing.
    modality_dropout: float = 0.1
    sample_weighting: str = "log1p"
    threads: int = 0  # 0: every core this process may use
    lightgbm: LightGBMSettings = field(default_factory=LightGBMSettings)
    catboost: CatBoostSettings = field(default_factory=CatBoostSettings)

    def __post_init__(self) -> None:
        _check_types(self)
        _check_types(self.lightgbm, "lightgbm.")
        _check_types(self.catboost, "catboost.")
        unknown = sorted(set(self.members) - set(MEMBERS))
        if unknown or not self.members:
            raise BoostedConfigError(f"members must be a non-empty subset of {list(MEMBERS)}, got {list(self.members)}")
        checks = {
            "max_trees": self.max_trees >= 1,
            "early_stopping_rounds": self.early_stopping_rounds >= 1,
            "early_stopping_share": 0.0 < self.early_stopping_share < 0.5,
            "text_knn_neighbours": all(k >= 1 for k in self.text_knn_neighbours),
            "image_knn_neighbours": all(k >= 1 for k in self.image_knn_neighbours),
            "projection_folds": self.projection_folds >= 2,
            "modality_dropout": 0.0 <= self.modality_dropout <= 1.0,
            "threads": self.threads >= 0,
            "lightgbm.learning_rate": 0.0 < self.lightgbm.learning_rate <= 1.0,
            "lightgbm.num_leaves": self.lightgbm.num_leaves >= 2,
            "lightgbm.min_data_in_leaf": self.lightgbm.min_data_in_leaf >= 1,
            "lightgbm.lambda_l2": self.lightgbm.lambda_l2 >= 0.0,
            "lightgbm.cat_smooth": self.lightgbm.cat_smooth >= 0.0,
            "lightgbm.feature_fraction": 0.0 < self.lightgbm.feature_fraction <= 1.0,
            "lightgbm.bagging_fraction": 0.0 < self.lightgbm.bagging_fraction <= 1.0,
            "catboost.learning_rate": 0.0 < self.catboost.learning_rate <= 1.0,
            "catboost.depth": 1 <= self.catboost.depth <= 16,
            "catboost.l2_leaf_reg": self.catboost.l2_leaf_reg >= 0.0,
        }
        wrong = [name for name, ok in checks.items() if not ok]
        if wrong:
            raise BoostedConfigError(f"boosted head settings out of range: {wrong}; see fusion/boosted/config.py")
        if self.sample_weighting not in SAMPLE_WEIGHTINGS:
            raise BoostedConfigError(
                f"sample_weighting must be one of {list(SAMPLE_WEIGHTINGS)}, got {self.sample_weighting!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as JSON- and YAML-compatible data."""
        data = asdict(self)
        data["members"] = list(self.members)
        data["text_knn_neighbours"] = list(self.text_knn_neighbours)
        data["image_knn_neighbours"] = list(self.image_knn_neighbours)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BoostedConfig:
        """Build settings from `to_dict` output or a YAML mapping; unknown keys raise BoostedConfigError."""
        data = dict(data)
        nested = {"lightgbm": LightGBMSettings, "catboost": CatBoostSettings}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BoostedConfigError(f"unknown boosted head settings {unknown}; known: {sorted(known)}")
        for name, settings_type in nested.items():
            if name in data:
                if data[name] is not None and not isinstance(data[name], dict):
                    raise BoostedConfigError(f"{name} must be a mapping of settings, got {data[name]!r}")
                section = dict(data[name] or {})
                allowed = {f.name for f in fields(settings_type)}
                extra = sorted(set(section) - allowed)
                if extra:
                    raise BoostedConfigError(f"unknown {name} settings {extra}; known: {sorted(allowed)}")
                data[name] = settings_type(**section)
        for name in ("members", "text_knn_neighbours", "image_knn_neighbours"):
            if name in data:
                if not isinstance(data[name], list | tuple):
                    raise BoostedConfigError(f"{name} must be a list, got {data[name]!r}")
                data[name] = tuple(data[name])
        try:
            return cls(**data)
        except TypeError as error:
            raise BoostedConfigError(f"invalid boosted head settings: {error}") from error

    @classmethod
    def from_yaml(cls, path: Path | str) -> BoostedConfig:
        """Read settings from a YAML file (training/hyperparameters/boosted.yaml is the default)."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            raise BoostedConfigError(f"cannot read boosted head settings from {path}: {error}") from error
        if not isinstance(data, dict):
            raise BoostedConfigError(f"{path} must hold a mapping of settings, got {type(data).__name__}")
        return cls.from_dict(data)
