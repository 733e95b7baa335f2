"""The fusion predictor's gRPC server: model loading, store and encoder wiring, start and stop."""

from __future__ import annotations

import logging
import pickle
from typing import TypeVar

import grpc

from features.config import FeatureStoreSettings
from features.errors import FeatureStoreError
from features.online import EmbeddingWriter, OnlineFeatureReader, open_reader
from features.schema import FeatureSchema
from fusion.checkpoint_files import CheckpointError
from fusion.loading import Predictor
from fusion.loading import load_predictor as load_model_directory
from pq.v1 import quality_predictor_pb2_grpc as predictor_grpc
from services.common.auth import BearerTokenInterceptor
from services.common.server import (
    ServiceServer,
    build_server,
    configure_logging,
    load_settings_or_exit,
    run_until_signalled,
)
from services.common.settings import SettingsError
from services.fusion_predictor.encoder_clients import ImageEncoderClient, TextEncoderClient
from services.fusion_predictor.servicer import SERVICE_NAME, EncoderClients, QualityPredictorServicer
from services.fusion_predictor.settings import PredictorSettings
from services.fusion_predictor.write_back import EmbeddingWriteBack

logger = logging.getLogger(__name__)

ClientT = TypeVar("ClientT", ImageEncoderClient, TextEncoderClient)


def load_predictor(settings: PredictorSettings) -> Predictor:
    """Load the checkpoint named by PQ_PREDICTOR_MODEL_PATH; raise SettingsError naming the variable."""
    model_path = settings.require_model_path()
    try:
        return load_model_directory(model_path, device=settings.device)
    except (CheckpointError, ValueError, OSError) as error:
        raise SettingsError(
            f"{settings.env_name('model_path')}={str(model_path)!r} cannot be loaded: {error}"
        ) from error
    except pickle.UnpicklingError as error:
        # torch.load(weights_only=True) raises this for a weights.pt that contains objects other than
        # tensors, which an arbitrary pickle would run code to build.
        raise SettingsError(
            f"{settings.env_name('model_path')}={str(model_path)!r} cannot be loaded: its weights.pt "
            f"contains objects other than tensors, so it was not written by save_checkpoint: {error}"
        ) from error


def feature_schema_of(predictor: Predictor) -> FeatureSchema:
    """Return the checkpoint's feature schema after checking it against the model's own inputs."""
    try:
        schema = FeatureSchema.from_dict(predictor.feature_schema)
    except (FeatureStoreError, TypeError) as error:
        raise SettingsError(
            f"the feature schema of model {predictor.model_version} is invalid: {error}"
        ) from error

    problems = []
    if schema.image_model_id != predictor.image_model_id or schema.text_model_id != predictor.text_model_id:
        problems.append(
            f"the schema's encoder model ids ({schema.image_model_id!r}, {schema.text_model_id!r}) differ "
            f"from the checkpoint's ({predictor.image_model_id!r}, {predictor.text_model_id!r})"
        )
    if (schema.image_embedding_dim, schema.text_embedding_dim) != (predictor.image_dim, predictor.text_dim):
        problems.append(
            f"the schema's embedding sizes ({schema.image_embedding_dim}, {schema.text_embedding_dim}) "
            f"differ from the model's ({predictor.image_dim}, {predictor.text_dim})"
        )
    if sorted(schema.attribute_names) != sorted(predictor.attribute_columns):
        problems.append(
            f"the schema's attributes {schema.attribute_names} differ from the model's "
            f"{predictor.attribute_columns}"
        )
    elif sorted(schema.numeric_attributes) != sorted(predictor.attribute_encoder.numeric):
        problems.append(
            f"the schema's numeric attributes {schema.numeric_attributes} differ from the model's "
            f"{predictor.attribute_encoder.numeric}"
        )
    if problems:
        raise SettingsError(f"checkpoint {predictor.model_version} is inconsistent: " + "; ".join(problems))
    return schema


def create_server(
    address: str,
    settings: PredictorSettings | None = None,
    *,
    predictor: Predictor | None = None,
    reader: OnlineFeatureReader | None = None,
    writer: EmbeddingWriter | None = None,
    store_settings: FeatureStoreSettings | None = None,
) -> tuple[ServiceServer, int]:
    """Build an unstarted predictor server bound to `address` ("host:port"; port 0 picks one).

    `settings` default to the PQ_PREDICTOR_* environment and `store_settings` to the PQ_* one.
    `predictor` defaults to the checkpoint at settings.model_path, `reader` to the online store's
    reader, and `writer` to an EmbeddingWriter on the same store when settings.write_back is true.
    With write_back false no embedding is written, even when `writer` is given. The TLS and
    bearer-token settings in `settings` apply to the server and to its encoder channels. The server
    closes the encoder channels and the reader and writer it opened when it stops. Call `start()`
    on it.
    """
    settings = settings if settings is not None else PredictorSettings.from_env()
    predictor = predictor if predictor is not None else load_predictor(settings)
    schema = feature_schema_of(predictor)
    # Read before any connection opens, so an invalid token file leaves nothing to close.
    tokens = settings.accepted_tokens()
    interceptors = [BearerTokenInterceptor(tokens, [SERVICE_NAME])] if tokens else []
    logger.info(
        "bearer-token authentication of %s is %s",
        SERVICE_NAME,
        f"on with {len(tokens)} accepted token(s)" if tokens else "off",
    )

    owned: list[OnlineFeatureReader | EmbeddingWriter] = []
    if reader is None:
        store_settings = store_settings or FeatureStoreSettings.from_env()
        reader = open_reader(store_settings, schema)
        owned.append(reader)
    if writer is None and settings.write_back:
        store_settings = store_settings or FeatureStoreSettings.from_env()
        writer = EmbeddingWriter(store_settings, schema)
        owned.append(writer)

    encoders = EncoderClients(
        image=_encoder_client(
            ImageEncoderClient, settings.image_encoder_address, schema.image_model_id,
            schema.image_embedding_dim, settings,
        ),
        text=_encoder_client(
            TextEncoderClient, settings.text_encoder_address, schema.text_model_id,
            schema.text_embedding_dim, settings,
        ),
    )
    servicer = QualityPredictorServicer(
        predictor,
        schema,
        reader=reader,
        write_back=EmbeddingWriteBack(writer) if writer is not None and settings.write_back else None,
        encoders=encoders,
        max_batch_size=settings.max_batch_size,
        on_encoder_failure=settings.on_encoder_failure,
    )

    def register(server: grpc.Server) -> list[str]:
        predictor_grpc.add_QualityPredictorServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    def close_connections() -> None:
        for client in (encoders.image, encoders.text):
            if client is not None:
                client.close()
        for resource in owned:
            resource.close()

    service = build_server(
        address,
        register,
        max_workers=settings.max_workers,
        max_message_bytes=settings.max_message_bytes,
        on_stop=close_connections,
        tls=settings.server_tls(),
        interceptors=interceptors,
    )
    return service, service.port


def _encoder_client(
    client_class: type[ClientT], address: str, model_id: str, dim: int, settings: PredictorSettings
) -> ClientT | None:
    """Return a client of the encoder at `address`, or None when no address is configured."""
    if not address:
        return None
    return client_class(
        address,
        expected_model_id=model_id,
        expected_dim=dim,
        timeout_s=settings.encoder_timeout_s,
        max_items_per_call=settings.encoder_batch_size,
        max_message_bytes=settings.max_message_bytes,
        tls=settings.encoder_tls(),
        deadline_margin_s=settings.encoder_deadline_margin_s,
    )


def describe(predictor: Predictor, settings: PredictorSettings, store: FeatureStoreSettings) -> str:
    """Name the service, its model, its store and its encoders for log lines."""
    return (
        f"fusion predictor ({predictor.model_kind} model {predictor.model_version}, label {predictor.label_name!r}, "
        f"{store.online_store} store project {store.feast_project!r}, "
        f"image encoder {settings.image_encoder_address or 'none'}, "
        f"text encoder {settings.text_encoder_address or 'none'}, "
        f"encoder channels {_describe_encoder_tls(settings)}, "
        f"on encoder failure {settings.on_encoder_failure}, "
        f"write-back {'on' if settings.write_back else 'off'})"
    )


def _describe_encoder_tls(settings: PredictorSettings) -> str:
    tls = settings.encoder_tls()
    return "plaintext" if tls is None else tls.describe()


def serve() -> None:
    """Run the predictor configured by PQ_PREDICTOR_* and PQ_* until SIGTERM or SIGINT.

    Exits with status 2 on invalid settings or an unusable checkpoint, and 1 when the store cannot
    be opened or the address cannot be bound, after logging why.
    """
    settings = load_settings_or_exit(PredictorSettings.from_env, "fusion predictor")
    store_settings = load_settings_or_exit(FeatureStoreSettings.from_env, "fusion predictor")
    configure_logging(settings.log_level)

    try:
        predictor = load_predictor(settings)
        service, _port = create_server(
            settings.address, settings, predictor=predictor, store_settings=store_settings
        )
    except SettingsError as error:
        logger.error("fusion predictor not started: %s", error)
        raise SystemExit(2) from None
    except (FeatureStoreError, OSError) as error:
        logger.error("fusion predictor not started on %s: %s", settings.address, error)
        raise SystemExit(1) from None

    run_until_signalled(service, describe(predictor, settings, store_settings), settings.grace_period_s)
