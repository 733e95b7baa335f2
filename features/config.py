"""Feature store settings and the Feast RepoConfig built from them in code."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from features.schema import SCHEMA_FILE_NAME
from services.common.settings import EnvSettings

if TYPE_CHECKING:
    from feast import FeatureStore, RepoConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FEATURE_REPO_DIR = REPO_ROOT / "feature_repo"

# Feast 0.67 deprecates entity key serialization versions below 3 (RepoConfig warns), and 3 is
# its default. It is set explicitly because RedisFeatureReader builds keys with the same version.
ENTITY_KEY_SERIALIZATION_VERSION = 3

REGISTRY_FILE_NAME = "registry.db"
SQLITE_ONLINE_STORE_FILE_NAME = "online_store.db"

# Feast project names: letters, digits and underscores, not starting with an underscore.
_PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*$")


class FeatureStoreSettings(EnvSettings):
    """Feature store locations and online store choice, read from `PQ_*` variables."""

    online_store: Literal["sqlite", "redis"] = "sqlite"
    """Online store: "sqlite" (a file under feature_data_dir, no server) or "redis"."""

    redis_connection_string: str = "127.0.0.1:6379"
    """Redis address in Feast's format `host:port[,param=value...]`, e.g. `127.0.0.1:6379,db=1`."""

    redis_timeout_s: float = Field(default=2.0, gt=0)
    """Seconds to wait for a Redis connection or reply; used unless the connection string sets
    socket_timeout or socket_connect_timeout itself."""

    feast_project: str = "product_quality"
    """Feast project name; it scopes the registry entries and the Redis keys."""

    feature_repo_dir: Path = DEFAULT_FEATURE_REPO_DIR
    """Feast repository directory (the `repo_path` of the RepoConfig)."""

    feature_data_dir: Path = DEFAULT_FEATURE_REPO_DIR / "data"
    """Directory of the parquet sources, the file registry and the SQLite online store."""

    feature_schema_path: Path | None = None
    """Feature schema JSON written by training; unset means `<feature_data_dir>/feature_schema.json`."""

    @field_validator("feature_repo_dir", "feature_data_dir", "feature_schema_path")
    @classmethod
    def _make_absolute(cls, value: Path | None) -> Path | None:
        # Feast resolves relative paths against the repository directory, not the working
        # directory, so a relative setting is made absolute here, against the working directory.
        return None if value is None else value.expanduser().resolve()

    @field_validator("feast_project")
    @classmethod
    def _check_project(cls, value: str) -> str:
        if not _PROJECT_NAME.match(value):
            raise ValueError(
                f"Feast project name {value!r} is invalid; use letters, digits and '_', "
                "not starting with '_'"
            )
        return value

    @field_validator("redis_connection_string")
    @classmethod
    def _check_connection_string(cls, value: str) -> str:
        # Parsing raises ValueError with the reason when the address is malformed.
        parse_redis_connection_string(value)
        return value

    @property
    def schema_path(self) -> Path:
        """The feature schema JSON file that `feature_repo` and the materialize command read."""
        if self.feature_schema_path is not None:
            return self.feature_schema_path
        return self.feature_data_dir / SCHEMA_FILE_NAME

    @property
    def registry_path(self) -> Path:
        """The Feast file registry."""
        return self.feature_data_dir / REGISTRY_FILE_NAME

    @property
    def sqlite_path(self) -> Path:
        """The SQLite online store file, used when online_store is "sqlite"."""
        return self.feature_data_dir / SQLITE_ONLINE_STORE_FILE_NAME


@dataclass(frozen=True)
class RedisAddress:
    """A parsed Feast Redis connection string: one server and the keyword arguments for redis-py."""

    host: str
    port: int
    params: dict[str, Any]

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_redis_connection_string(connection_string: str) -> RedisAddress:
    """Parse `host:port[,param=value...]` the way Feast's Redis online store does.

    Reimplements `RedisOnlineStore._parse_connection_string` of Feast 0.67
    (feast/infra/online_stores/redis.py) without importing Feast: items without "=" are servers,
    the others are parameters whose values are decoded as JSON when they parse as JSON, else kept
    as strings. Only a single server is supported, as for Feast's `redis_type: redis`.
    """
    servers: list[str] = []
    params: dict[str, Any] = {}
    for item in connection_string.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" in item:
            name, raw = item.split("=", 1)
            try:
                params[name] = json.loads(raw)
            except json.JSONDecodeError:
                params[name] = raw
        else:
            servers.append(item)
    if len(servers) != 1:
        raise ValueError(
            f"Redis connection string {connection_string!r} must name exactly one host:port, "
            f"found {len(servers)}"
        )
    host, separator, port_text = servers[0].rpartition(":")
    if not separator or not host or not port_text.isdigit():
        raise ValueError(
            f"Redis address {servers[0]!r} in connection string {connection_string!r} is invalid; "
            "expected host:port, e.g. 127.0.0.1:6379"
        )
    return RedisAddress(host=host, port=int(port_text), params=params)


def feast_redis_connection_string(settings: FeatureStoreSettings) -> str:
    """Return the connection string for Feast, with timeouts from redis_timeout_s added when unset."""
    address = parse_redis_connection_string(settings.redis_connection_string)
    extra = [
        f"{name}={settings.redis_timeout_s}"
        for name in ("socket_timeout", "socket_connect_timeout")
        if name not in address.params
    ]
    return ",".join([settings.redis_connection_string, *extra])


def build_repo_config(settings: FeatureStoreSettings) -> RepoConfig:
    """Build the Feast RepoConfig: local provider, file registry and the selected online store.

    The registry and the SQLite online store live in feature_data_dir. The Redis connection
    string gets timeouts from redis_timeout_s, because redis-py waits forever by default.
    """
    from feast import RepoConfig
    from feast.repo_config import RegistryConfig

    online_store: dict[str, Any]
    if settings.online_store == "redis":
        online_store = {"type": "redis", "connection_string": feast_redis_connection_string(settings)}
    else:
        online_store = {"type": "sqlite", "path": str(settings.sqlite_path)}

    return RepoConfig(
        project=settings.feast_project,
        provider="local",
        registry=RegistryConfig(registry_type="file", path=str(settings.registry_path)),
        online_store=online_store,
        offline_store={"type": "dask"},
        entity_key_serialization_version=ENTITY_KEY_SERIALIZATION_VERSION,
        repo_path=settings.feature_repo_dir,
    )


def open_feature_store(settings: FeatureStoreSettings) -> FeatureStore:
    """Open the Feast FeatureStore described by `settings`, creating feature_data_dir when absent."""
    from feast import FeatureStore

    settings.feature_data_dir.mkdir(parents=True, exist_ok=True)
    return FeatureStore(config=build_repo_config(settings))
