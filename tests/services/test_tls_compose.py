"""Checks of docker/compose.tls.yml merged over docker-compose.yml, with the Compose v2 binary.

`docker compose config` merges, interpolates and validates the two files without a Docker engine.
The TLS folder is a temporary one with certificates, a token file and a password file, so the
tests can also check that no secret value reaches the merged configuration.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.test_compose import _compose_binary
from tests.tls_certificates import make_test_certificates

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
TLS_OVERRIDE = REPO_ROOT / "docker" / "compose.tls.yml"
SECRETS_DIR = "/run/secrets/"
TOKEN = secrets.token_urlsafe(32)
PASSWORD = secrets.token_urlsafe(24)
ENCODERS = {"image-encoder": "PQ_IMAGE_ENCODER_", "text-encoder": "PQ_TEXT_ENCODER_"}
SECRET_FILES = {
    "ca": "ca.pem",
    "server_cert": "server.pem",
    "server_key": "server.key",
    "client_cert": "client.pem",
    "client_key": "client.key",
    "predictor_tokens": "predictor_tokens",
    "redis_password": "redis_password",
}


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("compose_tls")
    make_test_certificates(folder, ("image-encoder", "text-encoder", "fusion-predictor", "redis", "localhost"))
    (folder / "predictor_tokens").write_text(TOKEN + "\n")
    (folder / "redis_password").write_text(PASSWORD + "\n")
    return folder


@pytest.fixture(scope="module")
def merged(tls_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    env_file = tmp_path_factory.mktemp("compose_env") / "empty.env"
    env_file.write_text("")
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith(("PQ_COMPOSE_", "COMPOSE_"))
    }
    environment["PQ_COMPOSE_TLS_DIR"] = str(tls_dir)
    command = [
        str(_compose_binary()), "--file", str(COMPOSE_FILE), "--file", str(TLS_OVERRIDE),
        "--env-file", str(env_file), "--profile", "jobs", "config", "--format", "json",
    ]
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=environment, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _mounted(service: dict[str, Any]) -> set[str]:
    return {entry["target"] for entry in service.get("secrets", [])}


def test_secrets_come_from_tls_dir(merged: dict[str, Any], tls_dir: Path) -> None:
    files = {name: Path(entry["file"]) for name, entry in merged["secrets"].items()}

    assert files == {name: tls_dir / file_name for name, file_name in SECRET_FILES.items()}


def test_secret_paths_are_mounted(merged: dict[str, Any]) -> None:
    # Every setting that names a file under /run/secrets must have that secret mounted.
    for name, service in merged["services"].items():
        mounted = _mounted(service)
        for variable, value in (service.get("environment") or {}).items():
            if isinstance(value, str) and value.startswith(SECRETS_DIR):
                assert value in mounted, f"{name}: {variable}={value} is not mounted"


def test_no_secret_in_configuration(merged: dict[str, Any]) -> None:
    text = json.dumps(merged)

    assert TOKEN not in text
    assert PASSWORD not in text


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoders_serve_mutual_tls(merged: dict[str, Any], name: str) -> None:
    environment = merged["services"][name]["environment"]
    prefix = ENCODERS[name]

    assert environment[f"{prefix}TLS_CERT_PATH"] == "/run/secrets/server_cert"
    assert environment[f"{prefix}TLS_KEY_PATH"] == "/run/secrets/server_key"
    assert environment[f"{prefix}TLS_CLIENT_CA_PATH"] == "/run/secrets/ca"
    # The probe needs a client certificate to pass mutual TLS.
    assert environment["PQ_HEALTHCHECK_TLS_CA_PATH"] == "/run/secrets/ca"
    assert environment["PQ_HEALTHCHECK_TLS_CERT_PATH"] == "/run/secrets/client_cert"
    assert environment["PQ_HEALTHCHECK_TLS_KEY_PATH"] == "/run/secrets/client_key"
    assert environment["PQ_HEALTHCHECK_TLS_SERVER_NAME"] == name


def test_predictor_secured(merged: dict[str, Any]) -> None:
    environment = merged["services"]["fusion-predictor"]["environment"]

    assert environment["PQ_PREDICTOR_TLS_CERT_PATH"] == "/run/secrets/server_cert"
    assert environment["PQ_PREDICTOR_TLS_KEY_PATH"] == "/run/secrets/server_key"
    assert environment["PQ_PREDICTOR_ENCODER_TLS_CA_PATH"] == "/run/secrets/ca"
    assert environment["PQ_PREDICTOR_ENCODER_TLS_CERT_PATH"] == "/run/secrets/client_cert"
    assert environment["PQ_PREDICTOR_ENCODER_TLS_KEY_PATH"] == "/run/secrets/client_key"
    assert environment["PQ_PREDICTOR_AUTH_TOKENS_PATH"] == "/run/secrets/predictor_tokens"
    assert "PQ_PREDICTOR_AUTH_TOKEN" not in environment
    assert environment["PQ_HEALTHCHECK_TLS_SERVER_NAME"] == "fusion-predictor"


def test_predictor_and_materialize_agree_on_redis(merged: dict[str, Any]) -> None:
    predictor = merged["services"]["fusion-predictor"]["environment"]
    job = merged["services"]["materialize"]["environment"]
    redis_variables = sorted(name for name in predictor if name.startswith("PQ_REDIS_"))

    assert redis_variables == [
        "PQ_REDIS_CONNECTION_STRING",
        "PQ_REDIS_PASSWORD_FILE",
        "PQ_REDIS_TLS_CA_PATH",
        "PQ_REDIS_TLS_CERT_PATH",
        "PQ_REDIS_TLS_KEY_PATH",
    ]
    for name in redis_variables:
        assert job[name] == predictor[name], name
    assert "password=" not in predictor["PQ_REDIS_CONNECTION_STRING"]


def test_redis_serves_tls_with_password(merged: dict[str, Any]) -> None:
    redis = merged["services"]["redis"]
    script = redis["command"][-1]

    assert redis["command"][:2] == ["sh", "-c"]
    assert "--port 0 --tls-port 6379" in script
    assert "--tls-auth-clients yes" in script
    assert "requirepass" in script
    assert "cat /run/secrets/redis_password" in script
    assert "exec redis-server" in script
    assert redis["user"] not in {"0", "root", "0:0"}


def test_redis_healthcheck_authenticates(merged: dict[str, Any]) -> None:
    test = merged["services"]["redis"]["healthcheck"]["test"]

    assert test[:3] == ["CMD", "sh", "-c"]
    assert "redis-cli --tls" in test[3]
    assert "REDISCLI_AUTH=" in test[3]


def test_grpc_healthchecks_keep_probe(merged: dict[str, Any]) -> None:
    # The override turns TLS on for the probe through the environment and leaves its command alone.
    for name in ["image-encoder", "text-encoder", "fusion-predictor"]:
        test = merged["services"][name]["healthcheck"]["test"]
        assert test[:4] == ["CMD", "python", "-m", "services.common.healthcheck"], name


def test_tls_dir_kept_out_of_git_and_image() -> None:
    gitignore = (REPO_ROOT / ".gitignore").read_text().splitlines()
    dockerignore = (REPO_ROOT / ".dockerignore").read_text().splitlines()

    assert "/tls/" in gitignore
    assert "tls/" in dockerignore
