"""Tests of dataset spec loading and validation, including the built-in specs on their catalogues."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from training.catalogue import PRODUCTS_FILE, default_datasets_dir, load_catalogue
from training.sample import generate_sample_catalogue
from training.spec import SpecError, builtin_spec_names, load_spec, spec_from_dict

VALID = {
    "name": "tiny",
    "id_column": "product_id",
    "image_column": "image_path",
    "text_columns": ["title", "description"],
    "numeric_columns": ["price"],
    "categorical_columns": ["category"],
    "log_scale_columns": ["price"],
    "label_column": "quality",
    "task": "regression",
    "excluded_columns": {"returns": {"kind": "leak", "reason": "Counted after sale."}},
}


def write_spec(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def changed(**updates: object) -> dict:
    data = dict(VALID)
    data.update(updates)
    return data


def test_spec_valid_file(tmp_path: Path) -> None:
    path = write_spec(tmp_path, VALID)
    spec = load_spec(path)
    assert spec.name == "tiny"
    assert spec.title_column == "title"
    assert spec.text_columns == ("title", "description")
    assert spec.input_columns == ("image_path", "title", "description", "price", "category")
    assert spec.leak_columns == ("returns",)
    assert spec.weight_column is None
    assert spec.source == path


def test_spec_path_as_string(tmp_path: Path) -> None:
    path = write_spec(tmp_path, VALID)
    assert load_spec(str(path)).name == "tiny"


def test_spec_unknown_key(tmp_path: Path) -> None:
    path = write_spec(tmp_path, changed(lable_column="quality"))
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert str(path) in str(error.value)
    assert "lable_column" in str(error.value)


def test_spec_unknown_exclusion_key(tmp_path: Path) -> None:
    excluded = {"returns": {"kind": "leak", "reason": "after sale", "why": "typo"}}
    path = write_spec(tmp_path, changed(excluded_columns=excluded))
    with pytest.raises(SpecError, match=r"excluded_columns\.returns.*why"):
        load_spec(path)


def test_spec_missing_required_key(tmp_path: Path) -> None:
    data = dict(VALID)
    del data["label_column"]
    path = write_spec(tmp_path, data)
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert str(path) in str(error.value)
    assert "label_column" in str(error.value)


def test_spec_excluded_column_is_input(tmp_path: Path) -> None:
    excluded = {"price": {"kind": "leak", "reason": "Set after sale."}}
    path = write_spec(tmp_path, changed(excluded_columns=excluded))
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert str(path) in str(error.value)
    assert "excluded_columns.price" in str(error.value)
    assert "numeric_columns" in str(error.value)


def test_spec_excluded_label(tmp_path: Path) -> None:
    excluded = {"quality": {"kind": "leak", "reason": "It is the label."}}
    with pytest.raises(SpecError, match="label_column"):
        load_spec(write_spec(tmp_path, changed(excluded_columns=excluded)))


def test_spec_weight_may_be_excluded(tmp_path: Path) -> None:
    excluded = {"reviews": {"kind": "not_input", "reason": "Known after sale."}}
    spec = load_spec(write_spec(tmp_path, changed(weight_column="reviews", excluded_columns=excluded)))
    assert spec.weight_column == "reviews"
    assert "reviews" not in spec.input_columns


def test_spec_bad_exclusion_kind(tmp_path: Path) -> None:
    excluded = {"returns": {"kind": "leaky", "reason": "after sale"}}
    with pytest.raises(SpecError, match=r"excluded_columns\.returns\.kind"):
        load_spec(write_spec(tmp_path, changed(excluded_columns=excluded)))


def test_spec_exclusion_without_reason(tmp_path: Path) -> None:
    excluded = {"returns": {"kind": "leak"}}
    with pytest.raises(SpecError, match=r"excluded_columns\.returns\.reason"):
        load_spec(write_spec(tmp_path, changed(excluded_columns=excluded)))


def test_spec_column_with_two_roles(tmp_path: Path) -> None:
    path = write_spec(tmp_path, changed(categorical_columns=["category", "price"]))
    with pytest.raises(SpecError, match=r"price \(numeric_columns and categorical_columns\)"):
        load_spec(path)


def test_spec_log_scale_not_numeric(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="log_scale_columns: category"):
        load_spec(write_spec(tmp_path, changed(log_scale_columns=["category"])))


def test_spec_invalid_task(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="task: expected one of regression, binary"):
        load_spec(write_spec(tmp_path, changed(task="ranking")))


def test_spec_no_text_columns(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="text_columns: expected at least one column"):
        load_spec(write_spec(tmp_path, changed(text_columns=[])))


def test_spec_duplicate_column(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="listed more than once: title"):
        load_spec(write_spec(tmp_path, changed(text_columns=["title", "title"])))


def test_spec_list_of_non_strings(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="numeric_columns"):
        load_spec(write_spec(tmp_path, changed(numeric_columns=["price", 3])))


def test_spec_missing_values_on_text(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"missing_values\.title"):
        load_spec(write_spec(tmp_path, changed(missing_values={"title": ["n/a"]})))


def test_spec_missing_values_text_on_numeric(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"missing_values\.price"):
        load_spec(write_spec(tmp_path, changed(missing_values={"price": ["n/a"]})))


def test_spec_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(SpecError, match="expected a mapping"):
        load_spec(path)


def test_spec_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(SpecError, match="invalid YAML"):
        load_spec(path)


def test_spec_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "absent.yaml")


def test_spec_unknown_builtin_name() -> None:
    with pytest.raises(SpecError) as error:
        load_spec("boardgame")
    assert "boardgames" in str(error.value)


def test_spec_round_trip() -> None:
    for name in builtin_spec_names():
        spec = load_spec(name)
        assert spec_from_dict(spec.to_dict()) == spec


def test_builtin_spec_names() -> None:
    assert builtin_spec_names() == ["boardgames", "flipkart", "sample"]


def test_builtin_specs_keep_exclusions_out() -> None:
    for name in builtin_spec_names():
        spec = load_spec(name)
        for column in spec.excluded_names:
            assert column not in spec.input_columns, f"{name}: excluded {column} is an input"
        assert spec.label_column not in spec.input_columns
        if spec.weight_column is not None:
            assert spec.weight_column not in spec.input_columns


def test_boardgames_leaks_excluded() -> None:
    spec = load_spec("boardgames")
    assert set(spec.leak_columns) == {"rating_sd", "complexity_weight", "num_owned", "num_comments"}
    assert spec.weight_column == "rating_count"
    assert "rating_count" in spec.excluded_names
    assert spec.label_column == "avg_rating"
    assert spec.task == "regression"
    assert spec.log_scale_columns == ("price_usd",)


def test_flipkart_other_labels_excluded() -> None:
    spec = load_spec("flipkart")
    assert spec.label_column == "has_rating"
    assert spec.task == "binary"
    assert "product_rating" in spec.leak_columns
    for column in ("is_fk_advantage", "crawl_timestamp", "category_tree", "product_specifications"):
        assert column in spec.excluded_names


def test_spec_auxiliary_labels(tmp_path: Path) -> None:
    auxiliary = {"returns": "regression", "resold": "binary"}
    spec = load_spec(write_spec(tmp_path, changed(auxiliary_labels=auxiliary)))
    assert spec.auxiliary_labels == auxiliary
    assert "resold" in spec.required_columns
    assert "returns" not in spec.input_columns
    assert "resold" not in spec.input_columns
    assert spec_from_dict(spec.to_dict()) == spec


def test_spec_auxiliary_labels_default_empty(tmp_path: Path) -> None:
    assert load_spec(write_spec(tmp_path, VALID)).auxiliary_labels == {}


@pytest.mark.parametrize(
    ("auxiliary_labels", "message"),
    [
        ({"price": "regression"}, r"price \(numeric_columns and auxiliary_labels\)"),
        ({"title": "binary"}, r"title \(text_columns and auxiliary_labels\)"),
        ({"quality": "regression"}, r"quality \(label_column and auxiliary_labels\)"),
        ({"product_id": "binary"}, r"product_id \(id_column and auxiliary_labels\)"),
        ({"returns": "ordinal"}, "auxiliary_labels.returns: expected one of regression, binary"),
        (["returns"], "auxiliary_labels: expected a mapping"),
    ],
)
def test_spec_invalid_auxiliary_labels(tmp_path: Path, auxiliary_labels: object, message: str) -> None:
    path = write_spec(tmp_path, changed(auxiliary_labels=auxiliary_labels))
    with pytest.raises(SpecError, match=message) as error:
        load_spec(path)
    assert str(path) in str(error.value)


@pytest.mark.slow
def test_flipkart_auxiliary_label_counts() -> None:
    root = default_datasets_dir() / "flipkart"
    if not (root / PRODUCTS_FILE).is_file():
        pytest.skip(f"{root / PRODUCTS_FILE} not found. Set PQ_DATASETS_DIR to the folder that contains flipkart/")
    spec = load_spec("flipkart")
    assert spec.auxiliary_labels == {"product_rating": "regression", "is_fk_advantage": "binary"}

    catalogue = load_catalogue(root, spec)

    rating = catalogue.auxiliary_labels["product_rating"]
    advantage = catalogue.auxiliary_labels["is_fk_advantage"]
    assert len(rating) == len(advantage) == 1047
    assert np.isfinite(rating).sum() == 161
    assert np.nanmin(rating) >= 1.0
    assert np.nanmax(rating) <= 5.0
    # The rating is present exactly for the products whose main label has_rating is 1.
    np.testing.assert_array_equal(np.isfinite(rating), catalogue.labels == 1.0)
    assert np.isfinite(advantage).all()
    assert advantage.sum() == 57


def test_check_csv_missing_column(tmp_path: Path) -> None:
    spec = spec_from_dict(VALID)
    csv_path = tmp_path / PRODUCTS_FILE
    csv_path.write_text("product_id,image_path,title,price,category,quality,returns\n", encoding="utf-8")
    with pytest.raises(SpecError) as error:
        spec.check_csv(csv_path)
    assert str(csv_path) in str(error.value)
    assert "description" in str(error.value)


def test_check_csv_excluded_column_required(tmp_path: Path) -> None:
    spec = spec_from_dict(VALID)
    csv_path = tmp_path / PRODUCTS_FILE
    csv_path.write_text("product_id,image_path,title,description,price,category,quality\n", encoding="utf-8")
    with pytest.raises(SpecError, match="returns"):
        spec.check_csv(csv_path)


def test_check_csv_empty_file(tmp_path: Path) -> None:
    csv_path = tmp_path / PRODUCTS_FILE
    csv_path.write_text("", encoding="utf-8")
    with pytest.raises(SpecError, match="empty"):
        spec_from_dict(VALID).check_csv(csv_path)


def test_sample_spec_matches_generated(tmp_path: Path) -> None:
    generate_sample_catalogue(tmp_path, n_products=5)
    load_spec("sample").check_csv(tmp_path / PRODUCTS_FILE)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["boardgames", "flipkart"])
def test_real_spec_matches_csv(name: str) -> None:
    csv_path = default_datasets_dir() / name / PRODUCTS_FILE
    if not csv_path.is_file():
        pytest.skip(f"{csv_path} not found. Set PQ_DATASETS_DIR to the folder that contains {name}/")
    load_spec(name).check_csv(csv_path)


def test_spec_tag_columns(tmp_path: Path) -> None:
    data = changed(text_columns=["title", "description", "keywords"], tag_columns={"keywords": ", "})
    spec = load_spec(write_spec(tmp_path, data))
    assert spec.tag_columns == {"keywords": ", "}
    assert spec.attribute_columns == ("price", "category", "keywords")
    assert spec.input_columns == ("image_path", "title", "description", "keywords", "price", "category")
    assert spec_from_dict(spec.to_dict()) == spec


def test_spec_tag_column_not_text(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, changed(tag_columns={"keywords": "|"})))
    assert spec.tag_columns == {"keywords": "|"}
    assert spec.input_columns[-1] == "keywords"
    assert "keywords" in spec.required_columns


def test_spec_tag_columns_default_empty(tmp_path: Path) -> None:
    assert load_spec(write_spec(tmp_path, VALID)).tag_columns == {}


@pytest.mark.parametrize(
    ("tag_columns", "message"),
    [
        (["keywords"], "tag_columns: expected a mapping"),
        ({"keywords": ""}, "tag_columns.keywords: expected a non-empty separator"),
        ({"keywords": 3}, "tag_columns.keywords: expected a non-empty separator"),
        ({"category": "; "}, r"category \(categorical_columns and tag_columns\)"),
        ({"price": "; "}, r"price \(numeric_columns and tag_columns\)"),
        ({"quality": "; "}, r"quality \(tag_columns and label_column\)"),
        ({"returns": "; "}, "excluded_columns.returns: .* also listed in tag_columns"),
        ({"description": "\t"}, "tag_columns.description: the column is also a text column"),
        ({"description": ";  "}, "tag_columns.description: the column is also a text column"),
    ],
)
def test_spec_invalid_tag_columns(tmp_path: Path, tag_columns: object, message: str) -> None:
    path = write_spec(tmp_path, changed(tag_columns=tag_columns))
    with pytest.raises(SpecError, match=message) as error:
        load_spec(path)
    assert str(path) in str(error.value)


def test_boardgames_mechanics_tags() -> None:
    spec = load_spec("boardgames")
    assert spec.tag_columns == {"mechanics": "; "}
    assert "mechanics" in spec.text_columns
    assert spec.attribute_columns[-1] == "mechanics"
    assert spec.input_columns.count("mechanics") == 1
