"""Score products through the fusion predictor's gRPC API, by product id or by inline content."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from pq.v1 import quality_predictor_pb2 as predictor_pb2
from pq.v1 import quality_predictor_pb2_grpc as predictor_grpc


@dataclass(frozen=True)
class ScoredProducts:
    """Predictions returned over gRPC for a list of products, in request order."""

    product_ids: list[str]
    quality: np.ndarray  # (N,) float64, label units
    contributions: np.ndarray  # (N, 3) float64, image, text, attributes
    baseline: np.ndarray  # (N,) float64
    responses: list[predictor_pb2.PredictQualityResponse]


def attribute_values(row: Mapping[str, object]) -> dict[str, predictor_pb2.AttributeValue]:
    """Convert one product's attributes to request values, leaving out missing ones."""
    values: dict[str, predictor_pb2.AttributeValue] = {}
    for name, value in row.items():
        if value is None:
            continue
        if isinstance(value, str):
            values[name] = predictor_pb2.AttributeValue(string_value=value)
        elif isinstance(value, (int, float, np.integer, np.floating)):
            if math.isfinite(float(value)):
                values[name] = predictor_pb2.AttributeValue(number_value=float(value))
        else:
            raise TypeError(f"attribute {name!r} has unsupported type {type(value).__name__}")
    return values


def _collect(responses: Sequence[predictor_pb2.PredictQualityResponse]) -> ScoredProducts:
    contributions = np.array(
        [[c.contribution for c in response.contributions] for response in responses], dtype=np.float64
    ).reshape(len(responses), -1)
    return ScoredProducts(
        product_ids=[response.product_id for response in responses],
        quality=np.array([response.quality for response in responses], dtype=np.float64),
        contributions=contributions,
        baseline=np.array([response.baseline for response in responses], dtype=np.float64),
        responses=list(responses),
    )


def score_by_id(
    address: str, product_ids: Sequence[str], *, batch_size: int = 256, timeout_s: float = 60.0
) -> ScoredProducts:
    """Score stored products with PredictQualityBatch, `batch_size` products per call."""
    responses: list[predictor_pb2.PredictQualityResponse] = []
    with grpc.insecure_channel(address) as channel:
        stub = predictor_grpc.QualityPredictorServiceStub(channel)
        for start in range(0, len(product_ids), batch_size):
            chunk = product_ids[start : start + batch_size]
            request = predictor_pb2.PredictQualityBatchRequest(
                requests=[predictor_pb2.PredictQualityRequest(product_id=pid) for pid in chunk]
            )
            reply = stub.PredictQualityBatch(request, timeout=timeout_s)
            responses.extend(reply.responses)
    return _collect(responses)


def score_inline(
    address: str, contents: Sequence[predictor_pb2.ProductContent], *, timeout_s: float = 60.0
) -> ScoredProducts:
    """Score products sent as inline content only, one PredictQuality call each (the cold path)."""
    responses: list[predictor_pb2.PredictQualityResponse] = []
    with grpc.insecure_channel(address) as channel:
        stub = predictor_grpc.QualityPredictorServiceStub(channel)
        for content in contents:
            request = predictor_pb2.PredictQualityRequest(content=content)
            responses.append(stub.PredictQuality(request, timeout=timeout_s))
    return _collect(responses)
