"""Errors of the feature store layer.

    FeatureStoreError
     +-- FeatureSchemaError           the feature schema or its JSON file is missing or invalid
     +-- OfflineDataError             the offline parquet sources are missing or do not match the schema
     +-- OnlineStoreUnavailableError  the online store (Redis) cannot be reached or timed out

OnlineStoreUnavailableError is also a `services.common.errors.UnavailableError`, so a gRPC service
that lets it propagate reports it with status UNAVAILABLE.
"""

from __future__ import annotations

from services.common.errors import UnavailableError


class FeatureStoreError(Exception):
    """Base class of the errors raised by the `features` package."""


class FeatureSchemaError(FeatureStoreError, ValueError):
    """The feature schema is invalid, or its JSON file is missing or unreadable."""


class OfflineDataError(FeatureStoreError):
    """The offline parquet sources are missing or do not match the feature schema."""


class OnlineStoreUnavailableError(FeatureStoreError, UnavailableError):
    """The online store cannot be reached, or a request to it timed out."""

    def __init__(self, message: str) -> None:
        # UnavailableError stores the message for the gRPC status details.
        UnavailableError.__init__(self, message)
