"""Redis password and TLS settings against a real redis-server of this module, and secrets kept out of logs.

The module starts its own redis-server on free ports of 127.0.0.1: one plaintext port and one TLS
port, both with `requirepass`, and the TLS port requires client certificates
(`tls-auth-clients yes`). The certificates are signed in a temporary folder. Debian's redis-server
7.0 is built with TLS; the module is skipped when the binary lacks TLS support.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from features.config import FeatureStoreSettings, feast_redis_connection_string
from features.errors import OnlineStoreUnavailableError
from features.materialize import apply_and_materialize
from features.offline import write_offline_features
from features.online import open_reader
from features.redis_client import connect_redis, translate_redis_errors
from services.common.settings import SettingsError
from tests.tls_certificates import make_test_certificates

# "=" inside the password checks that it survives Feast's connection-string parsing.
PASSWORD = f"pw={secrets.token_hex(12)}"
WRONG_PASSWORD = f"pw={secrets.token_hex(12)}"
START_TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class SecureRedis:
    """A running redis-server with a password on a plaintext port and a TLS port."""

    port: int
    tls_port: int
    certs: Any
    password_file: Path
    wrong_password_file: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def tls_address(self) -> str:
        return f"127.0.0.1:{self.tls_port}"


def _wait_until_ready(port: int, process: subprocess.Popen[bytes], log_path: Path) -> None:
    client = redis.Redis(host="127.0.0.1", port=port, password=PASSWORD, socket_timeout=1)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with status {process.returncode}: {log_path.read_text()}")
            try:
                client.ping()
                return
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {port} did not start within {START_TIMEOUT_S:g} s") from None
                time.sleep(0.05)
    finally:
        client.close()


@pytest.fixture(scope="module")
def secure_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    folder = tmp_path_factory.mktemp("secure_redis")
    certs = make_test_certificates(folder / "certs")
    password_file = folder / "redis_password"
    password_file.write_text(PASSWORD + "\n")
    wrong_password_file = folder / "wrong_password"
    wrong_password_file.write_text(WRONG_PASSWORD + "\n")

    # The password goes in a config file, so it never shows in the process list.
    config = folder / "redis.conf"
    config.write_text(f'requirepass "{PASSWORD}"\n')
    port, tls_port = _free_port(), _free_port()
    command = [
        "redis-server", str(config), "--bind", "127.0.0.1", "--port", str(port), "--tls-port", str(tls_port),
        "--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key),
        "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "yes",
        "--save", "", "--appendonly", "no", "--dir", str(folder),
    ]
    log_path = folder / "redis.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            _wait_until_ready(port, process, log_path)
        except RuntimeError as error:
            if "tls" in log_path.read_text().lower() and process.poll() is not None:
                pytest.skip(f"this redis-server cannot serve TLS: {error}")
            raise
        yield SecureRedis(port, tls_port, certs, password_file, wrong_password_file)
    finally:
        process.terminate()
        process.wait(timeout=10)


def _settings(address: str, tmp_path: Path, **overrides: Any) -> FeatureStoreSettings:
    return FeatureStoreSettings(
        online_store="redis",
        redis_connection_string=address,
        redis_timeout_s=2.0,
        feast_project=f"pqsec_{secrets.token_hex(6)}",
        feature_repo_dir=tmp_path / "store",
        feature_data_dir=tmp_path / "store",
        **overrides,
    )


def _ping(settings: FeatureStoreSettings) -> bool:
    client, address = connect_redis(settings)
    try:
        with translate_redis_errors(address, "pinging"):
            return bool(client.ping())
    finally:
        client.close()


def _unavailable(settings: FeatureStoreSettings) -> str:
    with pytest.raises(OnlineStoreUnavailableError) as raised:
        _ping(settings)
    return str(raised.value)


# Password over plaintext.


def test_password_file_authenticates(secure_redis: SecureRedis, tmp_path: Path) -> None:
    settings = _settings(secure_redis.address, tmp_path, redis_password_file=secure_redis.password_file)

    assert _ping(settings)


def test_wrong_password_names_setting(
    secure_redis: SecureRedis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(secure_redis.address, tmp_path, redis_password_file=secure_redis.wrong_password_file)

    with caplog.at_level(logging.DEBUG):
        message = _unavailable(settings)

    assert "rejected the connection's credentials" in message
    assert "PQ_REDIS_PASSWORD_FILE" in message
    for secret in [PASSWORD, WRONG_PASSWORD]:
        assert secret not in message
        assert secret not in caplog.text


def test_no_password_rejected(secure_redis: SecureRedis, tmp_path: Path) -> None:
    message = _unavailable(_settings(secure_redis.address, tmp_path))

    assert "rejected the connection's credentials" in message
    assert "Authentication required" in message


def test_connection_string_password_still_works(secure_redis: SecureRedis, tmp_path: Path) -> None:
    settings = _settings(f"{secure_redis.address},password={PASSWORD}", tmp_path)

    assert _ping(settings)
    assert PASSWORD not in repr(settings)


def test_connection_string_password_hidden_in_errors(secure_redis: SecureRedis, tmp_path: Path) -> None:
    # translate_redis_errors also takes the raw connection string, as two callers pass it.
    settings = _settings(f"{secure_redis.address},password={WRONG_PASSWORD}", tmp_path)
    client, _ = connect_redis(settings)
    with (
        pytest.raises(OnlineStoreUnavailableError) as raised,
        translate_redis_errors(settings.redis_connection_string, "pinging"),
    ):
        client.ping()
    client.close()

    assert f"at {secure_redis.address} rejected" in str(raised.value)
    assert WRONG_PASSWORD not in str(raised.value)


# TLS with client certificates.


def _tls_settings(secure_redis: SecureRedis, tmp_path: Path, **overrides: Any) -> FeatureStoreSettings:
    certs = secure_redis.certs
    values: dict[str, Any] = {
        "redis_password_file": secure_redis.password_file,
        "redis_tls_ca_path": certs.ca,
        "redis_tls_cert_path": certs.client_cert,
        "redis_tls_key_path": certs.client_key,
    }
    values.update(overrides)
    return _settings(secure_redis.tls_address, tmp_path, **values)


def test_tls_with_client_cert_authenticates(secure_redis: SecureRedis, tmp_path: Path) -> None:
    assert _ping(_tls_settings(secure_redis, tmp_path))


def test_tls_without_client_cert_rejected(secure_redis: SecureRedis, tmp_path: Path) -> None:
    settings = _tls_settings(secure_redis, tmp_path, redis_tls_cert_path=None, redis_tls_key_path=None)

    assert "PQ_REDIS_TLS_" in _unavailable(settings)


def test_tls_server_of_other_ca_rejected(secure_redis: SecureRedis, tmp_path: Path) -> None:
    settings = _tls_settings(secure_redis, tmp_path, redis_tls_ca_path=secure_redis.certs.other_ca)

    message = _unavailable(settings)
    assert "certificate verify failed" in message.lower()


def test_plaintext_client_of_tls_port_rejected(secure_redis: SecureRedis, tmp_path: Path) -> None:
    settings = _settings(secure_redis.tls_address, tmp_path, redis_password_file=secure_redis.password_file)

    assert "PQ_REDIS_TLS_" in _unavailable(settings)


def test_feast_and_reader_share_tls_settings(
    secure_redis: SecureRedis, tmp_path: Path, helpers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Feast writes through the connection string that build_repo_config makes, and the fast
    # reader reads through connect_redis: both must authenticate and verify the same way.
    settings = _tls_settings(secure_redis, tmp_path)
    schema = helpers.make_schema()
    catalogue = helpers.make_catalogue(6)
    write_offline_features(
        settings.feature_data_dir, schema, catalogue.product_ids, catalogue.attributes,
        catalogue.image_vectors, catalogue.text_vectors, catalogue.event_time,
    )

    with caplog.at_level(logging.DEBUG):
        apply_and_materialize(settings, schema)
        reader = open_reader(settings, schema)
        try:
            products = reader.read(catalogue.product_ids)
        finally:
            reader.close()

    assert [product.found for product in products] == [True] * len(catalogue.product_ids)
    assert products[1].attributes is not None
    assert products[1].attributes["rating"] == pytest.approx(float(catalogue.attributes.iloc[1]["rating"]))
    assert PASSWORD not in caplog.text


# Settings.


def test_feast_connection_string_carries_settings(secure_redis: SecureRedis, tmp_path: Path) -> None:
    settings = _tls_settings(secure_redis, tmp_path)
    certs = secure_redis.certs

    connection_string = feast_redis_connection_string(settings)

    assert connection_string.startswith(f"{secure_redis.tls_address},")
    # A JSON string, so Feast's JSON decoding returns the password unchanged.
    assert f'password="{PASSWORD}"' in connection_string
    assert ",ssl=true," in connection_string
    assert f'ssl_ca_certs="{certs.ca}"' in connection_string
    assert f'ssl_certfile="{certs.client_cert}"' in connection_string
    assert f'ssl_keyfile="{certs.client_key}"' in connection_string


def test_no_security_settings_change_nothing(tmp_path: Path) -> None:
    settings = _settings("127.0.0.1:6379,db=1", tmp_path)

    assert settings.redis_security_params() == {}
    assert feast_redis_connection_string(settings) == "127.0.0.1:6379,db=1,socket_timeout=2.0,socket_connect_timeout=2.0"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "is empty"),
        ("\n", "is empty"),
        ("first\nsecond\n", "has more than one line"),
        ("pass,word\n", "contains a comma"),
    ],
    ids=["empty", "blank-line", "two-lines", "comma"],
)
def test_invalid_password_file(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "password"
    path.write_text(content)

    with pytest.raises(SettingsError) as raised:
        FeatureStoreSettings.from_env({"PQ_REDIS_PASSWORD_FILE": str(path)})

    message = str(raised.value)
    assert "PQ_REDIS_PASSWORD_FILE=" in message
    assert expected in message
    for line in content.splitlines():
        if line:
            assert line not in message


def test_missing_password_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="PQ_REDIS_PASSWORD_FILE=.*does not exist"):
        FeatureStoreSettings.from_env({"PQ_REDIS_PASSWORD_FILE": str(tmp_path / "absent")})


def test_password_in_two_places_rejected(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text(PASSWORD)

    with pytest.raises(SettingsError) as raised:
        FeatureStoreSettings.from_env(
            {"PQ_REDIS_PASSWORD_FILE": str(path), "PQ_REDIS_CONNECTION_STRING": f"127.0.0.1:6379,password={PASSWORD}"}
        )

    assert "PQ_REDIS_PASSWORD_FILE or PQ_REDIS_CONNECTION_STRING, not both" in str(raised.value)
    assert PASSWORD not in str(raised.value)


def test_connection_string_password_hidden_in_setting_errors() -> None:
    with pytest.raises(SettingsError) as raised:
        FeatureStoreSettings.from_env({"PQ_REDIS_CONNECTION_STRING": f"host-a:1,host-b:2,password={PASSWORD}"})

    message = str(raised.value)
    assert "password=***" in message
    assert PASSWORD not in message


def test_tls_cert_needs_ca(tmp_path: Path) -> None:
    certs = make_test_certificates(tmp_path / "certs")

    with pytest.raises(SettingsError, match="PQ_REDIS_TLS_CERT_PATH needs PQ_REDIS_TLS_CA_PATH"):
        FeatureStoreSettings.from_env(
            {"PQ_REDIS_TLS_CERT_PATH": str(certs.client_cert), "PQ_REDIS_TLS_KEY_PATH": str(certs.client_key)}
        )


def test_tls_key_of_other_cert_rejected(tmp_path: Path) -> None:
    certs = make_test_certificates(tmp_path / "certs")

    with pytest.raises(SettingsError, match="does not belong to the certificate"):
        FeatureStoreSettings.from_env(
            {
                "PQ_REDIS_TLS_CA_PATH": str(certs.ca),
                "PQ_REDIS_TLS_CERT_PATH": str(certs.client_cert),
                "PQ_REDIS_TLS_KEY_PATH": str(certs.server_key),
            }
        )


def test_empty_security_settings_unset() -> None:
    settings = FeatureStoreSettings.from_env(
        {"PQ_REDIS_PASSWORD_FILE": "", "PQ_REDIS_TLS_CA_PATH": "", "PQ_REDIS_TLS_CERT_PATH": "", "PQ_REDIS_TLS_KEY_PATH": ""}
    )

    assert settings.redis_security_params() == {}
