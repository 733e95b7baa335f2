"""Settings shared by the image and text encoder services: batch limits, dynamic batching, threads."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator

from services.common.batching import BatchingConfig
from services.common.cores import available_cores
from services.common.settings import ServiceSettings


class EncoderServiceSettings(ServiceSettings):
    """Settings of a service that embeds batches of items (images or texts) with one model.

    Subclasses set `env_prefix` and may redefine a field's default or description. A redefined
    field keeps its place in the field order, which the validators below rely on.
    """

    max_workers: int = Field(
        default=0,
        ge=0,
        description=(
            "Threads that serve calls concurrently. 0 picks max_batch_size plus the available CPU "
            "cores with dynamic batching, so a full batch of one-item calls can queue while other "
            "calls decode, and the available CPU cores without it. A thread that waits for its batch "
            "uses no CPU."
        ),
    )
    max_batch_size: int = Field(
        default=64,
        ge=1,
        description="Maximum number of items per request, and per forward pass with dynamic batching.",
    )
    dynamic_batching: bool = Field(
        default=True,
        description=(
            "Queue the items of concurrent calls and embed them in one forward pass. When false, "
            "each call runs its own forward pass."
        ),
    )
    preferred_batch_size: int = Field(
        default=0,
        # Validated when unset too, because the check compares it with max_batch_size.
        validate_default=True,
        ge=0,
        description=(
            "Queued items at which a batch starts without waiting for max_queue_delay_us; "
            "at most max_batch_size. 0 means max_batch_size."
        ),
    )
    max_queue_delay_us: int = Field(
        default=2000,
        ge=0,
        description=(
            "Microseconds the oldest queued call waits for more calls to join its batch before the "
            "batch starts anyway."
        ),
    )
    max_queued_items: int = Field(
        default=256,
        # Validated when unset too, because the check compares it with max_batch_size.
        validate_default=True,
        ge=1,
        description=(
            "Maximum number of items waiting for a forward pass, at least max_batch_size. A call whose "
            "items do not fit fails with RESOURCE_EXHAUSTED."
        ),
    )
    onnx_cache_dir: Path | None = Field(
        default=None,
        description=(
            "Folder of the ONNX exports made for the onnx runtime, reused across starts; unset means "
            "$XDG_CACHE_HOME/pq/onnx or ~/.cache/pq/onnx. The first start with a new weights file "
            "exports the model there, which takes 10-20 s on 2 CPU cores."
        ),
    )
    torch_threads: int = Field(
        default=0,
        ge=0,
        description=(
            "Torch intra-op threads of the forward pass. 0 means the CPU cores available to the "
            "process (its affinity mask)."
        ),
    )

    @field_validator("preferred_batch_size")
    @classmethod
    def _check_preferred_batch_size(cls, value: int, info: ValidationInfo) -> int:
        # max_batch_size is declared first, so it is in info.data unless its own validation failed.
        max_batch_size = info.data.get("max_batch_size")
        if max_batch_size is not None and value > max_batch_size:
            raise ValueError(
                f"{value} is more than {cls.env_name('max_batch_size')} ({max_batch_size}); set it to "
                "at most that, or to 0 for that value"
            )
        return value

    @field_validator("max_queued_items")
    @classmethod
    def _check_max_queued_items(cls, value: int, info: ValidationInfo) -> int:
        max_batch_size = info.data.get("max_batch_size")
        if max_batch_size is not None and value < max_batch_size:
            raise ValueError(
                f"{value} is less than {cls.env_name('max_batch_size')} ({max_batch_size}), so a request "
                "of that many items could never be queued; set it to at least that"
            )
        return value

    def worker_threads(self) -> int:
        """Return the gRPC worker thread count that `max_workers` selects (0 picks one)."""
        if self.max_workers > 0:
            return self.max_workers
        if self.dynamic_batching:
            return self.max_batch_size + available_cores()
        return available_cores()

    def batching_config(self) -> BatchingConfig:
        """Return the limits of the service's dynamic batcher."""
        return BatchingConfig(
            max_batch_size=self.max_batch_size,
            preferred_batch_size=self.preferred_batch_size or self.max_batch_size,
            max_queue_delay_s=self.max_queue_delay_us / 1_000_000,
            max_queued_items=self.max_queued_items,
        )

    def describe_batching(self) -> str:
        """Describe the dynamic batching settings for log lines."""
        if not self.dynamic_batching:
            return "dynamic batching off"
        config = self.batching_config()
        return (
            f"dynamic batching with max batch size {config.max_batch_size}, preferred batch size "
            f"{config.preferred_batch_size}, max queue delay {self.max_queue_delay_us} us and "
            f"max queued items {config.max_queued_items}"
        )

    @field_validator("onnx_cache_dir", mode="before")
    @classmethod
    def _empty_cache_dir_is_unset(cls, value: object) -> object:
        # Compose files pass an unset variable through as "", which means the default folder.
        if isinstance(value, str) and not value.strip():
            return None
        return value
