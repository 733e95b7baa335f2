"""Tests of catalogue loading, cleaning, subsets and splits, on small files and the real datasets."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fusion.attributes import AttributeEncoder
from training.catalogue import (
    INDEX_NAME,
    PRODUCTS_FILE,
    Catalogue,
    CatalogueError,
    default_datasets_dir,
    load_catalogue,
)
from training.sample import generate_sample_catalogue
from training.spec import DatasetSpec, SpecError, load_spec, spec_from_dict

HEADER = [
    "product_id",
    "title",
    "description",
    "price",
    "stars",
    "category",
    "quality",
    "reviews",
    "image_path",
    "keywords",
]


def tiny_spec(task: str = "regression", **updates: object) -> DatasetSpec:
    data: dict[str, object] = {
        "name": "tiny",
        "id_column": "product_id",
        "image_column": "image_path",
        "text_columns": ["title", "description"],
        "numeric_columns": ["price", "stars"],
        "categorical_columns": ["category"],
        "log_scale_columns": ["price"],
        "label_column": "quality",
        "task": task,
        "weight_column": "reviews",
        "missing_values": {"stars": [0], "category": ["unknown"]},
    }
    data.update(updates)
    return spec_from_dict(data)


def write_catalogue(root: Path, rows: list[dict[str, str]], *, images: bool = True) -> Path:
    """Write products.csv with HEADER columns (missing keys empty) and a PNG for each image path."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / PRODUCTS_FILE, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=HEADER)
        writer.writeheader()
        for row in rows:
            writer.writerow({name: row.get(name, "") for name in HEADER})
            image_path = row.get("image_path", "")
            if images and image_path and not image_path.startswith(".."):
                (root / image_path).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (200, 10, 10)).save(root / image_path)
    return root


def numbered_rows(count: int) -> list[dict[str, str]]:
    return [
        {
            "product_id": f"{index:04d}",
            "title": f"Product {index}",
            "quality": str(index % 5),
            "image_path": f"images/{index:04d}.png",
        }
        for index in range(count)
    ]


def test_catalogue_ids_are_strings(tmp_path: Path) -> None:
    root = write_catalogue(tmp_path, [{"product_id": "007", "title": "Agent", "quality": "3"}])
    catalogue = load_catalogue(root, tiny_spec())
    assert catalogue.product_ids == ["007"]
    assert catalogue.frame.index.name == INDEX_NAME


def test_catalogue_drops_unlabelled(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [
        {"product_id": "a", "title": "A", "quality": "4.5"},
        {"product_id": "b", "title": "B", "quality": ""},
        {"product_id": "c", "title": "C", "quality": "2"},
    ]
    with caplog.at_level(logging.INFO, logger="training.catalogue"):
        catalogue = load_catalogue(write_catalogue(tmp_path, rows), tiny_spec())
    assert catalogue.product_ids == ["a", "c"]
    assert catalogue.labels.tolist() == [4.5, 2.0]
    assert "dropped 1 of 3 products without a quality label" in caplog.text


def test_catalogue_invalid_label(tmp_path: Path) -> None:
    rows = [{"product_id": "a", "title": "A", "quality": "good"}]
    with pytest.raises(CatalogueError) as error:
        load_catalogue(write_catalogue(tmp_path, rows), tiny_spec())
    assert "'good'" in str(error.value)
    assert "'a'" in str(error.value)


def test_catalogue_binary_labels(tmp_path: Path) -> None:
    values = ["True", "false", "1", "0", "1.0", ""]
    rows = [{"product_id": str(index), "title": "T", "quality": value} for index, value in enumerate(values)]
    catalogue = load_catalogue(write_catalogue(tmp_path, rows), tiny_spec("binary"))
    assert catalogue.labels.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert catalogue.product_ids == ["0", "1", "2", "3", "4"]


def test_catalogue_invalid_binary_label(tmp_path: Path) -> None:
    rows = [{"product_id": "a", "title": "A", "quality": "2"}]
    with pytest.raises(CatalogueError, match="Expected 1/0 or true/false"):
        load_catalogue(write_catalogue(tmp_path, rows), tiny_spec("binary"))


def auxiliary_spec() -> DatasetSpec:
    return tiny_spec(
        numeric_columns=["price"],
        missing_values={"category": ["unknown"]},
        auxiliary_labels={"stars": "regression", "keywords": "binary"},
    )


def test_catalogue_auxiliary_labels(tmp_path: Path) -> None:
    rows = [
        {"product_id": "a", "title": "A", "quality": "3", "stars": "4.5", "keywords": "true"},
        {"product_id": "b", "title": "B", "quality": "", "stars": "2", "keywords": "0"},
        {"product_id": "c", "title": "C", "quality": "1", "stars": "", "keywords": ""},
    ]
    catalogue = load_catalogue(write_catalogue(tmp_path, rows), auxiliary_spec())

    auxiliary = catalogue.auxiliary_labels
    assert list(auxiliary) == ["stars", "keywords"]
    np.testing.assert_array_equal(auxiliary["stars"], [4.5, np.nan])
    np.testing.assert_array_equal(auxiliary["keywords"], [1.0, np.nan])
    assert "stars" not in catalogue.attributes().columns


def test_catalogue_invalid_auxiliary_label(tmp_path: Path) -> None:
    rows = [{"product_id": "a", "title": "A", "quality": "3", "keywords": "maybe"}]
    with pytest.raises(CatalogueError, match="keywords is 'maybe' for product 'a'"):
        load_catalogue(write_catalogue(tmp_path, rows), auxiliary_spec())


def test_catalogue_duplicate_ids(tmp_path: Path) -> None:
    rows = [
        {"product_id": "a", "title": "A", "quality": "1"},
        {"product_id": "a", "title": "B", "quality": "2"},
    ]
    with pytest.raises(CatalogueError, match="duplicated id"):
        load_catalogue(write_catalogue(tmp_path, rows), tiny_spec())


def test_catalogue_empty_id(tmp_path: Path) -> None:
    rows = [
        {"product_id": "a", "title": "A", "quality": "1"},
        {"product_id": " ", "title": "B", "quality": "2"},
    ]
    with pytest.raises(CatalogueError, match=r"empty on 1 row.*data row\(s\) 2"):
        load_catalogue(write_catalogue(tmp_path, rows), tiny_spec())


def test_catalogue_missing_column(tmp_path: Path) -> None:
    root = write_catalogue(tmp_path, numbered_rows(2))
    with pytest.raises(SpecError) as error:
        load_catalogue(root, tiny_spec(numeric_columns=["price", "stars", "weight"]))
    assert "weight" in str(error.value)
    assert str(root / PRODUCTS_FILE) in str(error.value)


def test_catalogue_text_joins_columns(tmp_path: Path) -> None:
    rows = [
        {"product_id": "a", "title": " Red  mug ", "description": "Holds\r\n\ttea.", "quality": "1"},
        {"product_id": "b", "title": "Blue mug", "description": "  ", "quality": "1"},
        {"product_id": "c", "title": "", "description": "No title here.", "quality": "1"},
    ]
    catalogue = load_catalogue(write_catalogue(tmp_path, rows), tiny_spec())
    assert catalogue.text("a") == "Red mug\nHolds tea."
    assert catalogue.text("b") == "Blue mug"
    assert catalogue.text("c") == "No title here."
    assert catalogue.texts() == ["Red mug\nHolds tea.", "Blue mug", "No title here."]


def test_catalogue_missing_image_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = numbered_rows(3)
    root = write_catalogue(tmp_path, rows)
    (root / rows[1]["image_path"]).unlink()
    with caplog.at_level(logging.WARNING, logger="training.catalogue"):
        catalogue = load_catalogue(root, tiny_spec())
    assert catalogue.image_path("0000") == (root / "images" / "0000.png").resolve()
    assert catalogue.image_path("0001") is None
    assert catalogue.image_paths()[1] is None
    assert catalogue.missing_image_count == 1
    assert "1 image file(s) not found" in caplog.text
    assert "0001" in caplog.text


def test_catalogue_empty_image_path(tmp_path: Path) -> None:
    rows = [{"product_id": "a", "title": "A", "quality": "1", "image_path": ""}]
    catalogue = load_catalogue(write_catalogue(tmp_path, rows), tiny_spec())
    assert catalogue.image_path("a") is None
    assert catalogue.missing_image_count == 1


def test_catalogue_image_outside_root(tmp_path: Path) -> None:
    rows = [{"product_id": "a", "title": "A", "quality": "1", "image_path": "../elsewhere.png"}]
    with pytest.raises(CatalogueError, match="outside the catalogue folder"):
        load_catalogue(write_catalogue(tmp_path / "catalogue", rows), tiny_spec())


def test_catalogue_numeric_coercion(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [
        {"product_id": "a", "title": "A", "quality": "1", "price": "12.5", "stars": "4"},
        {"product_id": "b", "title": "B", "quality": "1", "price": "cheap", "stars": "0"},
        {"product_id": "c", "title": "C", "quality": "1", "price": "inf", "stars": ""},
    ]
    with caplog.at_level(logging.WARNING, logger="training.catalogue"):
        catalogue = load_catalogue(write_catalogue(tmp_path, rows), tiny_spec())
    prices = catalogue.frame["price"]
    assert prices.dtype == np.float64
    assert prices["a"] == 12.5
    assert math.isnan(prices["b"])
    assert math.isnan(prices["c"])
    assert "price has 2 value(s) that are not finite numbers" in caplog.text
    # 0 is the spec's missing-value marker for stars.
    assert catalogue.frame["stars"]["a"] == 4.0
    assert math.isnan(catalogue.frame["stars"]["b"])


def test_catalogue_categorical_values(tmp_path: Path) -> None:
    rows = [
        {"product_id": "a", "title": "A", "quality": "1", "category": "1990"},
        {"product_id": "b", "title": "B", "quality": "1", "category": ""},
        {"product_id": "c", "title": "C", "quality": "1", "category": "unknown"},
        {"product_id": "d", "title": "D", "quality": "1", "category": "NA"},
    ]
    catalogue = load_catalogue(write_catalogue(tmp_path, rows), tiny_spec())
    assert catalogue.frame["category"].tolist() == ["1990", None, None, "NA"]


def test_catalogue_attribute_rows(tmp_path: Path) -> None:
    rows = [
        {"product_id": "a", "title": "A", "quality": "1", "price": "3", "stars": "5", "category": "mug"},
        {"product_id": "b", "title": "B", "quality": "1"},
    ]
    catalogue = load_catalogue(write_catalogue(tmp_path, rows), tiny_spec())
    assert catalogue.attribute_rows() == [
        {"price": 3.0, "stars": 5.0, "category": "mug"},
        {"price": None, "stars": None, "category": None},
    ]
    assert list(catalogue.attributes().columns) == ["price", "stars", "category"]


def test_catalogue_tag_columns(tmp_path: Path) -> None:
    rows = [
        {"product_id": "a", "title": "A", "quality": "1", "keywords": " red; round ", "description": "Big; Bold"},
        {"product_id": "b", "title": "B", "quality": "1", "keywords": "  "},
    ]
    spec = tiny_spec(tag_columns={"keywords": "; ", "description": "; "})
    catalogue = load_catalogue(write_catalogue(tmp_path, rows), spec)

    assert list(catalogue.attributes().columns) == ["price", "stars", "category", "keywords", "description"]
    rows_out = catalogue.attribute_rows()
    assert rows_out[0]["keywords"] == "red; round"
    assert rows_out[0]["description"] == "Big; Bold"
    assert rows_out[1]["keywords"] is None
    assert rows_out[1]["description"] is None
    # The description stays in the text as well.
    assert catalogue.text("a") == "A\nBig; Bold"


def test_catalogue_weights(tmp_path: Path) -> None:
    rows = [{"product_id": "a", "title": "A", "quality": "1", "reviews": "250"}]
    catalogue = load_catalogue(write_catalogue(tmp_path, rows), tiny_spec())
    assert catalogue.weights is not None
    assert catalogue.weights.tolist() == [250.0]
    assert load_catalogue(tmp_path, tiny_spec(weight_column=None)).weights is None


def test_catalogue_limit_reproducible(tmp_path: Path) -> None:
    root = write_catalogue(tmp_path, numbered_rows(50))
    first = load_catalogue(root, tiny_spec(), limit=10, seed=1)
    again = load_catalogue(root, tiny_spec(), limit=10, seed=1)
    other = load_catalogue(root, tiny_spec(), limit=10, seed=2)
    assert len(first) == 10
    assert first.product_ids == again.product_ids
    assert first.product_ids != other.product_ids
    assert first.product_ids == sorted(first.product_ids)  # file order kept
    assert first.labels.tolist() == [int(product_id) % 5 for product_id in first.product_ids]


def test_catalogue_limit_above_size(tmp_path: Path) -> None:
    root = write_catalogue(tmp_path, numbered_rows(5))
    assert len(load_catalogue(root, tiny_spec(), limit=100)) == 5


def test_catalogue_limit_zero(tmp_path: Path) -> None:
    root = write_catalogue(tmp_path, numbered_rows(5))
    with pytest.raises(ValueError, match="limit"):
        load_catalogue(root, tiny_spec(), limit=0)


def test_catalogue_subset(tmp_path: Path) -> None:
    catalogue = load_catalogue(write_catalogue(tmp_path, numbered_rows(6)), tiny_spec())
    part = catalogue.subset([4, 1])
    assert isinstance(part, Catalogue)
    assert part.product_ids == ["0004", "0001"]
    assert part.texts() == ["Product 4", "Product 1"]
    assert len(catalogue) == 6


def test_split_reproducible(tmp_path: Path) -> None:
    catalogue = load_catalogue(write_catalogue(tmp_path, numbered_rows(100), images=False), tiny_spec())
    split = catalogue.split(seed=3)
    assert (len(split.train), len(split.validation), len(split.test)) == (70, 15, 15)
    combined = np.concatenate([split.train, split.validation, split.test])
    assert sorted(combined.tolist()) == list(range(100))
    again = catalogue.split(seed=3)
    assert np.array_equal(split.train, again.train)
    assert np.array_equal(split.test, again.test)
    other = catalogue.split(seed=4)
    assert not np.array_equal(split.test, other.test)


def test_split_stratified_binary(tmp_path: Path) -> None:
    rows = [
        {"product_id": str(index), "title": "T", "quality": "1" if index % 10 == 0 else "0"}
        for index in range(200)
    ]
    catalogue = load_catalogue(write_catalogue(tmp_path, rows), tiny_spec("binary"))
    split = catalogue.split(seed=0)
    for part in (split.train, split.validation, split.test):
        assert catalogue.labels[part].mean() == pytest.approx(0.1, abs=0.02)


def test_split_invalid_fractions(tmp_path: Path) -> None:
    catalogue = load_catalogue(write_catalogue(tmp_path, numbered_rows(10), images=False), tiny_spec())
    with pytest.raises(ValueError, match="leave training rows"):
        catalogue.split(validation_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="test_fraction"):
        catalogue.split(test_fraction=-0.1)


def test_split_without_validation(tmp_path: Path) -> None:
    catalogue = load_catalogue(write_catalogue(tmp_path, numbered_rows(10), images=False), tiny_spec())
    split = catalogue.split(validation_fraction=0.0, test_fraction=0.2)
    assert (len(split.train), len(split.validation), len(split.test)) == (8, 0, 2)


def test_sample_catalogue_loads(tmp_path: Path) -> None:
    root = generate_sample_catalogue(tmp_path, n_products=30, seed=0)
    catalogue = load_catalogue(root, load_spec("sample"))
    assert len(catalogue) == 30
    assert catalogue.missing_image_count == 0
    assert "return_rate" not in catalogue.frame.columns
    assert catalogue.text(catalogue.product_ids[0]).count("\n") == 1


def real_root(name: str) -> Path:
    root = default_datasets_dir() / name
    if not (root / PRODUCTS_FILE).is_file():
        pytest.skip(
            f"{root / PRODUCTS_FILE} not found. Set PQ_DATASETS_DIR to the folder that contains {name}/"
        )
    return root


@pytest.mark.slow
def test_boardgames_catalogue() -> None:
    spec = load_spec("boardgames")
    catalogue = load_catalogue(real_root("boardgames"), spec)
    assert len(catalogue) == 4000
    assert catalogue.missing_image_count == 0
    for column in spec.excluded_names:
        if column != spec.weight_column:
            assert column not in catalogue.frame.columns
    # Year 0 and play time 0 mean "unknown" in this data.
    assert not (catalogue.frame["year_published"] == 0).any()
    assert catalogue.frame["year_published"].isna().sum() == 5
    assert catalogue.labels.min() >= 1.0
    assert catalogue.labels.max() <= 10.0
    assert catalogue.text(catalogue.product_ids[0]).startswith(catalogue.frame["title"].iloc[0] + "\n")


def test_boardgames_mechanics_encoded() -> None:
    root = real_root("boardgames")
    spec = load_spec("boardgames")
    catalogue = load_catalogue(root, spec, limit=400, seed=0)

    attributes = catalogue.attributes()
    assert "mechanics" in attributes.columns
    encoder = AttributeEncoder(
        spec.numeric_columns, spec.categorical_columns, spec.log_scale_columns, tags=spec.tag_columns
    ).fit(attributes)
    vocabulary = encoder.tag_vocabularies["mechanics"]
    assert "Hand Management" in vocabulary[:5]
    assert all("; " not in tag and tag == tag.strip() for tag in vocabulary)

    encoded = encoder.transform(catalogue.attribute_rows())
    start = 2 * len(spec.numeric_columns)
    block = encoded.numeric[:, start : start + len(vocabulary)]  # (N, V) multi-hot
    first = catalogue.frame["mechanics"].iloc[0]
    expected = {tag for tag in first.split("; ") if tag in vocabulary} if first else set()
    assert {vocabulary[i] for i in np.flatnonzero(block[0])} == expected


@pytest.mark.slow
def test_flipkart_catalogue() -> None:
    catalogue = load_catalogue(real_root("flipkart"), load_spec("flipkart"))
    assert len(catalogue) == 1047
    assert set(np.unique(catalogue.labels).tolist()) == {0.0, 1.0}
    assert catalogue.labels.mean() == pytest.approx(0.154, abs=0.01)
    assert "\r" not in "".join(catalogue.texts())
    split = catalogue.split(seed=0)
    assert catalogue.labels[split.test].mean() == pytest.approx(catalogue.labels.mean(), abs=0.02)


@pytest.mark.slow
def test_boardgames_limit_reproducible() -> None:
    root = real_root("boardgames")
    spec = load_spec("boardgames")
    first = load_catalogue(root, spec, limit=100, seed=7)
    again = load_catalogue(root, spec, limit=100, seed=7)
    assert first.product_ids == again.product_ids
    assert all(path is not None and path.is_file() for path in first.image_paths())
