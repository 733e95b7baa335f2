"""The gRPC server around an encoder servicer, shared by the image and text encoder services."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc

from services.common.encoder_settings import EncoderServiceSettings
from services.common.server import ServiceServer, build_server


def build_encoder_server(
    address: str,
    register: Callable[[grpc.Server], Sequence[str]],
    stop_servicer: Callable[[float], None],
    settings: EncoderServiceSettings,
) -> ServiceServer:
    """Build an unstarted server whose `stop()` also calls `stop_servicer` (which stops its batcher).

    `register` adds the servicer and returns its service names. `settings` give the thread count,
    message size limit, TLS and grace period. On a failed bind the servicer is stopped and OSError
    is raised.
    """

    def stop_batcher() -> None:
        # The server's grace period has passed, so only calls that already ended can still be queued.
        stop_servicer(settings.grace_period_s)

    try:
        return build_server(
            address,
            register,
            max_workers=settings.worker_threads(),
            max_message_bytes=settings.max_message_bytes,
            on_stop=stop_batcher,
            tls=settings.server_tls(),
        )
    except OSError:
        stop_servicer(0)
        raise
