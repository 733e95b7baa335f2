"""Batching and thread settings of the image and text encoder services."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest
import torch

from services.common.cores import available_cores, set_torch_threads
from services.common.settings import SettingsError
from services.image_encoder import ImageEncoderSettings
from services.text_encoder import TextEncoderSettings

SETTINGS_CLASSES = [ImageEncoderSettings, TextEncoderSettings]


@pytest.fixture
def restore_torch_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("settings_class", SETTINGS_CLASSES)
def test_batching_defaults(settings_class: type[ImageEncoderSettings | TextEncoderSettings]) -> None:
    settings = settings_class.from_env({})
    config = settings.batching_config()

    assert settings.dynamic_batching is True
    assert settings.max_queue_delay_us == 2000
    assert settings.torch_threads == 0
    assert config.max_batch_size == 64
    assert config.preferred_batch_size == 64
    assert config.max_queue_delay_s == pytest.approx(0.002)
    assert config.max_queued_items == 256


def test_image_settings_from_env() -> None:
    settings = ImageEncoderSettings.from_env(
        {
            "PQ_IMAGE_ENCODER_DYNAMIC_BATCHING": "false",
            "PQ_IMAGE_ENCODER_MAX_BATCH_SIZE": "16",
            "PQ_IMAGE_ENCODER_PREFERRED_BATCH_SIZE": "8",
            "PQ_IMAGE_ENCODER_MAX_QUEUE_DELAY_US": "500",
            "PQ_IMAGE_ENCODER_MAX_QUEUED_ITEMS": "16",
            "PQ_IMAGE_ENCODER_TORCH_THREADS": "3",
            "PQ_IMAGE_ENCODER_PREPROCESS_THREADS": "5",
            "PQ_IMAGE_ENCODER_MAX_WORKERS": "7",
        }
    )
    config = settings.batching_config()

    assert settings.dynamic_batching is False
    assert config.preferred_batch_size == 8
    assert config.max_queue_delay_s == pytest.approx(0.0005)
    assert config.max_queued_items == 16
    assert settings.torch_threads == 3
    assert settings.preprocess_thread_count() == 5
    assert settings.worker_threads() == 7


def test_text_settings_from_env() -> None:
    settings = TextEncoderSettings.from_env(
        {"PQ_TEXT_ENCODER_MAX_QUEUE_DELAY_US": "0", "PQ_TEXT_ENCODER_PREFERRED_BATCH_SIZE": "1"}
    )

    assert settings.batching_config().max_queue_delay_s == 0
    assert settings.batching_config().preferred_batch_size == 1


@pytest.mark.parametrize("settings_class", SETTINGS_CLASSES)
def test_thread_counts_follow_cores(settings_class: type[ImageEncoderSettings | TextEncoderSettings]) -> None:
    batching = settings_class.from_env({}, max_batch_size=10)
    direct = settings_class.from_env({}, max_batch_size=10, dynamic_batching=False)

    assert batching.worker_threads() == 10 + available_cores()
    assert direct.worker_threads() == available_cores()


def test_preprocess_threads_follow_cores() -> None:
    assert ImageEncoderSettings.from_env({}).preprocess_thread_count() == available_cores()


def test_available_cores_uses_affinity() -> None:
    assert available_cores() == len(os.sched_getaffinity(0))


def test_set_torch_threads(restore_torch_threads: None) -> None:
    assert set_torch_threads(1) == 1
    assert torch.get_num_threads() == 1

    assert set_torch_threads(0) == available_cores()
    assert torch.get_num_threads() == available_cores()


@pytest.mark.parametrize(
    ("environ", "variable", "message"),
    [
        (
            {"PQ_TEXT_ENCODER_MAX_BATCH_SIZE": "8", "PQ_TEXT_ENCODER_PREFERRED_BATCH_SIZE": "9"},
            "PQ_TEXT_ENCODER_PREFERRED_BATCH_SIZE",
            "9 is more than PQ_TEXT_ENCODER_MAX_BATCH_SIZE (8)",
        ),
        (
            {"PQ_TEXT_ENCODER_MAX_BATCH_SIZE": "512"},
            "PQ_TEXT_ENCODER_MAX_QUEUED_ITEMS",
            "256 is less than PQ_TEXT_ENCODER_MAX_BATCH_SIZE (512)",
        ),
        ({"PQ_TEXT_ENCODER_MAX_QUEUE_DELAY_US": "-1"}, "PQ_TEXT_ENCODER_MAX_QUEUE_DELAY_US", ""),
        ({"PQ_TEXT_ENCODER_DYNAMIC_BATCHING": "maybe"}, "PQ_TEXT_ENCODER_DYNAMIC_BATCHING", ""),
        ({"PQ_TEXT_ENCODER_TORCH_THREADS": "-2"}, "PQ_TEXT_ENCODER_TORCH_THREADS", ""),
        ({"PQ_TEXT_ENCODER_MAX_WORKERS": "-1"}, "PQ_TEXT_ENCODER_MAX_WORKERS", ""),
        ({"PQ_IMAGE_ENCODER_PREPROCESS_THREADS": "-1"}, "PQ_IMAGE_ENCODER_PREPROCESS_THREADS", ""),
        (
            {"PQ_IMAGE_ENCODER_MAX_BATCH_SIZE": "4", "PQ_IMAGE_ENCODER_PREFERRED_BATCH_SIZE": "5"},
            "PQ_IMAGE_ENCODER_PREFERRED_BATCH_SIZE",
            "5 is more than PQ_IMAGE_ENCODER_MAX_BATCH_SIZE (4)",
        ),
    ],
)
def test_invalid_setting_names_variable(environ: dict[str, str], variable: str, message: str) -> None:
    settings_class = ImageEncoderSettings if variable.startswith("PQ_IMAGE") else TextEncoderSettings

    with pytest.raises(SettingsError) as raised:
        settings_class.from_env(environ)

    assert re.search(rf"\b{variable}=", str(raised.value))
    assert message in str(raised.value)


def test_describe_batching() -> None:
    on = TextEncoderSettings.from_env({}, max_batch_size=16, preferred_batch_size=4, max_queued_items=32)
    off = TextEncoderSettings.from_env({}, dynamic_batching=False)

    assert on.describe_batching() == (
        "dynamic batching with max batch size 16, preferred batch size 4, max queue delay 2000 us and "
        "max queued items 32"
    )
    assert off.describe_batching() == "dynamic batching off"


@pytest.mark.parametrize(
    "address", ["localhost", "127.0.0.1:", ":50051", "127.0.0.1:http", "127.0.0.1:70000", "::1:50051"]
)
def test_address_without_port_rejected(address: str) -> None:
    with pytest.raises(SettingsError) as raised:
        TextEncoderSettings.from_env({"PQ_TEXT_ENCODER_ADDRESS": address})
    assert "PQ_TEXT_ENCODER_ADDRESS" in str(raised.value)


@pytest.mark.parametrize(
    "address", ["127.0.0.1:0", "0.0.0.0:50052", "[::1]:50052", "text-encoder:50052", "unix:/tmp/pq.sock"]
)
def test_address_with_port_accepted(address: str) -> None:
    assert TextEncoderSettings.from_env({"PQ_TEXT_ENCODER_ADDRESS": address}).address == address
