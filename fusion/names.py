"""Names shared by every model kind: the modalities, in the order of every (B, 3) array, and the tasks."""

from __future__ import annotations

from typing import Literal

MODALITIES: tuple[str, str, str] = ("image", "text", "attributes")

TASKS: tuple[str, str] = ("regression", "binary")

Task = Literal["regression", "binary"]
