"""gRPC server set-up shared by the services: health, reflection, error mapping, graceful stop."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar
from concurrent import futures
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.interceptor import ErrorInterceptor
from services.common.settings import SettingsError
from services.common.tls import ServerTls

logger = logging.getLogger(__name__)

SettingsT = TypeVar("SettingsT")


class ServiceServer:
    """A started-or-startable gRPC server with its health servicer and bound port."""

    def __init__(
        self,
        server: grpc.Server,
        port: int,
        health_servicer: health.HealthServicer,
        service_names: Sequence[str],
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.server = server
        self.port = port
        self.health = health_servicer
        self.service_names = list(service_names)
        self._on_stop = on_stop
        self._stopped = threading.Event()

    def start(self) -> None:
        """Start serving and mark every service SERVING in the health service."""
        self.server.start()
        for name in ["", *self.service_names]:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace_s: float) -> None:
        """Mark the services NOT_SERVING, refuse new calls and let calls in flight finish.

        Calls still running after `grace_s` seconds are cancelled.
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        # Health first, so load balancers and compose healthchecks stop routing here before the
        # listening socket closes.
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait()
        if self._on_stop is not None:
            self._on_stop()

    def wait(self) -> None:
        """Block until the server has stopped."""
        self.server.wait_for_termination()


def build_server(
    address: str,
    register: Callable[[grpc.Server], Sequence[str]],
    *,
    max_workers: int,
    max_message_bytes: int,
    on_stop: Callable[[], None] | None = None,
    tls: ServerTls | None = None,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
) -> ServiceServer:
    """Create a server bound to `address` ("host:port", port 0 picks a free one).

    `register` adds the servicers to the server and returns their full service names, which are
    published through health checking and server reflection. With `tls` the port serves TLS (mutual
    TLS when it has a client CA) and rejects plaintext connections; without it the port is
    plaintext. `interceptors` run before the one that maps service errors to statuses, so they see
    every call first.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=[*interceptors, ErrorInterceptor()],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
    )
    service_names = list(register(server))

    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )

    # grpcio raises RuntimeError on a failed bind in recent releases and returned 0 in older ones.
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, tls.credentials())
    except RuntimeError as error:
        # A certificate that gRPC rejects also ends here, because grpcio reports it as a failed bind.
        raise OSError(f"could not bind the gRPC server to {address}: {error}") from error
    if port == 0:
        raise OSError(f"could not bind the gRPC server to {address}")

    if tls is None:
        logger.info("gRPC server on %s (port %d) serves plaintext without TLS", address, port)
    else:
        logger.info("gRPC server on %s (port %d) serves %s", address, port, tls.describe())
    return ServiceServer(server, port, health_servicer, service_names, on_stop)


def run_until_signalled(service: ServiceServer, name: str, grace_s: float) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully; logs one line at start and at stop."""
    received: list[int] = []
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        # Only record the signal: logging from a signal handler can deadlock on the handler's lock.
        received.append(signum)
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    service.start()
    logger.info("%s started on port %d", name, service.port)
    # Wait with a timeout: the kernel may deliver the signal to one of gRPC's threads, and Python
    # runs the handler only when the main thread returns to the interpreter, which an untimed
    # wait on a lock never does.
    while not stop_requested.wait(timeout=0.2):
        pass
    logger.info("%s received %s, stopping with %.1f s grace", name, signal.Signals(received[0]).name, grace_s)
    service.stop(grace_s)
    logger.info("%s stopped", name)


def configure_logging(level: str = "INFO") -> None:
    """Configure the root logger for a service process: one line per record on stderr."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def load_settings_or_exit(load: Callable[[], SettingsT], name: str) -> SettingsT:
    """Return `load()`; on invalid settings log why and exit with status 2, before any model loads."""
    try:
        return load()
    except SettingsError as error:
        configure_logging("INFO")
        logger.error("%s not started: %s", name, error)
        raise SystemExit(2) from None
