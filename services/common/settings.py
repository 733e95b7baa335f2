"""Typed service settings read from environment variables, with errors that name the variable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError


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
