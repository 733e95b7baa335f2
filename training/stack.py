"""Start the three gRPC services as separate processes, wait until they are healthy, stop them."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

logger = logging.getLogger(__name__)


class ServiceStartError(RuntimeError):
    """A service process exited or did not become healthy in time; the message ends with its log tail."""


@dataclass
class ServiceProcess:
    """One service running as a child process, with its address and log file."""

    name: str
    module: str
    address: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def log_tail(self, lines: int = 20) -> str:
        """Return the last lines of the service's log."""
        if not self.log_path.exists():
            return "<no log>"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class ServiceStack:
    """The image encoder, text encoder and fusion predictor of one run."""

    image_encoder: ServiceProcess
    text_encoder: ServiceProcess
    predictor: ServiceProcess
    started: list[ServiceProcess] = field(default_factory=list)

    @property
    def services(self) -> list[ServiceProcess]:
        return [self.image_encoder, self.text_encoder, self.predictor]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_serving(service: ServiceProcess, timeout_s: float) -> None:
    """Poll the service's grpc.health.v1 status until SERVING; raise ServiceStartError on failure."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(service.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if service.process is not None and service.process.poll() is not None:
                raise ServiceStartError(
                    f"{service.name} exited with status {service.process.returncode} during start; "
                    f"its log ({service.log_path}) ends with:\n{service.log_tail()}"
                )
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass  # Not listening yet: the model is still loading.
            time.sleep(0.2)
    raise ServiceStartError(
        f"{service.name} did not report SERVING on {service.address} within {timeout_s:.0f} s; "
        f"its log ({service.log_path}) ends with:\n{service.log_tail()}"
    )


def start_stack(
    log_dir: Path,
    environment: Mapping[str, str],
    *,
    start_timeout_s: float = 180.0,
) -> ServiceStack:
    """Start the encoders, then the predictor, each as `python -m services.<name>` on a free port.

    `environment` is added to this process's environment for every service (model path, online store
    settings). The caller must call `stop_stack`, also when this raises.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in ("image_encoder", "text_encoder", "fusion_predictor")}
    stack = ServiceStack(
        image_encoder=ServiceProcess(
            "image encoder", "services.image_encoder", f"127.0.0.1:{ports['image_encoder']}",
            log_dir / "image_encoder.log",
        ),
        text_encoder=ServiceProcess(
            "text encoder", "services.text_encoder", f"127.0.0.1:{ports['text_encoder']}",
            log_dir / "text_encoder.log",
        ),
        predictor=ServiceProcess(
            "fusion predictor", "services.fusion_predictor", f"127.0.0.1:{ports['fusion_predictor']}",
            log_dir / "fusion_predictor.log",
        ),
    )
    base_env = {**os.environ, **environment, "PYTHONUNBUFFERED": "1"}
    per_service_env = {
        stack.image_encoder.name: {"PQ_IMAGE_ENCODER_ADDRESS": stack.image_encoder.address},
        stack.text_encoder.name: {"PQ_TEXT_ENCODER_ADDRESS": stack.text_encoder.address},
        stack.predictor.name: {
            "PQ_PREDICTOR_ADDRESS": stack.predictor.address,
            "PQ_PREDICTOR_IMAGE_ENCODER_ADDRESS": stack.image_encoder.address,
            "PQ_PREDICTOR_TEXT_ENCODER_ADDRESS": stack.text_encoder.address,
        },
    }
    # The encoders load their models in parallel; the predictor starts once both serve, so its
    # first requests can reach them.
    for service in (stack.image_encoder, stack.text_encoder):
        _launch(stack, service, {**base_env, **per_service_env[service.name]})
    for service in (stack.image_encoder, stack.text_encoder):
        wait_until_serving(service, start_timeout_s)
    _launch(stack, stack.predictor, {**base_env, **per_service_env[stack.predictor.name]})
    wait_until_serving(stack.predictor, start_timeout_s)
    return stack


def _launch(stack: ServiceStack, service: ServiceProcess, env: Mapping[str, str]) -> None:
    log_file = service.log_path.open("wb")
    service.process = subprocess.Popen(
        [sys.executable, "-m", service.module],
        env=dict(env),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log_file.close()
    stack.started.append(service)
    logger.info("started %s (pid %d) on %s", service.name, service.process.pid, service.address)


def stop_stack(stack: ServiceStack, timeout_s: float = 30.0) -> dict[str, int | None]:
    """Send SIGTERM to every started service, predictor first, and wait for each to exit.

    A service still running after `timeout_s` is killed. Returns each service's exit status.
    """
    statuses: dict[str, int | None] = {}
    for service in reversed(stack.started):
        process = service.process
        if process is None:
            continue
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            statuses[service.name] = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.error("%s did not stop within %.0f s after SIGTERM; killing it", service.name, timeout_s)
            process.kill()
            statuses[service.name] = process.wait()
        logger.info("stopped %s with exit status %s", service.name, statuses[service.name])
    return statuses
