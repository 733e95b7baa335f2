"""Tests of feature_repo/: the YAML files and `feast apply` / `feast materialize` on a copy of it."""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from feast.repo_config import load_repo_config

import features
from features.config import FeatureStoreSettings
from features.errors import FeatureSchemaError
from features.offline import write_offline_features
from features.online import FeastFeatureReader, RedisFeatureReader
from features.schema import FeatureSchema

REPO_ROOT = Path(features.__file__).resolve().parents[1]
FEATURE_REPO = REPO_ROOT / "feature_repo"
FEAST = Path(sys.executable).with_name("feast")


@pytest.fixture
def repo_copy(tmp_path: Path, schema: FeatureSchema, catalogue: Any) -> Path:
    """A copy of feature_repo with the test catalogue's sources and schema in its data directory."""
    repo = tmp_path / "feature_repo"
    shutil.copytree(FEATURE_REPO, repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    write_offline_features(
        repo / "data",
        schema,
        catalogue.product_ids,
        catalogue.attributes,
        catalogue.image_vectors,
        catalogue.text_vectors,
        catalogue.event_time,
    )
    return repo


def run_feast(repo: Path, yaml_name: str, *arguments: str, env: dict[str, str]) -> str:
    """Run the feast CLI on `repo`; the repository root goes on PYTHONPATH for `features`."""
    environment = os.environ | env
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    environment["PQ_FEATURE_DATA_DIR"] = str(repo / "data")
    command = [str(FEAST), "-c", str(repo), "-f", str(repo / yaml_name), *arguments]
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_redis_yaml_expands_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PQ_REDIS_CONNECTION_STRING", "127.0.0.1:6390,db=4")
    config = load_repo_config(FEATURE_REPO, FEATURE_REPO / "feature_store.yaml")
    assert config.online_store.type == "redis"
    assert config.online_store.connection_string == "127.0.0.1:6390,db=4"
    assert config.project == FeatureStoreSettings().feast_project
    assert config.entity_key_serialization_version == 3


def test_sqlite_yaml_matches_settings() -> None:
    config = load_repo_config(FEATURE_REPO, FEATURE_REPO / "feature_store.sqlite.yaml")
    settings = FeatureStoreSettings()
    assert config.online_store.type == "sqlite"
    assert config.project == settings.feast_project
    # Relative paths in the YAML resolve to the default feature_data_dir of the settings.
    assert FEATURE_REPO / config.registry.path == settings.registry_path
    assert FEATURE_REPO / config.online_store.path == settings.sqlite_path


def test_definitions_module_without_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PQ_FEATURE_SCHEMA_PATH", str(tmp_path / "absent.json"))
    with pytest.raises(FeatureSchemaError, match="absent.json not found; training writes it"):
        runpy.run_path(str(FEATURE_REPO / "product_features.py"))


def test_definitions_module_objects(repo_copy: Path, schema: FeatureSchema, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PQ_FEATURE_DATA_DIR", str(repo_copy / "data"))
    namespace = runpy.run_path(str(repo_copy / "product_features.py"))
    assert namespace["product"].join_key == "product_id"
    assert namespace["image_embeddings_fv"].name == schema.image_view_name
    assert namespace["text_embeddings_fv"].tags["model_id"] == schema.text_model_id
    assert namespace["product_quality_service"].name == "product_quality"
    assert namespace["product_attributes_source"].path == str((repo_copy / "data" / "product_attributes.parquet"))


def test_cli_sqlite_apply_materialize(repo_copy: Path, schema: FeatureSchema, catalogue: Any) -> None:
    output = run_feast(repo_copy, "feature_store.sqlite.yaml", "apply", env={})
    assert f"Created feature view {schema.image_view_name}" in output
    assert "Created feature service product_quality" in output
    run_feast(repo_copy, "feature_store.sqlite.yaml", "materialize", "1970-01-01T00:00:00", "2100-01-01T00:00:00", env={})

    settings = FeatureStoreSettings(feature_repo_dir=repo_copy, feature_data_dir=repo_copy / "data")
    products = FeastFeatureReader(settings, schema).read(catalogue.product_ids[:3])
    np.testing.assert_array_equal(products[1].image_embedding, catalogue.image_vectors[1])
    np.testing.assert_array_equal(products[1].text_embedding, catalogue.text_vectors[1])


def test_cli_redis_apply_materialize(
    repo_copy: Path, schema: FeatureSchema, catalogue: Any, project: str, helpers: Any, redis_address: str
) -> None:
    # The copy gets a project of its own, so that its Redis keys collide with nothing.
    yaml_path = repo_copy / "feature_store.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("project: product_quality", f"project: {project}"))
    env = {"PQ_REDIS_CONNECTION_STRING": redis_address}
    run_feast(repo_copy, "feature_store.yaml", "apply", env=env)
    run_feast(repo_copy, "feature_store.yaml", "materialize-incremental", "2100-01-01T00:00:00", env=env)

    settings = helpers.make_redis_settings(project, repo_copy / "data", redis_address)
    (product,) = RedisFeatureReader(settings, schema).read([catalogue.product_ids[1]])
    np.testing.assert_array_equal(product.image_embedding, catalogue.image_vectors[1])
