"""TLS for the gRPC servers and for the predictor's channels to the encoders, from PEM files.

A server with a certificate and key serves TLS only. With a client CA as well it runs mutual TLS:
every client must present a certificate that the CA signed, and the handshake fails otherwise. The
check functions raise ValueError with the reason, and the settings classes add the name of the
environment variable. Key contents are never part of a message or a log line.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NoReturn

import grpc

# gRPC channel argument that replaces the host name checked against the server certificate.
TARGET_NAME_OVERRIDE_OPTION = "grpc.ssl_target_name_override"

PemKind = Literal["certificate", "private key"]
_PEM_MARKERS: dict[PemKind, tuple[bytes, ...]] = {
    "certificate": (b"-----BEGIN CERTIFICATE-----",),
    "private key": (
        b"-----BEGIN PRIVATE KEY-----",
        b"-----BEGIN RSA PRIVATE KEY-----",
        b"-----BEGIN EC PRIVATE KEY-----",
    ),
}


def check_pem_file(path: Path, kind: PemKind) -> Path:
    """Check that `path` is a readable file with a PEM block of `kind`; raise ValueError otherwise."""
    if not path.exists():
        raise ValueError(f"{path} does not exist; set it to a PEM {kind} file")
    if not path.is_file():
        raise ValueError(f"{path} is not a file; set it to a PEM {kind} file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(f"{path} cannot be read: {error.strerror}") from None
    if not any(marker in data for marker in _PEM_MARKERS[kind]):
        markers = " or ".join(marker.decode() for marker in _PEM_MARKERS[kind])
        if kind == "private key" and b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data:
            raise ValueError(f"{path} contains an encrypted private key, which gRPC cannot use; decrypt it")
        raise ValueError(f"{path} is not a PEM {kind} file: it has no {markers} line")
    return path


def _refuse_passphrase() -> NoReturn:
    # Without a callback, OpenSSL would prompt on the terminal for an encrypted key's passphrase.
    raise ValueError("the private key is encrypted, which gRPC cannot use; decrypt it")


def check_key_pair(cert_path: Path, key_path: Path) -> None:
    """Check that the certificate chain and key parse and belong together; raise ValueError otherwise.

    gRPC reports a mismatched pair only as a failed bind without the reason, so Python's ssl module
    checks the pair first.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_path, key_path, password=_refuse_passphrase)
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(f"the private key {key_path} does not belong to the certificate {cert_path}") from None
        raise ValueError(f"the certificate {cert_path} or the key {key_path} cannot be loaded: {error.reason or error}") from None


def check_ca_bundle(path: Path) -> None:
    """Check that `path` contains at least one CA certificate that OpenSSL can load; raise ValueError otherwise."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError as error:
        raise ValueError(f"the CA certificates in {path} cannot be loaded: {error.reason or error}") from None


@dataclass(frozen=True)
class ServerTls:
    """Certificate, key and optional client CA of a TLS server; a client CA turns on mutual TLS."""

    cert_path: Path
    key_path: Path
    client_ca_path: Path | None = None

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate signed by client_ca_path."""
        return self.client_ca_path is not None

    def credentials(self) -> grpc.ServerCredentials:
        """Read the PEM files and return gRPC server credentials."""
        pair = (self.key_path.read_bytes(), self.cert_path.read_bytes())
        if self.client_ca_path is None:
            return grpc.ssl_server_credentials([pair])
        return grpc.ssl_server_credentials(
            [pair], root_certificates=self.client_ca_path.read_bytes(), require_client_auth=True
        )

    def describe(self) -> str:
        """Name the mode and the files for a log line; the key's path is named, never its contents."""
        text = f"TLS with certificate {self.cert_path}"
        if self.client_ca_path is not None:
            text = f"mutual TLS with certificate {self.cert_path}, client certificates checked against {self.client_ca_path}"
        return text


@dataclass(frozen=True)
class ClientTls:
    """CA bundle that verifies a server, an optional client certificate and key, an optional name override."""

    ca_path: Path
    cert_path: Path | None = None
    key_path: Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """Read the PEM files and return gRPC channel credentials."""
        private_key = self.key_path.read_bytes() if self.key_path is not None else None
        certificate_chain = self.cert_path.read_bytes() if self.cert_path is not None else None
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_path.read_bytes(),
            private_key=private_key,
            certificate_chain=certificate_chain,
        )

    def channel_options(self) -> list[tuple[str, str]]:
        """gRPC channel arguments that this configuration needs."""
        if self.server_name:
            return [(TARGET_NAME_OVERRIDE_OPTION, self.server_name)]
        return []

    def describe(self) -> str:
        """Name the mode and the files for a log line."""
        text = f"TLS verified against {self.ca_path}"
        if self.cert_path is not None:
            text += f" with client certificate {self.cert_path}"
        if self.server_name:
            text += f", server name {self.server_name!r}"
        return text


def open_channel(
    address: str, options: list[tuple[str, int | str]], tls: ClientTls | None
) -> grpc.Channel:
    """Open a channel to `address`, secure when `tls` is given and plaintext otherwise."""
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, tls.credentials(), options=[*options, *tls.channel_options()])
