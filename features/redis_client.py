"""A redis-py client for the online store, and the mapping of its failures to OnlineStoreUnavailableError."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from features.config import FeatureStoreSettings, RedisAddress, parse_redis_connection_string
from features.errors import OnlineStoreUnavailableError

# redis-py's pool replaces an idle connection that Redis closed (after a restart, say) before
# using it, so reads work again as soon as Redis is back. One retry after a short pause covers a
# connection lost during a command; HMGET and HSET are safe to repeat. redis-py's default of 3
# retries with up to 10 s of backoff would hold a request for seconds while Redis is down.
_RETRY_BASE_S = 0.01
_RETRY_CAP_S = 0.1
_RETRIES = 1


def connect_redis(settings: FeatureStoreSettings) -> tuple[redis.Redis, RedisAddress]:
    """Create a client for settings.redis_connection_string; it connects lazily on the first command.

    Parameters of the connection string (db, password, ssl, ...) are passed to redis.Redis as
    Feast does, followed by the password file and TLS settings. socket_timeout and
    socket_connect_timeout default to settings.redis_timeout_s.
    """
    address = parse_redis_connection_string(settings.redis_connection_string)
    params = {**address.params, **settings.redis_security_params()}
    params.setdefault("socket_timeout", settings.redis_timeout_s)
    params.setdefault("socket_connect_timeout", settings.redis_timeout_s)
    params.setdefault(
        "retry", Retry(ExponentialWithJitterBackoff(cap=_RETRY_CAP_S, base=_RETRY_BASE_S), _RETRIES)
    )
    client = redis.Redis(host=address.host, port=address.port, **params)
    return client, address


def _host_and_port(address: RedisAddress | str) -> str:
    """Return "host:port" of `address`; a connection string can contain a password, which must not be shown."""
    if isinstance(address, RedisAddress):
        return str(address)
    try:
        return str(parse_redis_connection_string(address))
    except ValueError:
        return "the address in PQ_REDIS_CONNECTION_STRING"


@contextmanager
def translate_redis_errors(address: RedisAddress | str, action: str) -> Iterator[None]:
    """Raise OnlineStoreUnavailableError when Redis cannot be reached, rejects the credentials or times out.

    `address` is a parsed address or a connection string; the message names only its host and port.
    """
    address = _host_and_port(address)
    try:
        yield
    except redis.exceptions.AuthenticationError as error:
        raise OnlineStoreUnavailableError(
            f"Redis online store at {address} rejected the connection's credentials while {action}: "
            f"{error}; check that PQ_REDIS_PASSWORD_FILE (or the password in PQ_REDIS_CONNECTION_STRING) "
            "holds the password Redis requires"
        ) from error
    except redis.exceptions.TimeoutError as error:
        raise OnlineStoreUnavailableError(
            f"Redis online store at {address} timed out while {action}: {error}; check that Redis "
            "is running and not overloaded, or raise PQ_REDIS_TIMEOUT_S"
        ) from error
    except redis.exceptions.ConnectionError as error:
        raise OnlineStoreUnavailableError(
            f"Redis online store at {address} is unavailable while {action}: {error}; check that "
            "Redis is running, that PQ_REDIS_CONNECTION_STRING points to it, and that the "
            "PQ_REDIS_TLS_* settings match whether Redis serves TLS"
        ) from error
