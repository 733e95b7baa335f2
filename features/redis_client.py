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
    Feast does. socket_timeout and socket_connect_timeout default to settings.redis_timeout_s.
    """
    address = parse_redis_connection_string(settings.redis_connection_string)
    params = dict(address.params)
    params.setdefault("socket_timeout", settings.redis_timeout_s)
    params.setdefault("socket_connect_timeout", settings.redis_timeout_s)
    params.setdefault(
        "retry", Retry(ExponentialWithJitterBackoff(cap=_RETRY_CAP_S, base=_RETRY_BASE_S), _RETRIES)
    )
    client = redis.Redis(host=address.host, port=address.port, **params)
    return client, address


@contextmanager
def translate_redis_errors(address: RedisAddress | str, action: str) -> Iterator[None]:
    """Raise OnlineStoreUnavailableError, naming `address`, when Redis cannot be reached or times out."""
    try:
        yield
    except redis.exceptions.TimeoutError as error:
        raise OnlineStoreUnavailableError(
            f"Redis online store at {address} timed out while {action}: {error}; check that Redis "
            "is running and not overloaded, or raise PQ_REDIS_TIMEOUT_S"
        ) from error
    except redis.exceptions.ConnectionError as error:
        raise OnlineStoreUnavailableError(
            f"Redis online store at {address} is unavailable while {action}: {error}; check that "
            "Redis is running and that PQ_REDIS_CONNECTION_STRING points to it"
        ) from error
