"""Fine-tuning of the image backbone's last blocks on a product label, to compare with frozen embeddings.

Only the last `trainable_blocks` MBConv blocks of EfficientNet-Lite and its head convolution with
that convolution's batch norm are updated. The head is one linear layer on the pooled 1280-d
features, behind dropout (a regression output, or a logit for a binary task). By default it
starts from a ridge (or logistic) fit on the frozen features of the same rows, so fine-tuning
starts from the linear probe. Training images get a random resized crop, a horizontal flip and a
colour jitter (training/image_augment.py). The frozen trunk's outputs come from `TrunkFeatures`,
so only the tail builds an autograd graph. Every batch norm keeps its pretrained running
statistics (eval mode), and the tail's batch-norm scales and shifts are trained.

The encoder that comes back is an `ImageEncoder` with the same preprocessing and the same pooled
layout. When training changed the weights, its model id ends in the first 8 hex digits of their
SHA-256, so it differs from the frozen encoder's and the two encoders' embeddings are stored
apart. When no epoch beat the linear probe, the weights and the model id are the frozen ones.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from encoders.image.backbones import DEFAULT_IMAGE_BACKBONE, get_image_backbone
from encoders.image.encoder import ImageEncoder, weights_sha256
from fusion.device import resolve_device
from training.finetune import HEAD_INITS, TASKS, EpochRecord, head_loss, init_head_from_probe
from training.image_augment import ImageAugmentation
from training.image_network import CENTER_VIEW, SplitEfficientNetLite, TrunkFeatures, load_pretrained

logger = logging.getLogger(__name__)

EMBED_BATCH_SIZE = 128  # trunk outputs per tail forward pass outside training
FINE_TUNABLE_BACKBONES = {"efficientnet_lite0": 16}  # backbone -> number of MBConv blocks


class ImageFineTuneConfigError(ValueError):
    """A fine-tuning setting is out of range or of the wrong type. The message names the setting."""


@dataclass(frozen=True)
class ImageFineTuneConfig:
    """Settings of `fine_tune_image_encoder`."""

    backbone: str = DEFAULT_IMAGE_BACKBONE
    # Last MBConv blocks that are updated, together with the head convolution and its batch norm.
    # EfficientNet-Lite0 has 16 blocks. The last one (192 to 320 channels at 7 x 7) and the head
    # convolution hold 1.0 M of its 3.4 M feature weights.
    trainable_blocks: int = 1
    learning_rate: float = 1e-4  # AdamW peak learning rate of the unfrozen blocks
    # AdamW peak learning rate of the linear head. The pooled features are not normalised: they are
    # ReLU6 averages whose absolute values summed to about 190 per image on test images. A step of
    # 1e-3 on every weight can then move the output by up to about 0.2 label standard deviations.
    # The default suits the probe start, and a zero head needs a larger rate.
    head_learning_rate: float = 1e-4
    # AdamW weight decay of convolution and linear weights. Biases and batch-norm weights get none.
    weight_decay: float = 0.05
    dropout: float = 0.2  # dropout on the pooled features in front of the head
    # "probe": start the head from a ridge (or logistic) fit on the frozen features.
    # "zeros": start it at zero weights and bias, which predicts the mean of the standardised
    # regression labels, or probability 0.5 for a binary task.
    head_init: str = "probe"
    max_epochs: int = 4
    patience: int = 2  # epochs without a lower validation loss before training stops
    validation_share: float = 0.15  # share of the training rows held out for early stopping
    batch_size: int = 32
    augmentation: ImageAugmentation = field(default_factory=ImageAugmentation)
    # Distinct augmented views per image, used in turn by the epochs: epoch e trains on view
    # (e - 1) % augmented_views + 1. The frozen trunk runs once per image and view, which is most
    # of the cost on a CPU, so fewer views than epochs trade augmentation for time. None gives
    # every epoch its own view.
    augmented_views: int | None = None
    seed: int = 0
    device: str = "auto"  # "auto" picks CUDA when available
    threads: int = 2  # torch intra-op threads on CPU

    def __post_init__(self) -> None:
        integers = ("trainable_blocks", "max_epochs", "patience", "batch_size", "seed", "threads")
        numbers = ("learning_rate", "head_learning_rate", "weight_decay", "dropout", "validation_share")
        for name in integers:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ImageFineTuneConfigError(
                    f"ImageFineTuneConfig.{name} must be an integer, got {value!r}"
                )
        for name in numbers:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ImageFineTuneConfigError(
                    f"ImageFineTuneConfig.{name} must be a finite number, got {value!r}"
                )

        if self.backbone not in FINE_TUNABLE_BACKBONES:
            try:
                get_image_backbone(self.backbone)
            except ValueError as error:
                raise ImageFineTuneConfigError(f"ImageFineTuneConfig.backbone is invalid: {error}") from None
            raise ImageFineTuneConfigError(
                f"ImageFineTuneConfig.backbone must be an EfficientNet-Lite, one of "
                f"{list(FINE_TUNABLE_BACKBONES)}, "
                f"got {self.backbone!r}"
            )
        if self.augmented_views is not None and (
            isinstance(self.augmented_views, bool)
            or not isinstance(self.augmented_views, int)
            or self.augmented_views < 1
        ):
            raise ImageFineTuneConfigError(
                "ImageFineTuneConfig.augmented_views must be None or an integer of at least 1, "
                f"got {self.augmented_views!r}"
            )
        if not isinstance(self.augmentation, ImageAugmentation):
            raise ImageFineTuneConfigError(
                f"ImageFineTuneConfig.augmentation must be an ImageAugmentation, got {self.augmentation!r}"
            )
        if self.head_init not in HEAD_INITS:
            raise ImageFineTuneConfigError(
                f"ImageFineTuneConfig.head_init must be one of {list(HEAD_INITS)}, got {self.head_init!r}"
            )
        checks = {
            "trainable_blocks": (self.trainable_blocks >= 1, "at least 1"),
            "learning_rate": (self.learning_rate > 0.0, "above 0"),
            "head_learning_rate": (self.head_learning_rate > 0.0, "above 0"),
            "weight_decay": (self.weight_decay >= 0.0, "at least 0"),
            "dropout": (0.0 <= self.dropout < 1.0, "in [0, 1)"),
            "max_epochs": (self.max_epochs >= 1, "at least 1"),
            "patience": (self.patience >= 1, "at least 1"),
            "validation_share": (0.0 < self.validation_share < 0.5, "in (0, 0.5)"),
            "batch_size": (self.batch_size >= 1, "at least 1"),
            "threads": (self.threads >= 1, "at least 1"),
        }
        for name, (valid, expected) in checks.items():
            if not valid:
                raise ImageFineTuneConfigError(
                    f"ImageFineTuneConfig.{name} must be {expected}, got {getattr(self, name)!r}"
                )
        block_count = FINE_TUNABLE_BACKBONES[self.backbone]
        if self.trainable_blocks > block_count:
            raise ImageFineTuneConfigError(
                f"ImageFineTuneConfig.trainable_blocks must be at most {block_count} for {self.backbone}, "
                f"got {self.trainable_blocks}"
            )

    def trunk_features(self, images: Mapping[str, torch.Tensor]) -> TrunkFeatures:
        """Return an empty store of frozen-trunk outputs for `images` that matches these settings."""
        return TrunkFeatures(
            images,
            backbone=self.backbone,
            tail_blocks=self.trainable_blocks,
            augmentation=self.augmentation,
            seed=self.seed,
            device=resolve_device(self.device),
        )


@dataclass
class ImageFineTuneResult:
    """The fine-tuned encoder and the same weights split for fast embedding, with the loss history."""

    encoder: ImageEncoder  # embeds any RGB image with the fine-tuned weights, in eval mode
    network: SplitEfficientNetLite  # shares the encoder's weights: embeds from stored trunk outputs
    best_epoch: int  # 0 means fine-tuning never beat the linear probe, so the weights are the frozen ones
    history: list[EpochRecord] = field(default_factory=list)

    def embed(self, trunk: TrunkFeatures, keys: Sequence[str]) -> np.ndarray:
        """Embed the central crops of the images `keys` from their trunk outputs into (K, 1280) float32.

        This gives what `encoder.embed` gives for the same images, up to float32 rounding, without
        running the frozen trunk again.
        """
        return embed_from_trunk(self.network, trunk, keys)


class _Objective(torch.nn.Module):
    """Tail of the split network, dropout and a linear head: trunk outputs (B, C, h, w) -> (B,) output."""

    def __init__(self, network: SplitEfficientNetLite, dropout: float) -> None:
        super().__init__()
        self.network = network
        self.tail = torch.nn.ModuleList(network.tail_modules())  # registers the tail's weights
        self.dropout = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(network.spec.embedding_dim, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = self.dropout(self.network.tail(features))  # (B, 1280)
        return self.head(pooled).squeeze(-1)  # (B,)


def embed_from_trunk(network: SplitEfficientNetLite, trunk: TrunkFeatures, keys: Sequence[str]) -> np.ndarray:
    """Embed the central crops of `keys` into (K, 1280) float32 with `network`'s tail on trunk outputs."""
    network.set_tail_training(False)
    device = network.network._conv_head.weight.device
    vectors = []
    with torch.inference_mode():
        for start in range(0, len(keys), EMBED_BATCH_SIZE):
            features = trunk.get(keys[start : start + EMBED_BATCH_SIZE], CENTER_VIEW).to(device)
            vectors.append(network.tail(features).float().cpu().numpy())  # (B, 1280)
    return np.concatenate(vectors) if vectors else np.empty((0, network.spec.embedding_dim), dtype=np.float32)


def fine_tune_image_encoder(
    keys: Sequence[str],
    labels: np.ndarray,
    task: str,
    trunk: TrunkFeatures,
    config: ImageFineTuneConfig | None = None,
) -> ImageFineTuneResult:
    """Fine-tune the backbone's last blocks with a linear head on images `keys` and labels (N,).

    `trunk` supplies the frozen trunk's outputs and must have been made with the same backbone,
    trainable blocks, augmentation and seed (`config.trunk_features`). A store shared across calls
    computes each view once. `config.validation_share` of the rows is held out for early
    stopping, and the weights of the epoch with the lowest validation loss are kept. Regression
    labels are standardised on the other rows, so the loss is in units of the label's standard
    deviation.
    """
    config = config or ImageFineTuneConfig()
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    _check_inputs(keys, labels, task, config)
    trunk.check_settings(
        backbone=config.backbone,
        tail_blocks=config.trainable_blocks,
        augmentation=config.augmentation,
        seed=config.seed,
    )
    device = resolve_device(config.device)
    if device.type == "cpu":
        # NOTE: this sets the thread count of the whole process, not only of this call.
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)

    # 1. A fresh copy of the pretrained network, with all but the tail frozen.
    spec = get_image_backbone(config.backbone)
    network = SplitEfficientNetLite(load_pretrained(spec).to(device), spec, config.trainable_blocks)
    network.freeze_trunk()
    objective = _Objective(network, config.dropout).to(device)

    # 2. Hold out rows for early stopping, and standardise regression labels on the rest.
    order = rng.permutation(len(keys))
    validation_count = max(1, round(config.validation_share * len(keys)))
    validation_rows, fit_rows = order[:validation_count], order[validation_count:]
    targets = labels.copy()
    if task == "regression":
        mean, scale = labels[fit_rows].mean(), labels[fit_rows].std()
        targets = (labels - mean) / (scale if scale > 0 else 1.0)
    fit_keys = [keys[i] for i in fit_rows]
    validation_keys = [keys[i] for i in validation_rows]

    # 3. Start the head from the linear probe on the frozen features, or from zero weights.
    if config.head_init == "probe":
        init_head_from_probe(
            objective.head, embed_from_trunk(network, trunk, fit_keys), targets[fit_rows], task, config.seed
        )
    else:
        with torch.no_grad():
            objective.head.weight.zero_()
            objective.head.bias.zero_()
    history = [
        EpochRecord(
            epoch=0,
            train_loss=_evaluate(objective, trunk, fit_keys, targets[fit_rows], task),
            validation_loss=_evaluate(objective, trunk, validation_keys, targets[validation_rows], task),
        )
    ]
    logger.info(
        "image fine-tune start: %d fit rows, %d validation rows, %s",
        len(fit_rows),
        validation_count,
        history[0],
    )

    # 4. AdamW with linear warm-up over the first 10 % of steps and linear decay to 0.
    optimizer = torch.optim.AdamW(_parameter_groups(objective, config))
    steps_per_epoch = math.ceil(len(fit_rows) / config.batch_size)
    total_steps = steps_per_epoch * config.max_epochs
    warmup_steps = max(1, total_steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(
            (step + 1) / warmup_steps, max(0.0, (total_steps - step) / (total_steps - warmup_steps + 1))
        ),
    )

    best_loss, best_epoch = history[0].validation_loss, 0
    best_state = _trainable_state(objective)
    stale_epochs = 0
    for epoch in range(1, config.max_epochs + 1):
        # 5. One pass over the fit rows in a new order, each image in the epoch's augmented view.
        view = epoch if config.augmented_views is None else (epoch - 1) % config.augmented_views + 1
        train_loss = _train_epoch(
            objective, trunk, fit_keys, targets[fit_rows], task, config, optimizer, scheduler, view, rng
        )

        # 6. Validation loss on the central crops, then early stopping on it.
        record = EpochRecord(
            epoch=epoch,
            train_loss=train_loss,
            validation_loss=_evaluate(objective, trunk, validation_keys, targets[validation_rows], task),
        )
        history.append(record)
        logger.info("image fine-tune %s", record)
        if record.validation_loss < best_loss:
            best_loss, best_epoch = record.validation_loss, epoch
            best_state = _trainable_state(objective)
            stale_epochs = 0
        else:
            stale_epochs += 1
            if stale_epochs >= config.patience:
                logger.info(
                    "image fine-tune stopped after epoch %d: no better validation loss for %d epochs",
                    epoch,
                    stale_epochs,
                )
                break

    # 7. Keep the best epoch's weights and hand back an encoder in eval mode, named by their digest.
    objective.load_state_dict(best_state, strict=False)
    network.set_tail_training(False)
    encoder = ImageEncoder(
        spec, network.pooled, device=device, weights_sha256=_weights_digest(network, best_epoch)
    )
    logger.info(
        "image fine-tune kept epoch %d (validation loss %.4f) as %s", best_epoch, best_loss, encoder.model_id
    )
    return ImageFineTuneResult(encoder=encoder, network=network, best_epoch=best_epoch, history=history)


def _train_epoch(
    objective: _Objective,
    trunk: TrunkFeatures,
    keys: list[str],
    targets: np.ndarray,
    task: str,
    config: ImageFineTuneConfig,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    view: int,
    rng: np.random.Generator,
) -> float:
    """Run one epoch of AdamW steps over (keys, targets) (N,) in a random order, and return the mean loss."""
    device = objective.head.weight.device
    updated = [parameter for parameter in objective.parameters() if parameter.requires_grad]
    features = trunk.get(keys, view)  # (N, C, h, w): computed once per view, before any step
    objective.network.set_tail_training(True)
    objective.dropout.train()
    losses = []
    order = rng.permutation(len(keys))
    for start in range(0, len(keys), config.batch_size):
        positions = torch.as_tensor(order[start : start + config.batch_size])
        batch = features[positions].to(device)  # (B, C, h, w)
        batch_targets = torch.as_tensor(
            targets[positions.numpy()], dtype=torch.float32, device=device
        )  # (B,)

        loss = head_loss(objective(batch), batch_targets, task)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(updated, max_norm=1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def _check_inputs(keys: Sequence[str], labels: np.ndarray, task: str, config: ImageFineTuneConfig) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    if len(keys) != len(labels):
        raise ValueError(f"keys and labels must have the same length, got {len(keys)} and {len(labels)}")
    if len(set(keys)) != len(keys):
        raise ValueError(f"keys must be unique, got {len(keys) - len(set(keys))} repeated")
    if not np.isfinite(labels).all():
        raise ValueError(
            f"labels must be finite, got {int((~np.isfinite(labels)).sum())} missing or infinite values"
        )
    if task == "binary" and not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError("binary labels must be 0 or 1")
    validation_count = round(config.validation_share * len(keys))
    if validation_count < 1 or len(keys) - validation_count < 2:
        raise ValueError(
            f"{len(keys)} rows are too few to hold out ImageFineTuneConfig.validation_share="
            f"{config.validation_share} for early stopping and still fit on at least 2"
        )


def _parameter_groups(objective: _Objective, config: ImageFineTuneConfig) -> list[dict[str, object]]:
    """Split the trainable weights into AdamW groups: tail and head, each with and without weight decay.

    Biases and batch-norm scales (the 1-d tensors) get no weight decay, as is usual for CNNs.
    """
    groups = []
    for parameters, learning_rate in (
        (objective.network.tail_parameters(), config.learning_rate),
        (list(objective.head.parameters()), config.head_learning_rate),
    ):
        decayed = [parameter for parameter in parameters if parameter.ndim > 1]
        undecayed = [parameter for parameter in parameters if parameter.ndim <= 1]
        groups.append({"params": decayed, "lr": learning_rate, "weight_decay": config.weight_decay})
        groups.append({"params": undecayed, "lr": learning_rate, "weight_decay": 0.0})
    return groups


def _evaluate(
    objective: _Objective, trunk: TrunkFeatures, keys: list[str], targets: np.ndarray, task: str
) -> float:
    """Return the mean loss on the central crops of (keys, targets) in eval mode."""
    objective.network.set_tail_training(False)
    objective.dropout.eval()
    device = objective.head.weight.device
    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(keys), EMBED_BATCH_SIZE):
            features = trunk.get(keys[start : start + EMBED_BATCH_SIZE], CENTER_VIEW).to(device)
            chunk = torch.as_tensor(
                targets[start : start + EMBED_BATCH_SIZE], dtype=torch.float32, device=device
            )
            total += float(head_loss(objective(features), chunk, task)) * len(chunk)
    return total / len(keys)


def _trainable_state(objective: _Objective) -> dict[str, torch.Tensor]:
    """Copy what training changes: the tail's weights and batch-norm statistics, and the head."""
    return {
        name: tensor.detach().clone()
        for name, tensor in objective.state_dict().items()
        if name.startswith(("tail.", "head."))
    }


def _weights_digest(network: SplitEfficientNetLite, best_epoch: int) -> str:
    """Return the SHA-256 hex digest that names the network's weights in its encoder's model id.

    Epoch 0 kept the pretrained weights, so the digest is the weights file's, as the frozen encoder
    has it. Otherwise it is the digest of every state_dict tensor's name, dtype, shape and bytes.
    """
    if best_epoch == 0:
        path = network.spec.resolve_weights_path()
        return weights_sha256(path, path.read_bytes())
    digest = hashlib.sha256()
    for name, tensor in sorted(network.pooled.state_dict().items()):
        values = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{values.dtype}:{tuple(values.shape)};".encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()
