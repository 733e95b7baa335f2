"""Typed service settings read from environment variables, with errors that name the variable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


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
                field = str(item["loc"][0]) if item["loc"] else "?"
                given = values.get(field, "<unset>")
                problems.append(f"{cls.env_name(field)}={given!r}: {item['msg']}")
            raise SettingsError(f"invalid {cls.__name__}: " + "; ".join(problems)) from None


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ServiceSettings(EnvSettings):
    """Settings every gRPC service has; subclasses set `env_prefix` and the default `address`."""

    address: str = Field(default="127.0.0.1:0", description="host:port to listen on; port 0 picks a free port.")
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
    log_level: str = Field(default="INFO", description="Python logging level name, for example INFO or DEBUG.")
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description='Torch device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".',
    )

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level
