"""Probe a gRPC server's grpc.health.v1 Check rpc and exit 0 only when it reports SERVING.

Container healthchecks run it as `python -m services.common.healthcheck --address HOST:PORT`. It
imports only grpc, grpc_health and the standard library, so a probe starts quickly and never loads
torch. Every other outcome exits 1 with a one-line reason on stderr. That includes invalid
arguments, because Docker reserves exit status 2 of a healthcheck command.

A server that serves TLS needs `--tls-ca`, and one that requires client certificates (mutual TLS)
needs `--tls-cert` and `--tls-key` as well. Each option defaults to its PQ_HEALTHCHECK_* variable,
so a compose file can turn TLS on for the probe through the environment alone.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.tls import ClientTls, check_key_pair, check_pem_file, open_channel

EXIT_SERVING = 0
EXIT_UNHEALTHY = 1
DEFAULT_TIMEOUT_S = 3.0

# Environment variables that give the TLS options their defaults.
TLS_ENVIRONMENT = {
    "tls_ca": "PQ_HEALTHCHECK_TLS_CA_PATH",
    "tls_cert": "PQ_HEALTHCHECK_TLS_CERT_PATH",
    "tls_key": "PQ_HEALTHCHECK_TLS_KEY_PATH",
    "tls_server_name": "PQ_HEALTHCHECK_TLS_SERVER_NAME",
}


class _ArgumentParser(argparse.ArgumentParser):
    """Argument parser that exits with EXIT_UNHEALTHY instead of argparse's status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_UNHEALTHY, f"{self.prog}: {message}\n")


def _parse_address(value: str) -> str:
    """Accept "host:port" (IPv6 hosts in brackets) with a port from 1 to 65535."""
    host, separator, port = value.rpartition(":")
    if not separator or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(
            f'invalid address {value!r}; expected "host:port", for example 127.0.0.1:50051'
        )
    return value


def _parse_timeout(value: str) -> float:
    try:
        timeout_s = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid timeout {value!r}; expected seconds, such as 3") from None
    if not timeout_s > 0:
        raise argparse.ArgumentTypeError(f"invalid timeout {value!r}; it must be greater than 0")
    return timeout_s


def check_health(
    address: str, service: str = "", timeout_s: float = DEFAULT_TIMEOUT_S, tls: ClientTls | None = None
) -> tuple[bool, str]:
    """Call Health/Check on `address` for `service` ("" is the whole server), over TLS when `tls` is given.

    Returns whether the status is SERVING and a one-line description of the outcome.
    """
    target = f"{address} (service {service!r})" if service else address
    # Disable gRPC's support for http_proxy, because a proxy set in the environment must not
    # intercept a probe of a server on this host or network.
    options: list[tuple[str, int | str]] = [("grpc.enable_http_proxy", 0)]
    with open_channel(address, options, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as error:
            return False, _describe_rpc_error(error, target, service, timeout_s)

    status_name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        return False, f"{target} is {status_name}"
    return True, f"{target} is SERVING"


def _describe_rpc_error(error: grpc.RpcError, target: str, service: str, timeout_s: float) -> str:
    # The error of a unary call is also a grpc.Call, which carries the status code and details.
    code = error.code() if isinstance(error, grpc.Call) else None
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"health check of {target} timed out after {timeout_s:g} s"
    if code == grpc.StatusCode.UNAVAILABLE:
        # A failed TLS handshake is UNAVAILABLE too, and a plaintext probe of a TLS server gets
        # only "Socket closed".
        return f"{target} is unavailable: {details} (if the server uses TLS, check the --tls-* options)"
    if code == grpc.StatusCode.NOT_FOUND:
        return (
            f"{target} has no health status for service {service!r}; "
            "pass the full service name, for example pq.v1.ImageEncoderService"
        )
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return f"{target} does not implement grpc.health.v1.Health"
    code_name = code.name if code is not None else "unknown status"
    return f"health check of {target} failed with {code_name}: {details}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the probe with command-line arguments `argv` and return the process exit status."""
    parser = _ArgumentParser(
        prog="python -m services.common.healthcheck",
        description="Exit 0 when the gRPC server reports SERVING through grpc.health.v1, else exit 1.",
    )
    parser.add_argument(
        "--address", required=True, type=_parse_address, help='server address "host:port"'
    )
    parser.add_argument(
        "--service",
        default="",
        help='full service name to check, such as pq.v1.TextEncoderService (default: "", the whole server)',
    )
    parser.add_argument(
        "--timeout",
        type=_parse_timeout,
        default=DEFAULT_TIMEOUT_S,
        help=f"deadline of the Check call in seconds (default: {DEFAULT_TIMEOUT_S:g})",
    )
    _add_tls_arguments(parser)
    args = parser.parse_args(argv)

    tls = _client_tls(parser, args)
    serving, reason = check_health(args.address, args.service, args.timeout, tls)
    if not serving:
        # gRPC error details can span several lines, and the reason must stay on one.
        one_line = " ".join(reason.split())
        sys.stderr.write(f"unhealthy: {one_line}\n")
        return EXIT_UNHEALTHY
    return EXIT_SERVING


def _add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    environ = {option: os.environ.get(variable) or None for option, variable in TLS_ENVIRONMENT.items()}
    parser.add_argument(
        "--tls-ca",
        type=Path,
        default=environ["tls_ca"],
        help=f"PEM CA certificates that verify the server; turns TLS on (default: ${TLS_ENVIRONMENT['tls_ca']})",
    )
    parser.add_argument(
        "--tls-cert",
        type=Path,
        default=environ["tls_cert"],
        help=f"PEM client certificate for mutual TLS (default: ${TLS_ENVIRONMENT['tls_cert']})",
    )
    parser.add_argument(
        "--tls-key",
        type=Path,
        default=environ["tls_key"],
        help=f"PEM private key of the client certificate (default: ${TLS_ENVIRONMENT['tls_key']})",
    )
    parser.add_argument(
        "--tls-server-name",
        default=environ["tls_server_name"],
        help=(
            "host name checked against the server certificate instead of the address's host "
            f"(default: ${TLS_ENVIRONMENT['tls_server_name']})"
        ),
    )


def _client_tls(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ClientTls | None:
    """Return the probe's TLS configuration, or None for plaintext; invalid options exit 1."""
    if args.tls_ca is None:
        if args.tls_cert is not None or args.tls_key is not None or args.tls_server_name:
            parser.error("--tls-cert, --tls-key and --tls-server-name need --tls-ca")
        return None
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key must be given together")
    try:
        check_pem_file(args.tls_ca, "certificate")
        if args.tls_cert is not None and args.tls_key is not None:
            check_pem_file(args.tls_cert, "certificate")
            check_pem_file(args.tls_key, "private key")
            check_key_pair(args.tls_cert, args.tls_key)
    except ValueError as error:
        parser.error(str(error))
    return ClientTls(ca_path=args.tls_ca, cert_path=args.tls_cert, key_path=args.tls_key, server_name=args.tls_server_name)


if __name__ == "__main__":
    sys.exit(main())
