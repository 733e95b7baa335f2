"""Register the feature definitions with Feast and load the offline sources into the online store.

Run by hand with `python -m features.materialize [--incremental]`; the settings come from the
`PQ_*` environment variables (see features.config.FeatureStoreSettings).
"""

from __future__ import annotations

import argparse
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from features.config import FeatureStoreSettings, open_feature_store
from features.errors import OfflineDataError
from features.schema import IMAGE_VIEW_PREFIX, TEXT_VIEW_PREFIX, FeatureSchema

if TYPE_CHECKING:
    from feast import FeatureStore

logger = logging.getLogger(__name__)

# Start of a full materialization: every offline row has a later event time.
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _stale_embedding_views(store: FeatureStore, current: set[str]) -> list[Any]:
    """Return registered embedding views of other encoders than the current ones."""
    stale = []
    for view in store.list_feature_views():
        is_embedding_view = view.name.startswith((IMAGE_VIEW_PREFIX, TEXT_VIEW_PREFIX))
        if is_embedding_view and view.name not in current:
            stale.append(view)
    return stale


def apply_definitions(store: FeatureStore, settings: FeatureStoreSettings, schema: FeatureSchema) -> None:
    """Register the objects of `schema` and delete the embedding views of previous encoders.

    Deleting a view also deletes its rows from the online store (Feast's Redis store scans for
    them, and its SQLite store drops the table). Applying the same objects again changes nothing.
    """
    from features.definitions import build_feature_definitions

    objects = build_feature_definitions(schema, settings.feature_data_dir)
    stale = _stale_embedding_views(store, set(schema.view_names))
    for view in stale:
        logger.info("deleting feature view %s of a previous encoder (model id %s)", view.name, view.tags.get("model_id"))
    # partial=False is what makes Feast delete `objects_to_delete`; objects absent from both
    # lists are kept either way.
    store.apply(objects, objects_to_delete=stale, partial=False)


def _check_sources(settings: FeatureStoreSettings, schema: FeatureSchema) -> None:
    missing = [path for path in schema.source_paths(settings.feature_data_dir).values() if not path.exists()]
    if missing:
        raise OfflineDataError(
            f"offline feature sources {[str(path) for path in missing]} do not exist; write them with "
            "features.offline.write_offline_features (training does) before materializing"
        )


def apply_and_materialize(
    settings: FeatureStoreSettings,
    schema: FeatureSchema,
    *,
    incremental: bool = False,
    end_date: datetime | None = None,
) -> None:
    """Apply the definitions of `schema`, then load offline rows up to `end_date` (default: now).

    A full run loads every row with an event time up to `end_date`. An incremental run loads only
    rows after the end of the previous run of each view. A view that was never materialized gets
    a full run, because Feast 0.67 would start 52 weeks before now for a view with ttl 0.
    Running either twice changes nothing the second time: Feast's Redis store skips rows whose
    event time is not newer than the stored one, and its SQLite store rewrites the same values.
    """
    _check_sources(settings, schema)
    end = end_date or datetime.now(timezone.utc)
    store = open_feature_store(settings)
    apply_definitions(store, settings, schema)

    if not incremental:
        logger.info("materializing %s from %s to %s", schema.view_names, EPOCH, end)
        store.materialize(start_date=EPOCH, end_date=end, feature_views=schema.view_names)
        return

    never_materialized = [
        name for name in schema.view_names if store.get_feature_view(name).most_recent_end_time is None
    ]
    if never_materialized:
        logger.info("materializing %s in full: never materialized before", never_materialized)
        store.materialize(start_date=EPOCH, end_date=end, feature_views=never_materialized)
    previously_materialized = [name for name in schema.view_names if name not in never_materialized]
    if previously_materialized:
        logger.info("materializing %s incrementally up to %s", previously_materialized, end)
        store.materialize_incremental(end_date=end, feature_views=previously_materialized)


def main(argv: list[str] | None = None) -> None:
    """Apply and materialize with the schema file and settings from the environment."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="load only rows newer than the previous materialization of each view",
    )
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    settings = FeatureStoreSettings.from_env()
    schema = FeatureSchema.load(settings.schema_path)
    apply_and_materialize(settings, schema, incremental=arguments.incremental)


if __name__ == "__main__":
    main()
