"""The stages of the main job, each a function that the pipeline calls in order."""

from __future__ import annotations

import logging
import shlex
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from features.config import FeatureStoreSettings
from features.materialize import apply_and_materialize
from features.offline import write_offline_features
from features.schema import FeatureSchema
from fusion.batch import FusionBatch
from fusion.checkpoint import CheckpointMetadata, save_checkpoint
from fusion.boosted.checkpoint import save_boosted_checkpoint
from fusion.boosted.config import BoostedConfig
from fusion.boosted.model import BoostedFusionModel
from fusion.inference import FusionInputs, FusionPredictions
from fusion.loading import load_predictor
from fusion.labels import LabelScaling
from fusion.model import FusionConfig, FusionHead, FusionModel
from pq.v1 import quality_predictor_pb2 as predictor_pb2
from training.catalogue import Catalogue, DatasetSplit
from training.embed import embed_images, embed_texts
from training.metrics import classification_metrics, regression_metrics
from training.scoring import ScoredProducts, attribute_values, score_by_id, score_inline
from training.stack import start_stack, stop_stack
from training.train import LabelledSplit, TrainConfig, train_fusion

logger = logging.getLogger(__name__)


@dataclass
class EmbeddedCatalogue:
    """A catalogue with every product's embeddings and attribute rows, in catalogue order."""

    catalogue: Catalogue
    image_vectors: np.ndarray  # (N, Di) float32, zeros where image_present is False
    image_present: np.ndarray  # (N,) bool
    text_vectors: np.ndarray  # (N, Dt) float32, zeros where text_present is False
    text_present: np.ndarray  # (N,) bool
    attribute_rows: list[dict[str, float | str | None]]
    image_model_id: str
    text_model_id: str

    def fusion_inputs(self, positions: np.ndarray) -> FusionInputs:
        """Return the model inputs of the products at `positions`, built as the predictor builds them."""
        images = [self.image_vectors[i] if self.image_present[i] else None for i in positions]
        texts = [self.text_vectors[i] if self.text_present[i] else None for i in positions]
        return FusionInputs.from_optional(
            images,
            texts,
            [self.attribute_rows[i] for i in positions],
            image_dim=self.image_vectors.shape[1],
            text_dim=self.text_vectors.shape[1],
        )


@dataclass
class TrainedModel:
    """The saved checkpoint of a run and a summary of its training for the report."""

    checkpoint_dir: Path
    # Neural heads: epochs_run, best_epoch (1-based), best_validation_loss, seconds.
    # Boosted head: trees per member and seconds.
    training: dict[str, Any]
    validation_metrics: dict[str, float]


@dataclass
class ServedScores:
    """Predictions returned by the predictor service for the test products."""

    by_id: ScoredProducts
    inline: ScoredProducts | None
    inline_positions: list[int]  # positions in the test split of the products scored inline
    exit_statuses: dict[str, int | None]


def compute_embeddings(
    catalogue: Catalogue,
    *,
    image_backbone: str,
    text_backbone: str,
    device: str,
    progress: bool | None,
) -> EmbeddedCatalogue:
    """Embed every image and text of the catalogue in batches with in-process encoders."""
    from encoders.image import load_image_encoder
    from encoders.text import load_text_encoder

    image_encoder = load_image_encoder(image_backbone, device=device)
    image_vectors, image_present = embed_images(catalogue, image_encoder, progress=progress)
    image_model_id = image_encoder.model_id
    del image_encoder

    text_encoder = load_text_encoder(text_backbone, device=device)
    text_present = np.array([bool(text.strip()) for text in catalogue.texts()], dtype=bool)
    text_embeddings = embed_texts(catalogue, text_encoder, progress=progress)
    text_model_id = text_encoder.model_id
    del text_encoder

    logger.info(
        "embedded %d images with %s (%d missing) and %d texts with %s (%d truncated)",
        int(image_present.sum()), image_model_id, int((~image_present).sum()),
        int(text_present.sum()), text_model_id, int(text_embeddings.truncated.sum()),
    )
    text_vectors = np.where(text_present[:, None], text_embeddings.vectors, 0.0).astype(np.float32)
    return EmbeddedCatalogue(
        catalogue=catalogue,
        image_vectors=image_vectors,
        image_present=image_present,
        text_vectors=text_vectors,
        text_present=text_present,
        attribute_rows=catalogue.attribute_rows(),
        image_model_id=image_model_id,
        text_model_id=text_model_id,
    )


def feature_schema(embedded: EmbeddedCatalogue) -> FeatureSchema:
    """Return the feature schema of the catalogue's attributes and encoders.

    Tag columns are stored and sent as strings, like categorical columns, and the attribute
    encoder splits them into tags.
    """
    spec = embedded.catalogue.spec
    return FeatureSchema(
        numeric_attributes=list(spec.numeric_columns),
        categorical_attributes=[*spec.categorical_columns, *spec.tag_columns],
        image_model_id=embedded.image_model_id,
        text_model_id=embedded.text_model_id,
        image_embedding_dim=int(embedded.image_vectors.shape[1]),
        text_embedding_dim=int(embedded.text_vectors.shape[1]),
    )


def publish_features(
    embedded: EmbeddedCatalogue,
    *,
    feature_data_dir: Path,
    online_store: str,
    redis_connection_string: str,
    feast_project: str,
    event_time: datetime,
) -> FeatureStoreSettings:
    """Write the offline parquet sources, apply the Feast definitions and materialize them online."""
    settings = FeatureStoreSettings.from_env(
        online_store=online_store,
        redis_connection_string=redis_connection_string,
        feast_project=feast_project,
        feature_data_dir=feature_data_dir,
    )
    schema = feature_schema(embedded)
    catalogue = embedded.catalogue
    images = [v if ok else None for v, ok in zip(embedded.image_vectors, embedded.image_present, strict=True)]
    texts = [v if ok else None for v, ok in zip(embedded.text_vectors, embedded.text_present, strict=True)]
    write_offline_features(
        settings.feature_data_dir,
        schema,
        catalogue.product_ids,
        catalogue.attributes(),
        images,
        texts,
        event_time,
    )
    schema.save(settings.schema_path)
    apply_and_materialize(settings, schema)
    return settings


def train_and_save(
    embedded: EmbeddedCatalogue,
    split: DatasetSplit,
    *,
    checkpoint_dir: Path,
    model_version: str,
    seed: int,
    epochs: int,
    device: str,
    fusion_head: FusionHead = "concat",
    use_auxiliary_labels: bool = True,
) -> TrainedModel:
    """Fit the attribute encoder and the fusion model on the training split and save the checkpoint.

    With `use_auxiliary_labels`, the spec's auxiliary labels (if any) are extra training targets.
    The checkpoint then contains their output layers, which serving does not use.
    """
    catalogue = embedded.catalogue
    spec = catalogue.spec
    labels = catalogue.labels

    # Step 1: attribute encoding statistics and vocabularies come from the training rows only.
    attribute_encoder = spec.attribute_encoder().fit(catalogue.attributes().iloc[split.train])

    # Step 2: model inputs for every product, built exactly as the predictor builds them at serving.
    all_positions = np.arange(len(catalogue))
    inputs = embedded.fusion_inputs(all_positions)
    batch = FusionBatch.from_numpy(
        inputs.image, inputs.text, attribute_encoder.transform(inputs.attributes), inputs.present
    )

    # Step 3: targets, standardised with training statistics for regression.
    scaling = LabelScaling.fit(spec.task, labels[split.train])
    targets = torch.from_numpy(scaling.to_model_targets(labels).astype(np.float32))  # (N,)

    # Step 4: auxiliary targets in label units, NaN where missing. train_fusion standardises them.
    auxiliary_labels = catalogue.auxiliary_labels if use_auxiliary_labels else {}
    auxiliary_tasks = tuple((name, spec.auxiliary_labels[name]) for name in auxiliary_labels)
    auxiliary_targets = None
    if auxiliary_labels:
        auxiliary_targets = torch.from_numpy(
            np.column_stack(list(auxiliary_labels.values())).astype(np.float32)
        )  # (N, A)
        logger.info("training with the auxiliary labels %s", ", ".join(auxiliary_labels))

    def labelled(positions: np.ndarray) -> LabelledSplit:
        index = torch.from_numpy(positions)
        return LabelledSplit(
            features=batch.select(index),
            targets=targets[index],
            auxiliary_targets=None if auxiliary_targets is None else auxiliary_targets[index],
        )

    # Step 5: train with early stopping on the validation loss.
    model_config = FusionConfig(
        image_dim=int(inputs.image.shape[1]),
        text_dim=int(inputs.text.shape[1]),
        numeric_dim=attribute_encoder.numeric_dim,
        categorical_cardinalities=attribute_encoder.categorical_cardinalities,
        task=spec.task,
        head=fusion_head,
        auxiliary_tasks=auxiliary_tasks,
    )
    train_config = TrainConfig(epochs=epochs, seed=seed, device=device)
    model, history = train_fusion(labelled(split.train), labelled(split.validation), model_config, train_config)

    # Step 6: validation metrics in label units, recorded in the checkpoint.
    model = model.to("cpu").eval()
    validation_metrics = _metrics(
        spec.task, labels[split.validation], _predict_quality(model, batch, split.validation, scaling)
    )

    # Step 7: save weights, config, feature schema, encoder ids and metrics together.
    save_checkpoint(
        checkpoint_dir,
        model,
        attribute_encoder,
        CheckpointMetadata(
            model_version=model_version,
            label_name=spec.label_column,
            label_scaling=scaling,
            feature_schema=feature_schema(embedded).to_dict(),
            image_model_id=embedded.image_model_id,
            text_model_id=embedded.text_model_id,
            class_labels=["0", "1"] if spec.task == "binary" else [],
            metrics={"validation": validation_metrics},
            training_config={
                **train_config.to_dict(),
                "epochs_run": history.epochs_run,
                # Maps each auxiliary output back to label units. Serving does not read it.
                "auxiliary_label_scalings": {
                    name: asdict(scaling) for name, scaling in history.auxiliary_scalings.items()
                },
            },
            seed=seed,
        ),
        overwrite=True,
    )
    training = {
        "epochs_run": history.epochs_run,
        "best_epoch": history.best_epoch + 1,
        "best_validation_loss": history.best_validation_loss,
        "seconds": history.seconds,
    }
    return TrainedModel(checkpoint_dir=checkpoint_dir, training=training, validation_metrics=validation_metrics)


def train_and_save_boosted(
    embedded: EmbeddedCatalogue,
    split: DatasetSplit,
    *,
    checkpoint_dir: Path,
    model_version: str,
    seed: int,
    config: BoostedConfig,
) -> TrainedModel:
    """Fit the attribute encoder and the boosted fusion head on the training split and save the checkpoint."""
    catalogue = embedded.catalogue
    spec = catalogue.spec
    labels = catalogue.labels
    started = time.perf_counter()

    # Step 1: attribute encoding statistics and vocabularies come from the training rows only.
    attribute_encoder = spec.attribute_encoder().fit(catalogue.attributes().iloc[split.train])

    # Step 2: the training products' inputs, built as the predictor builds them at serving.
    inputs = embedded.fusion_inputs(split.train)
    encoded = attribute_encoder.transform(inputs.attributes)
    weights = None if catalogue.weights is None else catalogue.weights[split.train]

    # Step 3: projections, modality dropout and the boosted members (fusion/boosted/model.py).
    model = BoostedFusionModel(config, attribute_encoder, spec.task, seed=seed)
    model.fit(encoded, inputs.image, inputs.text, inputs.present, labels[split.train], weights)

    # Step 4: validation metrics in label units, recorded in the checkpoint.
    validation_inputs = embedded.fusion_inputs(split.validation)
    validation_predictions = model.predict(
        attribute_encoder.transform(validation_inputs.attributes),
        validation_inputs.image,
        validation_inputs.text,
        validation_inputs.present,
    )
    validation_metrics = _metrics(spec.task, labels[split.validation], validation_predictions)
    training = {"trees": {name: member.trees for name, member in model.members.items()},
                "seconds": time.perf_counter() - started}

    # Step 5: save the members, projections, config, feature schema, encoder ids and metrics together.
    save_boosted_checkpoint(
        checkpoint_dir,
        model,
        CheckpointMetadata(
            model_version=model_version,
            label_name=spec.label_column,
            label_scaling=LabelScaling(task=spec.task),
            feature_schema=feature_schema(embedded).to_dict(),
            image_model_id=embedded.image_model_id,
            text_model_id=embedded.text_model_id,
            class_labels=["0", "1"] if spec.task == "binary" else [],
            metrics={"validation": validation_metrics},
            training_config={"boosted": config.to_dict(), **training},
            seed=seed,
        ),
        overwrite=True,
    )
    return TrainedModel(checkpoint_dir=checkpoint_dir, training=training, validation_metrics=validation_metrics)


@torch.inference_mode()
def _predict_quality(
    model: FusionModel, batch: FusionBatch, positions: np.ndarray, scaling: LabelScaling
) -> np.ndarray:
    outputs = batch.select(torch.from_numpy(positions)).run(model)  # (B,) standardised labels or logits
    return scaling.to_label_units(outputs.double().cpu().numpy())


def _metrics(task: str, labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    if task == "binary":
        return classification_metrics(labels, predictions)
    return regression_metrics(labels, predictions)


def evaluation_metrics(task: str, labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Return the task's metrics (regression or classification) of predictions in label units."""
    return _metrics(task, labels, predictions)


def predict_in_process(
    checkpoint_dir: Path, embedded: EmbeddedCatalogue, positions: np.ndarray, *, device: str
) -> FusionPredictions:
    """Predict the products at `positions` with the saved checkpoint, in this process."""
    predictor = load_predictor(checkpoint_dir, device=device)
    return predictor.predict(embedded.fusion_inputs(positions))


def inline_content(embedded: EmbeddedCatalogue, position: int) -> predictor_pb2.ProductContent:
    """Return a product's image file, title, description and attributes as inline request content."""
    catalogue = embedded.catalogue
    product_id = catalogue.product_ids[position]
    title, _, description = catalogue.text(product_id).partition("\n")
    content = predictor_pb2.ProductContent()
    # Unset and blank differ in the API: a blank title is invalid, so empty parts stay unset.
    if title.strip():
        content.title = title
        if description.strip():
            content.description = description
    image_path = catalogue.image_path(product_id)
    if image_path is not None and embedded.image_present[position]:
        content.image = image_path.read_bytes()
    for name, value in attribute_values(embedded.attribute_rows[position]).items():
        content.attributes[name].CopyFrom(value)
    return content


def serving_environment(checkpoint_dir: Path, store_settings: FeatureStoreSettings) -> dict[str, str]:
    """Return the PQ_* settings with which the predictor serves this checkpoint and feature store."""
    return {
        "PQ_PREDICTOR_MODEL_PATH": str(checkpoint_dir),
        "PQ_ONLINE_STORE": store_settings.online_store,
        "PQ_REDIS_CONNECTION_STRING": store_settings.redis_connection_string,
        "PQ_FEAST_PROJECT": store_settings.feast_project,
        "PQ_FEATURE_DATA_DIR": str(store_settings.feature_data_dir),
    }


def write_serving_environment(path: Path, checkpoint_dir: Path, store_settings: FeatureStoreSettings) -> None:
    """Write the settings that serve this run as an env file, for `set -a; . FILE; set +a`.

    The encoder addresses are the services' defaults. The file may hold a Redis password, so only
    its owner can read it.
    """
    settings = {
        **serving_environment(checkpoint_dir, store_settings),
        "PQ_PREDICTOR_IMAGE_ENCODER_ADDRESS": "127.0.0.1:50051",
        "PQ_PREDICTOR_TEXT_ENCODER_ADDRESS": "127.0.0.1:50052",
    }
    lines = ["# Settings that serve this run; load them with: set -a; . THIS_FILE; set +a"]
    lines += [f"{name}={shlex.quote(value)}" for name, value in settings.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)


def score_through_services(
    checkpoint_dir: Path,
    embedded: EmbeddedCatalogue,
    test_positions: np.ndarray,
    *,
    store_settings: FeatureStoreSettings,
    log_dir: Path,
    device: str,
    inline_products: int,
) -> ServedScores:
    """Start the three services, score the test products through the predictor, then stop them.

    Every test product is scored by product id, so its features come from the online store. The
    first `inline_products` of them are also scored by inline content only, so the predictor calls
    the encoder services.
    """
    environment = {
        **serving_environment(checkpoint_dir, store_settings),
        "PQ_IMAGE_ENCODER_DEVICE": device,
        "PQ_TEXT_ENCODER_DEVICE": device,
        "PQ_PREDICTOR_DEVICE": device,
        # Inline scoring must not overwrite the stored embeddings that the id-based scores read.
        "PQ_PREDICTOR_WRITE_BACK": "false",
    }
    product_ids = embedded.catalogue.product_ids
    test_ids = [product_ids[i] for i in test_positions]
    inline_positions = list(range(min(inline_products, len(test_positions))))

    stack = start_stack(log_dir, environment)
    try:
        by_id = score_by_id(stack.predictor.address, test_ids)
        inline = None
        if inline_positions:
            contents = [inline_content(embedded, int(test_positions[i])) for i in inline_positions]
            inline = score_inline(stack.predictor.address, contents)
    finally:
        exit_statuses = stop_stack(stack)
    return ServedScores(by_id=by_id, inline=inline, inline_positions=inline_positions, exit_statuses=exit_statuses)
