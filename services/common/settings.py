"""Typed service settings read from environment variables, with errors that name the variable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from services.common.tls import ServerTls, check_ca_bundle, check_key_pair, check_pem_file


class SettingsError(ValueError):
    """A setting is missing or has an invalid value; the message names the environment variable."""


class EnvSettings(BaseModel):
    """Base class of settings models filled from `<env_prefix><FIELD NAME IN UPPER CASE>` variables.

    Every field has a default, so an unset variable keeps it; a set variable is validated by the
    field's type. Unknown fields are rejected so a typo in code fails at start.
    """

    # Attribute docstrings become field descriptions, which docs/configuration.md is generated from.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    env_prefix: ClassVar[str] = "PQ_"

    @classmethod
    def env_name(cls, field: str) -> str:
        """Return the environment variable that sets `field`."""
        return f"{cls.env_prefix}{field.upper()}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """Build the settings from `environ` (default: os.environ); `overrides` win over both."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            variable = cls.env_name(name)
            if variable in environ:
                values[name] = environ[variable]
        values.update(overrides)
        try:
            return cls(**values)
        except ValidationError as error:
            problems = []
            for item in error.errors():
                # A validator's own ValueError is shown without pydantic's "Value error, " prefix.
                context = item.get("ctx") or {}
                if item["type"] == "value_error" and "error" in context:
                    message = str(context["error"])
                else:
                    message = item["msg"]
                if not item["loc"]:
                    # A model validator checks several fields together and names their variables itself.
                    problems.append(message)
                    continue
                field = str(item["loc"][0])
                value_text = cls.shown_value(field, values[field]) if field in values else "<unset>"
                problems.append(f"{cls.env_name(field)}={value_text}: {message}")
            raise SettingsError(f"invalid {cls.__name__}: " + "; ".join(problems)) from None

    @classmethod
    def shown_value(cls, field: str, value: Any) -> str:
        """Return `value` of `field` as an error message may show it: secrets are replaced by <hidden>."""
        annotation = cls.model_fields[field].annotation if field in cls.model_fields else None
        if annotation is SecretStr or SecretStr in get_args(annotation) or isinstance(value, SecretStr):
            return "<hidden>"
        return repr(value)


def empty_is_unset(value: object) -> object:
    """Map an empty or blank string to None; compose passes an unset variable through as ""."""
    if isinstance(value, str) and not value.strip():
        return None
    return value


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def check_host_port(value: str) -> str:
    """Return `value` when it is "host:port" with a port from 0 to 65535; raise ValueError otherwise.

    IPv6 hosts are written in brackets, as in "[::1]:50051", and gRPC's "unix:PATH" sockets pass.
    Without this check gRPC accepts a bare host and listens on its default port, 443.
    """
    if value.startswith("unix:"):
        return value
    host, separator, port = value.rpartition(":")
    if not separator or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{value!r} is not host:port; give a port, for example 127.0.0.1:50051")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ValueError(f"{value!r} has an IPv6 host without brackets; write it as [host]:port")
    return value


class ServiceSettings(EnvSettings):
    """Settings every gRPC service has; subclasses set `env_prefix` and the default `address`."""

    address: str = Field(
        default="127.0.0.1:0", description="host:port to listen on; port 0 picks a free port."
    )
    max_workers: int = Field(default=4, ge=1, description="Threads that serve calls concurrently.")
    max_message_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description=(
            "Largest request or response message in bytes; a larger request gets RESOURCE_EXHAUSTED."
        ),
    )
    grace_period_s: float = Field(
        default=5.0,
        ge=0.0,
        description="Seconds that calls in flight may keep running after a stop signal before they are cancelled.",
    )
    log_level: str = Field(
        default="INFO", description="Python logging level name, for example INFO or DEBUG."
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description='Torch device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".',
    )

    tls_cert_path: Path | None = Field(
        default=None,
        description=(
            "PEM certificate chain of the server. Set it together with the key to serve TLS only; "
            "unset serves plaintext."
        ),
    )
    tls_key_path: Path | None = Field(
        default=None,
        description="PEM private key of the server certificate, unencrypted. Set it together with the certificate.",
    )
    tls_client_ca_path: Path | None = Field(
        default=None,
        description=(
            "PEM CA certificates for mutual TLS: when set, every client must present a certificate "
            "signed by one of them. Needs the server certificate and key."
        ),
    )

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        return check_host_port(value)

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("tls_cert_path", "tls_key_path", "tls_client_ca_path", mode="before")
    @classmethod
    def _empty_tls_path_is_unset(cls, value: object) -> object:
        return empty_is_unset(value)

    @field_validator("tls_cert_path", "tls_client_ca_path")
    @classmethod
    def _check_certificate_file(cls, value: Path | None) -> Path | None:
        return None if value is None else check_pem_file(value, "certificate")

    @field_validator("tls_key_path")
    @classmethod
    def _check_key_file(cls, value: Path | None) -> Path | None:
        return None if value is None else check_pem_file(value, "private key")

    @model_validator(mode="after")
    def _check_tls_files_together(self) -> Self:
        cert, key, client_ca = (
            self.env_name(name) for name in ("tls_cert_path", "tls_key_path", "tls_client_ca_path")
        )
        if (self.tls_cert_path is None) != (self.tls_key_path is None):
            raise ValueError(
                f"{cert} and {key} must be set together: TLS needs both the certificate and its key"
            )
        if self.tls_client_ca_path is not None and self.tls_cert_path is None:
            raise ValueError(f"{client_ca} needs {cert} and {key}: mutual TLS runs over TLS")
        if self.tls_cert_path is not None and self.tls_key_path is not None:
            try:
                check_key_pair(self.tls_cert_path, self.tls_key_path)
            except ValueError as error:
                raise ValueError(f"{cert} and {key}: {error}") from None
        if self.tls_client_ca_path is not None:
            try:
                check_ca_bundle(self.tls_client_ca_path)
            except ValueError as error:
                raise ValueError(f"{client_ca}: {error}") from None
        return self

    def server_tls(self) -> ServerTls | None:
        """Return the server's TLS configuration, or None when it serves plaintext."""
        if self.tls_cert_path is None or self.tls_key_path is None:
            return None
        return ServerTls(self.tls_cert_path, self.tls_key_path, self.tls_client_ca_path)
