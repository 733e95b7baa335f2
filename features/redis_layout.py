"""Feast's Redis online store layout, reimplemented so that reads and writes need no `import feast`.

Importing any Feast module runs `feast/__init__.py`, which imports torch and takes seconds, so
the pieces below are small copies of Feast 0.67 code, checked against Feast in
tests/features/test_redis_layout.py. In that layout each entity has one Redis hash:

    key    serialize_entity_key(entity key, version 3) + project name in UTF-8
    field  murmur3_32("<view>:<feature>") as 4 little-endian bytes -> serialized feast.types.Value
    field  "_ts:<view>"                                            -> serialized google.protobuf.Timestamp

All views of an entity share its hash, so one HMGET reads every view of a product.
"""

from __future__ import annotations

import struct
from datetime import datetime, timezone
from typing import Any

import mmh3
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from features.config import ENTITY_KEY_SERIALIZATION_VERSION

# feast.types.ValueType.STRING in feast/protos/feast/types/Value.proto.
_VALUE_TYPE_STRING = 2

# Scalar fields of feast.types.Value (feast/protos/feast/types/Value.proto, Feast 0.67) with
# their field numbers. List, set, map and the other fields are left out because these features
# never use them. A value of such a kind decodes as unsupported instead of as a wrong value.
_SCALAR_VALUE_FIELDS = [
    ("bytes_val", 1, descriptor_pb2.FieldDescriptorProto.TYPE_BYTES),
    ("string_val", 2, descriptor_pb2.FieldDescriptorProto.TYPE_STRING),
    ("int32_val", 3, descriptor_pb2.FieldDescriptorProto.TYPE_INT32),
    ("int64_val", 4, descriptor_pb2.FieldDescriptorProto.TYPE_INT64),
    ("double_val", 5, descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE),
    ("float_val", 6, descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT),
    ("bool_val", 7, descriptor_pb2.FieldDescriptorProto.TYPE_BOOL),
    ("unix_timestamp_val", 8, descriptor_pb2.FieldDescriptorProto.TYPE_INT64),
]
_NULL_VALUE_FIELD = ("null_val", 19)


def _build_value_class() -> type[Message]:
    """Build a message class wire-compatible with the scalar part of feast.types.Value.

    It lives in a private descriptor pool, so it cannot clash with Feast's own Value_pb2 when a
    process imports both.
    """
    file = descriptor_pb2.FileDescriptorProto(
        name="product_quality/feast_value_subset.proto", package="feast.types", syntax="proto3"
    )
    null_enum = file.enum_type.add(name="Null")
    null_enum.value.add(name="NULL", number=0)

    message = file.message_type.add(name="Value")
    message.oneof_decl.add(name="val")
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    for name, number, field_type in _SCALAR_VALUE_FIELDS:
        message.field.add(name=name, number=number, type=field_type, label=optional, oneof_index=0)
    null_name, null_number = _NULL_VALUE_FIELD
    message.field.add(
        name=null_name,
        number=null_number,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_ENUM,
        type_name=".feast.types.Null",
        label=optional,
        oneof_index=0,
    )

    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("feast.types.Value"))


ValueMessage = _build_value_class()


class UnsupportedValueError(ValueError):
    """A stored feast.types.Value contains a kind of value (a list, a map, ...) that these features never use."""


def entity_key_bytes(product_id: str) -> bytes:
    """Serialize a single string join key `product_id` as Feast's `serialize_entity_key` (version 3).

    Layout: the key count, then per key its value type, length and UTF-8 name, then per value its
    type, length and bytes. All integers are little-endian uint32.
    """
    if ENTITY_KEY_SERIALIZATION_VERSION != 3:
        raise NotImplementedError("only entity key serialization version 3 is implemented")
    name = b"product_id"
    value = product_id.encode("utf-8")
    return b"".join(
        [
            struct.pack("<I", 1),
            struct.pack("<II", _VALUE_TYPE_STRING, len(name)),
            name,
            struct.pack("<II", _VALUE_TYPE_STRING, len(value)),
            value,
        ]
    )


def redis_key(project: str, product_id: str) -> bytes:
    """Return the Redis key of a product's hash, as Feast's `_redis_key`."""
    return entity_key_bytes(product_id) + project.encode("utf-8")


def feature_field(view_name: str, feature_name: str) -> bytes:
    """Return the hash field of a feature: murmur3_32 of "<view>:<feature>", 4 little-endian bytes.

    Same bytes as Feast's `_mmh3` helper, which takes the first 4 bytes of the hash packed as "<Q".
    """
    return struct.pack("<I", mmh3.hash(f"{view_name}:{feature_name}", signed=False))


def timestamp_field(view_name: str) -> bytes:
    """Return the hash field of a view's event timestamp."""
    return f"_ts:{view_name}".encode("utf-8")


def encode_timestamp(moment: datetime) -> bytes:
    """Serialize an event time as a google.protobuf.Timestamp; a naive datetime is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    message = Timestamp()
    message.FromDatetime(moment)
    return message.SerializeToString()


def decode_timestamp(data: bytes) -> datetime:
    """Parse a serialized google.protobuf.Timestamp into an aware UTC datetime (microseconds)."""
    message = Timestamp()
    message.ParseFromString(data)
    return message.ToDatetime(tzinfo=timezone.utc)


def encode_value(value: bytes | str | float | None) -> bytes:
    """Serialize a bytes, string or float feature value as a feast.types.Value; None is an empty Value."""
    message = ValueMessage()
    if value is None:
        pass
    elif isinstance(value, bytes):
        message.bytes_val = value
    elif isinstance(value, str):
        message.string_val = value
    elif isinstance(value, float):
        message.double_val = value
    else:
        raise TypeError(f"cannot store a {type(value).__name__} feature value; expected bytes, str or float")
    return message.SerializeToString()


def decode_value(data: bytes | None) -> Any:
    """Parse a serialized feast.types.Value into its Python value; None when absent or null."""
    if data is None:
        return None
    message = ValueMessage()
    message.ParseFromString(data)
    kind = message.WhichOneof("val")
    if kind is None:
        # Feast stores a null feature (None or NaN) as an empty Value. A kind unknown to this
        # subset also leaves the oneof unset, but its bytes remain as an unknown field.
        if data:
            raise UnsupportedValueError(
                f"stored feature value of {len(data)} bytes contains a value kind other than the "
                "scalars this reader supports"
            )
        return None
    if kind == "null_val":
        return None
    return getattr(message, kind)
