import json
import math

import numpy as np
import pandas as pd
import pytest

from fusion.attributes import UNKNOWN_INDEX, AttributeEncoder, AttributeEncodingError, is_missing_value


def _training_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "price": [10.0, 100.0, 1000.0, np.nan, 50.0, 5.0],
            "weight_kg": [1.0, 2.0, 3.0, 4.0, np.nan, 2.0],
            "brand": ["acme", "acme", "zeta", "acme", "zeta", "rare"],
            "year": [2019.0, 2019.0, np.nan, 2020.0, 2020.0, 2019.0],
        }
    )


def _fitted() -> AttributeEncoder:
    encoder = AttributeEncoder(["price", "weight_kg"], ["brand", "year"], ["price"], min_count=2)
    return encoder.fit(_training_frame())


def test_encoder_dims_and_vocabulary():
    encoder = _fitted()

    assert encoder.numeric_dim == 4
    assert encoder.vocabularies["brand"] == ["acme", "zeta"]
    assert encoder.vocabularies["year"] == ["2019", "2020"]
    assert encoder.categorical_cardinalities == [3, 3]


def test_encoder_log_scale_standardised():
    encoder = _fitted()
    encoded = encoder.transform_frame(_training_frame())
    observed_prices = np.log1p([10.0, 100.0, 1000.0, 50.0, 5.0])

    assert encoder.means["price"] == pytest.approx(observed_prices.mean())
    assert encoder.stds["price"] == pytest.approx(observed_prices.std())
    observed_rows = [0, 1, 2, 4, 5]
    assert encoded.numeric[observed_rows, 0].mean() == pytest.approx(0.0, abs=1e-6)
    assert encoded.numeric[observed_rows, 0].std() == pytest.approx(1.0, abs=1e-5)


def test_encoder_dict_round_trip():
    encoder = _fitted()
    restored = AttributeEncoder.from_dict(json.loads(json.dumps(encoder.to_dict())))
    frame = _training_frame()

    original = encoder.transform_frame(frame)
    again = restored.transform_frame(frame)
    np.testing.assert_array_equal(original.numeric, again.numeric)
    np.testing.assert_array_equal(original.categorical, again.categorical)
    np.testing.assert_array_equal(original.any_present, again.any_present)


def test_rows_match_frame_path():
    encoder = _fitted()
    frame = _training_frame()
    rows = [
        {column: (None if isinstance(value, float) and math.isnan(value) else value) for column, value in row.items()}
        for row in frame.to_dict(orient="records")
    ]

    from_rows = encoder.transform(rows)
    from_frame = encoder.transform_frame(frame)
    np.testing.assert_array_equal(from_rows.numeric, from_frame.numeric)
    np.testing.assert_array_equal(from_rows.categorical, from_frame.categorical)


def test_unknown_categories_map_to_zero():
    encoder = _fitted()
    encoded = encoder.transform(
        [
            {"brand": "never-seen", "year": "1999"},
            {"brand": "rare", "year": None},
            {"brand": "  ", "year": 2020},
            {"brand": "zeta", "year": "2019"},
        ]
    )

    assert encoded.categorical[0].tolist() == [UNKNOWN_INDEX, UNKNOWN_INDEX]
    assert encoded.categorical[1].tolist() == [UNKNOWN_INDEX, UNKNOWN_INDEX]  # "rare" is below min_count
    assert encoded.categorical[2].tolist() == [UNKNOWN_INDEX, 2]
    assert encoded.categorical[3].tolist() == [2, 1]


@pytest.mark.parametrize("price", [float("nan"), float("inf"), float("-inf"), -3.0, None, "", "  "])
def test_invalid_prices_are_missing(price):
    encoder = _fitted()
    encoded = encoder.transform([{"price": price, "weight_kg": 2.0}])

    assert encoded.numeric[0, 0] == 0.0  # value slot at the training mean
    assert encoded.numeric[0, 2] == 1.0  # missing indicator of price
    assert encoded.numeric[0, 3] == 0.0  # weight_kg is present
    assert np.isfinite(encoded.numeric).all()


def test_negative_allowed_without_log_scale():
    encoder = _fitted()
    encoded = encoder.transform([{"weight_kg": -1.0}])

    assert encoded.numeric[0, 3] == 0.0
    assert encoded.numeric[0, 1] == pytest.approx((-1.0 - encoder.means["weight_kg"]) / encoder.stds["weight_kg"])


def test_frame_invalid_prices_are_missing():
    encoder = _fitted()
    frame = pd.DataFrame(
        {"price": [np.inf, -1.0, 0.0], "weight_kg": [np.nan, np.nan, np.nan], "brand": [None] * 3, "year": [None] * 3}
    )
    encoded = encoder.transform_frame(frame)

    assert encoded.numeric[:, 2].tolist() == [1.0, 1.0, 0.0]
    assert encoded.numeric[2, 0] == pytest.approx((np.log1p(0.0) - encoder.means["price"]) / encoder.stds["price"])


def test_any_present_per_row():
    encoder = _fitted()
    encoded = encoder.transform([None, {}, {"price": -5.0}, {"brand": "unseen"}, {"weight_kg": 1.0}])

    assert encoded.any_present.tolist() == [False, False, False, True, True]
    assert encoded.numeric[0, 2:].tolist() == [1.0, 1.0]


def test_numeric_strings_parsed():
    encoder = _fitted()
    from_string = encoder.transform([{"price": "100"}])
    from_number = encoder.transform([{"price": 100}])

    np.testing.assert_array_equal(from_string.numeric, from_number.numeric)


def test_non_numeric_string_raises():
    encoder = _fitted()

    with pytest.raises(AttributeEncodingError, match="'price'.*'cheap'"):
        encoder.transform([{"price": "cheap"}])


def test_extra_keys_ignored():
    encoder = _fitted()
    encoded = encoder.transform([{"price": 10.0, "product_id": "p1"}])

    assert encoded.numeric.shape == (1, 4)


def test_frame_missing_column_raises():
    encoder = _fitted()

    with pytest.raises(AttributeEncodingError, match="weight_kg"):
        encoder.transform_frame(_training_frame().drop(columns=["weight_kg"]))


def test_unfitted_transform_raises():
    encoder = AttributeEncoder(["price"], [], ["price"])

    with pytest.raises(AttributeEncodingError, match="not fitted"):
        encoder.transform([{"price": 1.0}])


def test_constructor_rejects_bad_columns():
    with pytest.raises(AttributeEncodingError, match="more than once"):
        AttributeEncoder(["price"], ["price"], [])
    with pytest.raises(AttributeEncodingError, match="not numeric"):
        AttributeEncoder(["price"], ["brand"], ["brand"])


def test_all_missing_column_stays_finite():
    encoder = AttributeEncoder(["price"], [], ["price"]).fit(pd.DataFrame({"price": [np.nan, -1.0]}))
    encoded = encoder.transform([{"price": 3.0}])

    assert encoder.means["price"] == 0.0
    assert encoder.stds["price"] == 1.0
    assert np.isfinite(encoded.numeric).all()


def test_is_missing_value_cases():
    assert is_missing_value(None)
    assert is_missing_value(pd.NA)
    assert is_missing_value(float("nan"))
    assert is_missing_value(np.float32("inf"))
    assert is_missing_value(" ")
    assert not is_missing_value(0.0)
    assert not is_missing_value("a")


def _tag_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "price": [10.0, 20.0, 30.0, 40.0, 50.0],
            "mechanics": [
                "Dice Rolling; Hand Management",
                "Hand Management;Worker Placement",
                " Hand Management ; dice rolling; Hand Management",
                None,
                "Dice Rolling; Solo",
            ],
        }
    )


def _tag_encoder(**options: int) -> AttributeEncoder:
    return AttributeEncoder(["price"], [], tags={"mechanics": ";"}, **options).fit(_tag_frame())


def test_tag_vocabulary_by_frequency():
    encoder = _tag_encoder(min_count=2)

    # Hand Management is in 3 rows (twice in one), Dice Rolling in 2; case is kept, so
    # "dice rolling", Worker Placement and Solo appear once each and stay out.
    assert encoder.tag_vocabularies["mechanics"] == ["Hand Management", "Dice Rolling"]
    assert encoder.columns == ["price", "mechanics"]
    # price value and indicator, then 2 tag slots, the other-tags count and the missing indicator.
    assert encoder.numeric_dim == 2 + 2 + 2


def test_tag_multi_hot_rows():
    encoder = _tag_encoder(min_count=2)
    rows = [
        {"price": 10.0, "mechanics": "Dice Rolling; Hand Management"},
        {"price": 10.0, "mechanics": "Hand Management; Hand Management; Trading; Voting"},
        {"price": 10.0, "mechanics": " ; "},
        {"price": 10.0},
        {"mechanics": "Dice Rolling"},
    ]
    encoded = encoder.transform(rows)
    tags = encoded.numeric[:, 2:]  # (N, 4): Hand Management, Dice Rolling, log1p(other count), missing

    np.testing.assert_array_equal(tags[0], [1.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(tags[1], [1.0, 0.0, np.log1p(2.0), 0.0], rtol=1e-6)
    np.testing.assert_array_equal(tags[2], [0.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(tags[3], [0.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(tags[4], [0.0, 1.0, 0.0, 0.0])
    assert encoded.any_present.tolist() == [True, True, True, True, True]
    assert encoder.transform([{"mechanics": ";"}]).any_present.tolist() == [False]


def test_tag_rows_match_frame_path():
    encoder = _tag_encoder(min_count=1)
    frame = _tag_frame()
    rows = frame.to_dict(orient="records")

    np.testing.assert_array_equal(encoder.transform(rows).numeric, encoder.transform_frame(frame).numeric)


def test_tag_vocabulary_cap():
    encoder = _tag_encoder(min_count=1, max_tag_vocabulary=2)

    assert encoder.tag_vocabularies["mechanics"] == ["Hand Management", "Dice Rolling"]
    encoded = encoder.transform([{"mechanics": "Solo; Worker Placement; Hand Management"}])
    np.testing.assert_allclose(encoded.numeric[0, 2:], [1.0, 0.0, np.log1p(2.0), 0.0], rtol=1e-6)


def test_tag_dict_round_trip():
    encoder = _tag_encoder(min_count=1, max_tag_vocabulary=3)
    data = json.loads(json.dumps(encoder.to_dict()))
    restored = AttributeEncoder.from_dict(data)

    assert data["tags"] == {"mechanics": ";"}
    assert restored.tags == {"mechanics": ";"}
    assert restored.max_tag_vocabulary == 3
    assert restored.tag_vocabularies == encoder.tag_vocabularies
    assert restored.numeric_dim == encoder.numeric_dim
    np.testing.assert_array_equal(
        restored.transform_frame(_tag_frame()).numeric, encoder.transform_frame(_tag_frame()).numeric
    )


def test_version_1_dict_loads():
    encoder = _fitted()
    data = encoder.to_dict()
    for key in ("tags", "max_tag_vocabulary", "tag_vocabularies"):
        del data[key]
    data["format_version"] = 1

    restored = AttributeEncoder.from_dict(data)

    assert restored.tags == {}
    assert restored.numeric_dim == 4
    np.testing.assert_array_equal(
        restored.transform_frame(_training_frame()).numeric, encoder.transform_frame(_training_frame()).numeric
    )


def test_unsupported_format_version():
    data = _fitted().to_dict()
    data["format_version"] = 99
    with pytest.raises(AttributeEncodingError, match="format version 99"):
        AttributeEncoder.from_dict(data)


def test_tag_encoder_invalid_options():
    with pytest.raises(AttributeEncodingError, match="more than once"):
        AttributeEncoder(["price"], ["mechanics"], tags={"mechanics": ";"})
    with pytest.raises(AttributeEncodingError, match="no separator"):
        AttributeEncoder(["price"], [], tags={"mechanics": ""})
    with pytest.raises(AttributeEncodingError, match="max_tag_vocabulary"):
        AttributeEncoder(["price"], [], tags={"mechanics": ";"}, max_tag_vocabulary=0)


def test_tag_numeric_dim_needs_fit():
    with pytest.raises(AttributeEncodingError, match="not fitted"):
        _ = AttributeEncoder(["price"], [], tags={"mechanics": ";"}).numeric_dim


def test_many_unknown_tags_stay_bounded():
    encoder = _tag_encoder(min_count=1)
    many = "; ".join(f"Unknown {index}" for index in range(10_000))

    encoded = encoder.transform([{"mechanics": many}])

    other_count = encoded.numeric[0, 2 + len(encoder.tag_vocabularies["mechanics"])]
    assert other_count == pytest.approx(np.log1p(10_000), rel=1e-6)
    assert other_count < 10.0
