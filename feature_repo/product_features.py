"""Feast objects of the product-quality features, for the `feast` CLI (`feast apply`).

The objects depend on the trained model: its attribute columns and its encoders' model ids. They
are built by features.definitions from the feature schema JSON that training writes, at
PQ_FEATURE_SCHEMA_PATH (default: <PQ_FEATURE_DATA_DIR>/feature_schema.json, and
PQ_FEATURE_DATA_DIR defaults to feature_repo/data). The parquet sources are read from
PQ_FEATURE_DATA_DIR.
"""

from features.config import FeatureStoreSettings
from features.definitions import build_feature_objects
from features.schema import FeatureSchema

_settings = FeatureStoreSettings.from_env()
# Raises FeatureSchemaError naming the path when training has not written the schema yet.
_schema = FeatureSchema.load(_settings.schema_path)
_definitions = build_feature_objects(_schema, _settings.feature_data_dir)

# Entity: a catalogue product, keyed by product_id.
product = _definitions.product

# Sources: one parquet file per view, written by features.offline.write_offline_features.
product_attributes_source = _definitions.attributes_source
image_embeddings_source = _definitions.image_source
text_embeddings_source = _definitions.text_source

# Views: attributes, and one embedding view per encoder model id (the id is in the view name).
product_attributes_fv = _definitions.attributes_view
image_embeddings_fv = _definitions.image_view
text_embeddings_fv = _definitions.text_view

# Service: the three views the fusion predictor reads.
product_quality_service = _definitions.service
