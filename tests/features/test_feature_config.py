"""Tests of features.config: settings, connection strings and the Feast RepoConfig."""

from __future__ import annotations

from pathlib import Path

import pytest

from features.config import (
    ENTITY_KEY_SERIALIZATION_VERSION,
    FeatureStoreSettings,
    build_repo_config,
    feast_redis_connection_string,
    parse_redis_connection_string,
)
from services.common.settings import SettingsError


def test_settings_from_environment(tmp_path: Path) -> None:
    settings = FeatureStoreSettings.from_env(
        {
            "PQ_ONLINE_STORE": "redis",
            "PQ_REDIS_CONNECTION_STRING": "127.0.0.1:6380,db=2",
            "PQ_FEAST_PROJECT": "pq_env",
            "PQ_FEATURE_DATA_DIR": str(tmp_path),
        }
    )
    assert settings.online_store == "redis"
    assert settings.feast_project == "pq_env"
    assert settings.registry_path == tmp_path / "registry.db"
    assert settings.schema_path == tmp_path / "feature_schema.json"


def test_settings_schema_path_override(tmp_path: Path) -> None:
    settings = FeatureStoreSettings.from_env({"PQ_FEATURE_SCHEMA_PATH": str(tmp_path / "s.json")})
    assert settings.schema_path == tmp_path / "s.json"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PQ_ONLINE_STORE", "memcached"),
        ("PQ_FEAST_PROJECT", "_hidden"),
        ("PQ_FEAST_PROJECT", "has-dash"),
        ("PQ_REDIS_CONNECTION_STRING", "localhost"),
        ("PQ_REDIS_TIMEOUT_S", "0"),
    ],
)
def test_settings_reject_invalid_values(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        FeatureStoreSettings.from_env({variable: value})


def test_connection_string_parsing() -> None:
    address = parse_redis_connection_string("redis.local:6380,db=3,ssl=true,password=s3cret")
    assert (address.host, address.port) == ("redis.local", 6380)
    assert address.params == {"db": 3, "ssl": True, "password": "s3cret"}
    assert str(address) == "redis.local:6380"


def test_connection_string_rejects_two_servers() -> None:
    with pytest.raises(ValueError, match="exactly one host:port"):
        parse_redis_connection_string("a:1,b:2")


def test_feast_connection_string_adds_timeouts() -> None:
    settings = FeatureStoreSettings(redis_connection_string="127.0.0.1:6379,socket_timeout=5", redis_timeout_s=0.5)
    assert feast_redis_connection_string(settings) == "127.0.0.1:6379,socket_timeout=5,socket_connect_timeout=0.5"


def test_repo_config_sqlite(tmp_path: Path) -> None:
    settings = FeatureStoreSettings(feature_data_dir=tmp_path, feast_project="pq_sqlite")
    config = build_repo_config(settings)
    assert config.project == "pq_sqlite"
    assert config.provider == "local"
    assert config.online_store.type == "sqlite"
    assert config.online_store.path == str(tmp_path / "online_store.db")
    assert config.registry.path == str(tmp_path / "registry.db")
    assert config.entity_key_serialization_version == ENTITY_KEY_SERIALIZATION_VERSION == 3


def test_repo_config_redis(tmp_path: Path) -> None:
    settings = FeatureStoreSettings(
        online_store="redis", redis_connection_string="127.0.0.1:6379,db=1", feature_data_dir=tmp_path
    )
    config = build_repo_config(settings)
    assert config.online_store.type == "redis"
    assert config.online_store.connection_string.startswith("127.0.0.1:6379,db=1,socket_timeout=")
    assert config.registry.path == str(tmp_path / "registry.db")


def test_relative_paths_made_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)

    settings = FeatureStoreSettings.from_env({}, feature_data_dir="runs/latest/features")

    assert settings.feature_data_dir == tmp_path / "runs" / "latest" / "features"
    assert settings.schema_path == tmp_path / "runs" / "latest" / "features" / "feature_schema.json"
