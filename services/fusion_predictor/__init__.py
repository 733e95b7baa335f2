"""Fusion predictor service: pq.v1.QualityPredictorService over gRPC, backed by fusion.inference."""

from services.fusion_predictor.server import create_server, serve
from services.fusion_predictor.servicer import SERVICE_NAME, QualityPredictorServicer
from services.fusion_predictor.settings import PredictorSettings

__all__ = ["SERVICE_NAME", "PredictorSettings", "QualityPredictorServicer", "create_server", "serve"]
