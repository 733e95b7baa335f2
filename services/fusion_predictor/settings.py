"""Settings of the fusion predictor service, read from `PQ_PREDICTOR_*` environment variables.

The online store is configured separately by `features.config.FeatureStoreSettings` (`PQ_*`).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from services.common.auth import check_token, read_token_file
from services.common.settings import ServiceSettings, SettingsError, empty_is_unset
from services.common.tls import ClientTls, check_ca_bundle, check_key_pair, check_pem_file

DEFAULT_PORT = 50050


class PredictorSettings(ServiceSettings):
    """Configuration of `python -m services.fusion_predictor`."""

    env_prefix: ClassVar[str] = "PQ_PREDICTOR_"

    address: str = Field(
        default=f"127.0.0.1:{DEFAULT_PORT}",
        description='Listening address "host:port"; port 0 picks a free port.',
    )
    model_path: Path | None = Field(
        default=None,
        description="Checkpoint directory written by fusion.checkpoint.save_checkpoint. Required.",
    )
    image_encoder_address: str = Field(
        default="",
        description='Address "host:port" of the image encoder service; empty means none is configured.',
    )
    text_encoder_address: str = Field(
        default="",
        description='Address "host:port" of the text encoder service; empty means none is configured.',
    )
    encoder_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description=(
            "Maximum time in seconds for the encoder calls of one request, whose chunks run in parallel; "
            "the client's remaining time less PQ_PREDICTOR_ENCODER_DEADLINE_MARGIN_S wins when shorter."
        ),
    )
    encoder_deadline_margin_s: float = Field(
        default=0.1,
        ge=0,
        description=(
            "Seconds kept back from the caller's remaining time when the encoder calls get their "
            "deadline, so that after an encoder timeout the predictor still has time to send the "
            "degraded answer or the DEADLINE_EXCEEDED status before the caller gives up."
        ),
    )
    on_encoder_failure: Literal["fail", "degrade"] = Field(
        default="fail",
        description=(
            'What a call does when an encoder that it needs is unavailable or too slow. "fail" '
            "returns UNAVAILABLE, or DEADLINE_EXCEEDED when the caller's deadline ran out. "
            '"degrade" scores the product without that modality and marks the response degraded. '
            '"fail" is the default because a degraded score can differ from the full one, and only '
            "a client that checks the degraded flag should get one."
        ),
    )
    encoder_batch_size: int = Field(
        default=64,
        ge=1,
        description=(
            "Maximum number of images or texts per encoder call; larger sets are split into calls "
            "sent in parallel. Keep it at most the encoders' PQ_IMAGE_ENCODER_MAX_BATCH_SIZE and "
            "PQ_TEXT_ENCODER_MAX_BATCH_SIZE (both 64 by default)."
        ),
    )
    max_batch_size: int = Field(
        default=1000,
        ge=1,
        description="Maximum number of requests in one PredictQualityBatch call.",
    )
    write_back: bool = Field(
        default=True,
        description="Write embeddings computed from inline content back to the online store.",
    )
    max_workers: int = Field(default=8, ge=1, description="Threads that serve calls concurrently.")
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description='Torch device of the fusion model: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".',
    )

    encoder_tls_ca_path: Path | None = Field(
        default=None,
        description=(
            "PEM CA certificates that verify the encoders' server certificates. Set it to call the "
            "encoders over TLS; unset calls them over plaintext."
        ),
    )
    encoder_tls_cert_path: Path | None = Field(
        default=None,
        description=(
            "PEM client certificate that the predictor presents to encoders that require mutual TLS. "
            "Set it together with the key and the CA."
        ),
    )
    encoder_tls_key_path: Path | None = Field(
        default=None,
        description="PEM private key of the client certificate, unencrypted.",
    )
    encoder_tls_server_name: str = Field(
        default="",
        description=(
            "Host name checked against the encoders' certificates instead of the one in their "
            "addresses, for certificates issued to another name; empty uses the address."
        ),
    )
    auth_tokens_path: Path | None = Field(
        default=None,
        description=(
            "File of accepted bearer tokens, one per line (blank lines and lines starting with # are "
            "skipped). When set, every QualityPredictorService call needs the metadata "
            "'authorization: Bearer <token>'; health checking and reflection stay open."
        ),
    )
    auth_token: SecretStr | None = Field(
        default=None,
        description=(
            "One accepted bearer token, for setups without a token file; the file is safer because "
            "an environment variable shows in the process environment and in compose output. Set "
            "at most one of the two."
        ),
    )

    @field_validator(
        "encoder_tls_ca_path", "encoder_tls_cert_path", "encoder_tls_key_path", "auth_tokens_path", "auth_token",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return empty_is_unset(value)

    @field_validator("encoder_tls_ca_path", "encoder_tls_cert_path")
    @classmethod
    def _check_certificate_file(cls, value: Path | None) -> Path | None:
        return None if value is None else check_pem_file(value, "certificate")

    @field_validator("encoder_tls_key_path")
    @classmethod
    def _check_key_file(cls, value: Path | None) -> Path | None:
        return None if value is None else check_pem_file(value, "private key")

    @field_validator("auth_tokens_path")
    @classmethod
    def _check_token_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_token_file(value)
        return value

    @field_validator("auth_token")
    @classmethod
    def _check_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_token(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _check_encoder_tls_together(self) -> Self:
        ca, cert, key = (
            self.env_name(name) for name in ("encoder_tls_ca_path", "encoder_tls_cert_path", "encoder_tls_key_path")
        )
        if (self.encoder_tls_cert_path is None) != (self.encoder_tls_key_path is None):
            raise ValueError(f"{cert} and {key} must be set together: mutual TLS needs the certificate and its key")
        if self.encoder_tls_cert_path is not None and self.encoder_tls_ca_path is None:
            raise ValueError(f"{cert} needs {ca}: the client certificate is only sent over TLS")
        if self.encoder_tls_server_name and self.encoder_tls_ca_path is None:
            raise ValueError(f"{self.env_name('encoder_tls_server_name')} needs {ca}: it only applies to TLS")
        if self.encoder_tls_cert_path is not None and self.encoder_tls_key_path is not None:
            try:
                check_key_pair(self.encoder_tls_cert_path, self.encoder_tls_key_path)
            except ValueError as error:
                raise ValueError(f"{cert} and {key}: {error}") from None
        if self.encoder_tls_ca_path is not None:
            try:
                check_ca_bundle(self.encoder_tls_ca_path)
            except ValueError as error:
                raise ValueError(f"{ca}: {error}") from None
        if self.auth_tokens_path is not None and self.auth_token is not None:
            raise ValueError(
                f"set only one of {self.env_name('auth_tokens_path')} and {self.env_name('auth_token')}; "
                "a token file can hold several tokens"
            )
        return self

    @field_validator("model_path")
    @classmethod
    def _check_model_path(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{value} is not a directory; set it to a fusion checkpoint directory")
        return value

    def require_model_path(self) -> Path:
        """Return `model_path`; raise SettingsError naming its variable when it is unset."""
        if self.model_path is None:
            raise SettingsError(
                f"{self.env_name('model_path')} is not set; set it to the checkpoint directory "
                "written by the training pipeline (it contains checkpoint.json)"
            )
        return self.model_path

    def encoder_tls(self) -> ClientTls | None:
        """Return the TLS configuration of the channels to the encoders, or None for plaintext."""
        if self.encoder_tls_ca_path is None:
            return None
        return ClientTls(
            ca_path=self.encoder_tls_ca_path,
            cert_path=self.encoder_tls_cert_path,
            key_path=self.encoder_tls_key_path,
            server_name=self.encoder_tls_server_name or None,
        )

    def accepted_tokens(self) -> list[str]:
        """Return the accepted bearer tokens; an empty list means calls need no token."""
        if self.auth_tokens_path is not None:
            try:
                return read_token_file(self.auth_tokens_path)
            except ValueError as error:
                # The file was valid when the settings were read, so it changed since then.
                raise SettingsError(f"{self.env_name('auth_tokens_path')}: {error}") from None
        if self.auth_token is not None:
            return [self.auth_token.get_secret_value()]
        return []
