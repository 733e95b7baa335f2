"""Tests that features.redis_layout produces the same bytes as Feast 0.67's own Redis helpers."""

from __future__ import annotations

import math
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import DoubleList, Null, Value
from google.protobuf.timestamp_pb2 import Timestamp

import features
from features.config import ENTITY_KEY_SERIALIZATION_VERSION
from features.redis_layout import (
    UnsupportedValueError,
    decode_timestamp,
    decode_value,
    encode_timestamp,
    encode_value,
    entity_key_bytes,
    feature_field,
    redis_key,
    timestamp_field,
)


def _entity_key(product_id: str) -> EntityKey:
    return EntityKey(join_keys=["product_id"], entity_values=[Value(string_val=product_id)])


@pytest.mark.parametrize("product_id", ["p1", "", "produit-été-42", "x" * 300])
def test_entity_key_matches_feast(product_id: str) -> None:
    expected = serialize_entity_key(
        _entity_key(product_id), entity_key_serialization_version=ENTITY_KEY_SERIALIZATION_VERSION
    )
    assert entity_key_bytes(product_id) == expected


def test_redis_key_matches_feast() -> None:
    expected = _redis_key(
        "pq_project", _entity_key("p1"), entity_key_serialization_version=ENTITY_KEY_SERIALIZATION_VERSION
    )
    assert redis_key("pq_project", "p1") == expected


@pytest.mark.parametrize(
    ("view", "feature"),
    [("product_attributes", "price"), ("image_embeddings__m_0123abcd", "image_embedding"), ("v", "é")],
)
def test_feature_field_matches_feast(view: str, feature: str) -> None:
    assert feature_field(view, feature) == _mmh3(f"{view}:{feature}")


def test_timestamp_field_matches_feast_layout() -> None:
    # Feast's RedisOnlineStore.online_write_batch uses f"_ts:{feature_view}" as the field name.
    assert timestamp_field("product_attributes") == b"_ts:product_attributes"


@pytest.mark.parametrize(
    ("value", "feast_value"),
    [
        (b"\x00\x01packed", Value(bytes_val=b"\x00\x01packed")),
        ("brand_1", Value(string_val="brand_1")),
        (12.5, Value(double_val=12.5)),
        (None, Value()),
    ],
)
def test_value_encoding_matches_feast(value: bytes | str | float | None, feast_value: Value) -> None:
    assert encode_value(value) == feast_value.SerializeToString()
    assert decode_value(feast_value.SerializeToString()) == value


@pytest.mark.parametrize(
    ("feast_value", "expected"),
    [
        (Value(int64_val=-3), -3),
        (Value(float_val=0.5), 0.5),
        (Value(bool_val=True), True),
        (Value(null_val=Null.NULL), None),
    ],
)
def test_value_decoding_of_other_scalars(feast_value: Value, expected: object) -> None:
    assert decode_value(feast_value.SerializeToString()) == expected


def test_value_decoding_keeps_nan() -> None:
    assert math.isnan(decode_value(Value(double_val=float("nan")).SerializeToString()))


def test_value_decoding_rejects_lists() -> None:
    data = Value(double_list_val=DoubleList(val=[1.0, 2.0])).SerializeToString()
    with pytest.raises(UnsupportedValueError, match="value kind"):
        decode_value(data)


def test_timestamp_round_trip_keeps_microseconds() -> None:
    moment = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc)
    feast_timestamp = Timestamp()
    feast_timestamp.FromDatetime(moment)
    assert encode_timestamp(moment) == feast_timestamp.SerializeToString()
    assert decode_timestamp(encode_timestamp(moment)) == moment


def test_fast_path_does_not_import_feast() -> None:
    code = (
        "import sys, features.online, features.redis_reader, features.writer; "
        "print(sorted(name for name in ('feast', 'torch') if name in sys.modules))"
    )
    repo_root = Path(features.__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo_root
    )
    assert result.stdout.strip() == "[]"
