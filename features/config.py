"""Feature store settings and the Feast RepoConfig built from them in code."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from features.schema import SCHEMA_FILE_NAME
from services.common.settings import EnvSettings, SettingsError, empty_is_unset
from services.common.tls import check_ca_bundle, check_key_pair, check_pem_file

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

# Connection string parameters whose values are secrets and never appear in a message.
SECRET_PARAMS = ("password",)
_SECRET_PARAM = re.compile(r"(^|,)(\s*(?:" + "|".join(SECRET_PARAMS) + r")\s*=)[^,]*")


class FeatureStoreSettings(EnvSettings):
    """Feature store locations and online store choice, read from `PQ_*` variables."""

    online_store: Literal["sqlite", "redis"] = "sqlite"
    """Online store: "sqlite" (a file under feature_data_dir, no server) or "redis"."""

    redis_connection_string: str = Field(default="127.0.0.1:6379", repr=False)
    """Redis address in Feast's format `host:port[,param=value...]`, e.g. `127.0.0.1:6379,db=1`. Error
    messages show a password in it (`password=...`) as ***, but the process environment shows it,
    so prefer PQ_REDIS_PASSWORD_FILE."""

    redis_password_file: Path | None = None
    """File whose first line is the Redis password (AUTH); unset sends none, unless the connection
    string has one. The password may not contain a comma, which Feast's connection string cannot carry."""

    redis_tls_ca_path: Path | None = None
    """PEM CA certificates that verify the Redis server certificate. Set it to connect over TLS
    (like `ssl=true` in the connection string); unset connects over plaintext."""

    redis_tls_cert_path: Path | None = None
    """PEM client certificate for a Redis server that requires one (Redis `tls-auth-clients yes`).
    Needs PQ_REDIS_TLS_CA_PATH and PQ_REDIS_TLS_KEY_PATH."""

    redis_tls_key_path: Path | None = None
    """PEM private key of the Redis client certificate, unencrypted."""

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

    @field_validator(
        "redis_password_file", "redis_tls_ca_path", "redis_tls_cert_path", "redis_tls_key_path", mode="before"
    )
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        return empty_is_unset(value)

    @field_validator("redis_password_file")
    @classmethod
    def _check_password_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_password_file(value)
        return value

    @field_validator("redis_tls_ca_path", "redis_tls_cert_path")
    @classmethod
    def _check_certificate_file(cls, value: Path | None) -> Path | None:
        return None if value is None else check_pem_file(value, "certificate")

    @field_validator("redis_tls_key_path")
    @classmethod
    def _check_key_file(cls, value: Path | None) -> Path | None:
        return None if value is None else check_pem_file(value, "private key")

    @model_validator(mode="after")
    def _check_redis_security_together(self) -> FeatureStoreSettings:
        address = parse_redis_connection_string(self.redis_connection_string)
        password_file, connection_string = self.env_name("redis_password_file"), self.env_name("redis_connection_string")
        ca, cert, key = (self.env_name(name) for name in ("redis_tls_ca_path", "redis_tls_cert_path", "redis_tls_key_path"))
        if self.redis_password_file is not None and "password" in address.params:
            raise ValueError(f"set the Redis password in one place: {password_file} or {connection_string}, not both")
        if (self.redis_tls_cert_path is None) != (self.redis_tls_key_path is None):
            raise ValueError(f"{cert} and {key} must be set together")
        if self.redis_tls_cert_path is not None and self.redis_tls_ca_path is None:
            raise ValueError(f"{cert} needs {ca}: the client certificate is only sent over TLS")
        if self.redis_tls_cert_path is not None and self.redis_tls_key_path is not None:
            try:
                check_key_pair(self.redis_tls_cert_path, self.redis_tls_key_path)
            except ValueError as error:
                raise ValueError(f"{cert} and {key}: {error}") from None
        if self.redis_tls_ca_path is not None:
            try:
                check_ca_bundle(self.redis_tls_ca_path)
            except ValueError as error:
                raise ValueError(f"{ca}: {error}") from None
        # Feast splits its connection string at commas and "=", so its values cannot contain a comma.
        for name in ("redis_tls_ca_path", "redis_tls_cert_path", "redis_tls_key_path"):
            value = getattr(self, name)
            if value is not None and "," in str(value):
                raise ValueError(f"{self.env_name(name)}={str(value)!r} contains a comma, which Feast's connection string cannot carry")
        return self

    @classmethod
    def shown_value(cls, field: str, value: Any) -> str:
        """Return `value` as an error message may show it, with a connection string's password hidden."""
        if field == "redis_connection_string" and isinstance(value, str):
            return repr(redact_connection_string(value))
        return super().shown_value(field, value)

    def redis_security_params(self) -> dict[str, Any]:
        """Return the redis-py keyword arguments of the password file and TLS settings; {} when none is set.

        The password is read from its file on every call, so a replaced file takes effect at the next
        connection.
        """
        params: dict[str, Any] = {}
        if self.redis_password_file is not None:
            try:
                params["password"] = read_password_file(self.redis_password_file)
            except ValueError as error:
                # The file was valid when the settings were read, so it changed since then.
                raise SettingsError(f"{self.env_name('redis_password_file')}: {error}") from None
        if self.redis_tls_ca_path is not None:
            params["ssl"] = True
            params["ssl_ca_certs"] = str(self.redis_tls_ca_path)
        if self.redis_tls_cert_path is not None and self.redis_tls_key_path is not None:
            params["ssl_certfile"] = str(self.redis_tls_cert_path)
            params["ssl_keyfile"] = str(self.redis_tls_key_path)
        return params

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


def read_password_file(path: Path) -> str:
    """Return the password in `path`: its first line without the line ending.

    Raises ValueError, which never contains the password, when the file cannot be read, is empty,
    has more than one line, or the password contains a comma.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist; set it to a file that contains the Redis password") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} cannot be read: {error}") from None
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise ValueError(f"{path} is empty; write the Redis password on its first line")
    if any(line.strip() for line in lines[1:]):
        raise ValueError(f"{path} has more than one line; write only the Redis password")
    if "," in lines[0]:
        raise ValueError(f"the password in {path} contains a comma, which Feast's connection string cannot carry")
    return lines[0]


def redact_connection_string(connection_string: str) -> str:
    """Return `connection_string` with the value of every secret parameter replaced by ***."""
    return _SECRET_PARAM.sub(r"\1\2***", connection_string)


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
    redacted = redact_connection_string(connection_string)
    if len(servers) != 1:
        raise ValueError(
            f"Redis connection string {redacted!r} must name exactly one host:port, found {len(servers)}"
        )
    host, separator, port_text = servers[0].rpartition(":")
    if not separator or not host or not port_text.isdigit():
        raise ValueError(
            f"Redis address {servers[0]!r} in connection string {redacted!r} is invalid; "
            "expected host:port, e.g. 127.0.0.1:6379"
        )
    return RedisAddress(host=host, port=int(port_text), params=params)


def feast_redis_connection_string(settings: FeatureStoreSettings) -> str:
    """Return the connection string for Feast, with timeouts from redis_timeout_s added when unset.

    The password file and TLS settings are appended as parameters, so Feast's client authenticates
    and verifies the server like connect_redis does. The result can contain the password: never log it.
    """
    address = parse_redis_connection_string(settings.redis_connection_string)
    extra = [
        f"{name}={settings.redis_timeout_s}"
        for name in ("socket_timeout", "socket_connect_timeout")
        if name not in address.params
    ]
    # Feast decodes each value as JSON when it parses, so a JSON string keeps a password such as
    # "123" or "true" a string.
    extra += [f"{name}={json.dumps(value)}" for name, value in settings.redis_security_params().items()]
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
