"""The whole service chain over TLS: client -> predictor (TLS, bearer token) -> encoders (mutual TLS).

Both encoder services run their real models on CPU through their own create_server, and require
client certificates. The predictor is the real create_server with a checkpoint trained for a few
steps; it serves TLS, checks a bearer token from a token file, and presents a client certificate
to the encoders. Requests send inline content, so both encoders are called on every prediction.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from encoders.image import load_image_encoder
from encoders.text import load_text_encoder
from features.config import FeatureStoreSettings
from features.schema import FeatureSchema
from fusion.loading import load_predictor
from pq.v1 import quality_predictor_pb2 as predictor_pb2
from pq.v1 import quality_predictor_pb2_grpc as predictor_grpc
from services import image_encoder, text_encoder
from services.common.healthcheck import EXIT_SERVING, main
from services.common.server import ServiceServer
from services.common.settings import SettingsError
from services.fusion_predictor import SERVICE_NAME, PredictorSettings, create_server
from services.fusion_predictor.server import describe
from services.image_encoder import ImageEncoderSettings
from services.text_encoder import TextEncoderSettings
from tests.services.test_fusion_predictor_service import REDIS_ADDRESS, png, train_checkpoint
from tests.tls_certificates import make_test_certificates

TOKEN = "predictor-test-token-6f1c2d9a8b"
TIMEOUT_S = 60.0
COMPUTED = predictor_pb2.INPUT_SOURCE_COMPUTED


@dataclass
class Chain:
    """Running encoders over mutual TLS, and what a predictor needs to call them."""

    certs: Any
    image_address: str
    text_address: str
    checkpoint: Path
    store: FeatureStoreSettings
    token_file: Path


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    folder = tmp_path_factory.mktemp("tls_chain")
    certs = make_test_certificates(folder / "certs")
    server_tls = {
        "tls_cert_path": certs.server_cert,
        "tls_key_path": certs.server_key,
        "tls_client_ca_path": certs.ca,
    }
    image = load_image_encoder(device="cpu")
    text = load_text_encoder(device="cpu")
    image_service, image_port = image_encoder.create_server(
        "127.0.0.1:0", ImageEncoderSettings.from_env({}, max_workers=2, device="cpu", **server_tls), image
    )
    text_service, text_port = text_encoder.create_server(
        "127.0.0.1:0", TextEncoderSettings.from_env({}, max_workers=2, device="cpu", **server_tls), text
    )
    image_service.start()
    text_service.start()

    schema = FeatureSchema(
        numeric_attributes=["price", "players"],
        categorical_attributes=["category"],
        image_model_id=image.model_id,
        text_model_id=text.model_id,
        image_embedding_dim=image.embedding_dim,
        text_embedding_dim=text.embedding_dim,
    )
    token_file = folder / "tokens"
    token_file.write_text(f"# clients of the test predictor\n{TOKEN}\n")
    # Inline requests without a product id never read the store, so the project stays empty.
    store = FeatureStoreSettings.from_env(
        {},
        online_store="redis",
        redis_connection_string=REDIS_ADDRESS,
        feast_project=f"pq_test_tls_{uuid.uuid4().hex[:8]}",
        feature_repo_dir=folder / "store",
        feature_data_dir=folder / "store" / "data",
    )
    yield Chain(
        certs=certs,
        image_address=f"127.0.0.1:{image_port}",
        text_address=f"127.0.0.1:{text_port}",
        checkpoint=train_checkpoint(folder / "checkpoint", schema),
        store=store,
        token_file=token_file,
    )
    image_service.stop(grace_s=0)
    text_service.stop(grace_s=0)


def predictor_settings(chain: Chain, **overrides: object) -> PredictorSettings:
    values: dict[str, object] = {
        "model_path": chain.checkpoint,
        "image_encoder_address": chain.image_address,
        "text_encoder_address": chain.text_address,
        "encoder_timeout_s": TIMEOUT_S,
        "encoder_tls_ca_path": chain.certs.ca,
        "encoder_tls_cert_path": chain.certs.client_cert,
        "encoder_tls_key_path": chain.certs.client_key,
        "tls_cert_path": chain.certs.server_cert,
        "tls_key_path": chain.certs.server_key,
        "auth_tokens_path": chain.token_file,
        "write_back": False,
        "max_workers": 2,
        "device": "cpu",
    }
    values.update(overrides)
    return PredictorSettings.from_env({}, **values)


@pytest.fixture(scope="module")
def predictor(chain: Chain) -> Iterator[ServiceServer]:
    service, _ = create_server("127.0.0.1:0", predictor_settings(chain), store_settings=chain.store)
    service.start()
    yield service
    service.stop(grace_s=0)


def tls_channel(certs: Any, port: int) -> grpc.Channel:
    return grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(certs.ca.read_bytes()))


def inline_request() -> predictor_pb2.PredictQualityRequest:
    content = predictor_pb2.ProductContent(image=png(7), title="Castle Builders", description="Tile placement")
    content.attributes["price"].number_value = 25.0
    content.attributes["category"].string_value = "family"
    return predictor_pb2.PredictQualityRequest(content=content)


def predict(port: int, certs: Any, token: str | None = TOKEN) -> predictor_pb2.PredictQualityResponse:
    metadata = [("authorization", f"Bearer {token}")] if token is not None else []
    with tls_channel(certs, port) as channel:
        stub = predictor_grpc.QualityPredictorServiceStub(channel)
        return stub.PredictQuality(inline_request(), metadata=metadata, timeout=TIMEOUT_S)


def rpc_error(port: int, certs: Any, token: str | None = TOKEN) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        predict(port, certs, token)
    return raised.value


def test_inline_request_over_tls_chain(chain: Chain, predictor: ServiceServer) -> None:
    response = predict(predictor.port, chain.certs)

    assert math.isfinite(response.quality)
    sources = {predictor_pb2.Modality.Name(c.modality): c.source for c in response.contributions}
    assert sources["MODALITY_IMAGE"] == COMPUTED
    assert sources["MODALITY_TEXT"] == COMPUTED


def test_predictor_requires_token(chain: Chain, predictor: ServiceServer) -> None:
    error = rpc_error(predictor.port, chain.certs, token=None)

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_predictor_rejects_wrong_token(chain: Chain, predictor: ServiceServer) -> None:
    error = rpc_error(predictor.port, chain.certs, token="another-token-0000000000")

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_predictor_health_open_over_tls(chain: Chain, predictor: ServiceServer) -> None:
    with tls_channel(chain.certs, predictor.port) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=TIMEOUT_S
        )

    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_predictor_rejects_plaintext_client(predictor: ServiceServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{predictor.port}") as channel:
        stub = predictor_grpc.QualityPredictorServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.PredictQuality(inline_request(), metadata=[("authorization", f"Bearer {TOKEN}")], timeout=5)

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("encoder", ["image", "text"])
def test_probe_encoder_over_mtls(chain: Chain, encoder: str) -> None:
    address = chain.image_address if encoder == "image" else chain.text_address
    service = "pq.v1.ImageEncoderService" if encoder == "image" else "pq.v1.TextEncoderService"
    arguments = [
        "--address", address, "--service", service, "--tls-ca", str(chain.certs.ca),
        "--tls-cert", str(chain.certs.client_cert), "--tls-key", str(chain.certs.client_key),
    ]

    assert main(arguments) == EXIT_SERVING


@pytest.mark.parametrize(
    "overrides",
    [
        {"encoder_tls_cert_path": None, "encoder_tls_key_path": None},
        {"encoder_tls_ca_path": None, "encoder_tls_cert_path": None, "encoder_tls_key_path": None},
    ],
    ids=["tls-without-client-cert", "plaintext"],
)
def test_encoders_reject_predictor_without_client_cert(chain: Chain, overrides: dict[str, object]) -> None:
    service, port = create_server("127.0.0.1:0", predictor_settings(chain, **overrides), store_settings=chain.store)
    service.start()
    try:
        error = rpc_error(port, chain.certs)
    finally:
        service.stop(grace_s=0)

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "encoder at 127.0.0.1:" in error.details()
    assert "PQ_PREDICTOR_ENCODER_TLS_*" in error.details()


def test_predictor_logs_security_without_secrets(chain: Chain, caplog: pytest.LogCaptureFixture) -> None:
    settings = predictor_settings(chain, tls_client_ca_path=chain.certs.ca)
    with caplog.at_level(logging.DEBUG):
        service, _ = create_server("127.0.0.1:0", settings, store_settings=chain.store)
        service.stop(grace_s=0)

    assert "serves mutual TLS" in caplog.text
    assert "bearer-token authentication of pq.v1.QualityPredictorService is on with 1 accepted token(s)" in caplog.text
    assert TOKEN not in caplog.text
    for path in (chain.certs.server_key, chain.certs.client_key):
        for line in path.read_text().splitlines()[1:-1]:
            assert line not in caplog.text


def test_describe_names_encoder_tls(chain: Chain) -> None:
    settings = predictor_settings(chain)

    text = describe(load_predictor(chain.checkpoint, device="cpu"), settings, chain.store)

    assert f"encoder channels TLS verified against {chain.certs.ca} with client certificate" in text


# Settings of the encoder channels.


def test_settings_encoder_tls_off_by_default() -> None:
    assert PredictorSettings.from_env({}).encoder_tls() is None


def test_settings_encoder_cert_needs_ca(chain: Chain) -> None:
    with pytest.raises(SettingsError, match="PQ_PREDICTOR_ENCODER_TLS_CERT_PATH needs PQ_PREDICTOR_ENCODER_TLS_CA_PATH"):
        PredictorSettings.from_env(
            {
                "PQ_PREDICTOR_ENCODER_TLS_CERT_PATH": str(chain.certs.client_cert),
                "PQ_PREDICTOR_ENCODER_TLS_KEY_PATH": str(chain.certs.client_key),
            }
        )


def test_settings_encoder_key_of_other_cert(chain: Chain) -> None:
    with pytest.raises(SettingsError, match="does not belong to the certificate"):
        PredictorSettings.from_env(
            {
                "PQ_PREDICTOR_ENCODER_TLS_CA_PATH": str(chain.certs.ca),
                "PQ_PREDICTOR_ENCODER_TLS_CERT_PATH": str(chain.certs.client_cert),
                "PQ_PREDICTOR_ENCODER_TLS_KEY_PATH": str(chain.certs.server_key),
            }
        )


def test_settings_server_name_needs_ca() -> None:
    with pytest.raises(SettingsError, match="PQ_PREDICTOR_ENCODER_TLS_SERVER_NAME needs PQ_PREDICTOR_ENCODER_TLS_CA_PATH"):
        PredictorSettings.from_env({"PQ_PREDICTOR_ENCODER_TLS_SERVER_NAME": "encoder.internal"})


def test_settings_encoder_ca_not_pem(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")

    with pytest.raises(SettingsError, match="PQ_PREDICTOR_ENCODER_TLS_CA_PATH=.*is not a PEM certificate file"):
        PredictorSettings.from_env({"PQ_PREDICTOR_ENCODER_TLS_CA_PATH": str(garbage)})
