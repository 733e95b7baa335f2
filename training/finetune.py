"""Fine-tuning of the text backbone end to end on a product label, to compare with frozen embeddings.

Only the last `trainable_layers` transformer layers are updated, and the embeddings and earlier
layers stay frozen. The head is one linear layer on the mean-pooled, L2-normalised embedding (a
regression output, or a logit for a binary task). By default it starts from a ridge (or
logistic) fit on the frozen embeddings of the same rows, so fine-tuning starts from the linear
probe. The encoder that comes back embeds any text in the frozen encoder's layout: mean pooled,
L2 normalised, 384-d for all-MiniLM-L6-v2.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression, RidgeCV

from encoders.text.backbones import DEFAULT_TEXT_BACKBONE, get_text_backbone
from encoders.text.encoder import TextEncoder, load_text_encoder, mean_pool
from fusion.device import resolve_device

logger = logging.getLogger(__name__)

HEAD_INIT_ALPHAS = np.logspace(-3, 3, 13)  # ridge penalties tried for the head's starting weights
EMBED_BATCH_SIZE = 128
TASKS = ("regression", "binary")
HEAD_INITS = ("probe", "zeros")


class TextFineTuneConfigError(ValueError):
    """A fine-tuning setting is out of range or of the wrong type; the message names the setting."""


@dataclass(frozen=True)
class TextFineTuneConfig:
    """Settings of `fine_tune_text_encoder`."""

    backbone: str = DEFAULT_TEXT_BACKBONE
    # Last transformer layers that are updated. all-MiniLM-L6-v2 has 6, and pooling has no weights.
    trainable_layers: int = 2
    learning_rate: float = 2e-5  # AdamW peak learning rate of the unfrozen transformer layers
    head_learning_rate: float = 1e-3  # AdamW peak learning rate of the linear head
    weight_decay: float = 0.01
    dropout: float = 0.1  # dropout on the pooled, normalised vector in front of the head
    # "probe": start the head from a ridge (or logistic) fit on the frozen embeddings.
    # "zeros": start it at zero weights and bias, which predicts the mean of the standardised
    # regression labels, or probability 0.5 for a binary task.
    head_init: str = "probe"
    max_epochs: int = 4
    # Epochs without a lower validation loss before training stops. On board games the loss often
    # rose after the warm-up epoch and fell later, so patience 1 stopped 4 of 5 folds at the probe.
    patience: int = 4
    validation_share: float = 0.15  # share of the training rows held out for early stopping
    batch_size: int = 32
    # The 4,000 board-game texts (title and mechanics) have a median of 22 all-MiniLM-L6-v2 tokens,
    # and 1.0 % of them exceed 64, so 64 loses little there. Longer catalogues need a larger value.
    max_tokens: int = 64
    field_dropout: float = 0.2  # probability of dropping each line after the first (the title)
    token_mask_share: float = 0.1  # share of text tokens replaced by [MASK] in training batches
    seed: int = 0
    device: str = "auto"  # "auto" picks CUDA when available
    threads: int = 2  # torch intra-op threads on CPU

    def __post_init__(self) -> None:
        integers = ("trainable_layers", "max_epochs", "patience", "batch_size", "max_tokens", "seed", "threads")
        numbers = (
            "learning_rate", "head_learning_rate", "weight_decay", "dropout", "validation_share",
            "field_dropout", "token_mask_share",
        )
        for name in integers:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TextFineTuneConfigError(f"TextFineTuneConfig.{name} must be an integer, got {value!r}")
        for name in numbers:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise TextFineTuneConfigError(f"TextFineTuneConfig.{name} must be a finite number, got {value!r}")

        try:
            get_text_backbone(self.backbone)
        except ValueError as error:
            raise TextFineTuneConfigError(f"TextFineTuneConfig.backbone is invalid: {error}") from None
        if self.head_init not in HEAD_INITS:
            raise TextFineTuneConfigError(
                f"TextFineTuneConfig.head_init must be one of {list(HEAD_INITS)}, got {self.head_init!r}"
            )
        checks = {
            "trainable_layers": (self.trainable_layers >= 1, "at least 1"),
            "learning_rate": (self.learning_rate > 0.0, "above 0"),
            "head_learning_rate": (self.head_learning_rate > 0.0, "above 0"),
            "weight_decay": (self.weight_decay >= 0.0, "at least 0"),
            "dropout": (0.0 <= self.dropout < 1.0, "in [0, 1)"),
            "max_epochs": (self.max_epochs >= 1, "at least 1"),
            "patience": (self.patience >= 1, "at least 1"),
            "validation_share": (0.0 < self.validation_share < 0.5, "in (0, 0.5)"),
            "batch_size": (self.batch_size >= 1, "at least 1"),
            "max_tokens": (self.max_tokens >= 3, "at least 3 ([CLS], [SEP] and one text token)"),
            "field_dropout": (0.0 <= self.field_dropout <= 1.0, "in [0, 1]"),
            "token_mask_share": (0.0 <= self.token_mask_share < 1.0, "in [0, 1)"),
            "threads": (self.threads >= 1, "at least 1"),
        }
        for name, (valid, expected) in checks.items():
            if not valid:
                raise TextFineTuneConfigError(
                    f"TextFineTuneConfig.{name} must be {expected}, got {getattr(self, name)!r}"
                )


@dataclass(frozen=True)
class EpochRecord:
    """Mean losses of one epoch: training (with augmentation) and validation (without)."""

    epoch: int  # 0 is the linear-probe start, before any update
    train_loss: float
    validation_loss: float


@dataclass
class FineTuneResult:
    """The fine-tuned encoder, with its best epoch and the loss history."""

    encoder: TextEncoder  # embeds with the fine-tuned weights, in eval mode
    best_epoch: int  # 0 means fine-tuning never beat the linear probe, so the weights are the frozen ones
    history: list[EpochRecord] = field(default_factory=list)


class _Objective(torch.nn.Module):
    """Backbone, mean pooling, L2 normalisation, dropout and a linear head: text batch -> (B,) output."""

    def __init__(self, backbone: torch.nn.Module, hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(hidden_size, 1)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.backbone(**batch).last_hidden_state  # (B, T, H)
        pooled = mean_pool(hidden, batch["attention_mask"])  # (B, H)
        return F.normalize(pooled, p=2, dim=1)  # (B, H)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        vectors = self.dropout(self.embed(batch))  # (B, H)
        return self.head(vectors).squeeze(-1)  # (B,)


def embed_in_batches(encoder: TextEncoder, texts: Sequence[str], batch_size: int = EMBED_BATCH_SIZE) -> np.ndarray:
    """Embed `texts` with `encoder` in length-sorted batches and return (N, D) float32 in input order."""
    vectors = np.zeros((len(texts), encoder.embedding_dim), dtype=np.float32)  # (N, D)
    order = np.argsort([len(text) for text in texts], kind="stable")
    for start in range(0, len(texts), batch_size):
        positions = order[start : start + batch_size]
        vectors[positions] = encoder.embed([texts[i] for i in positions]).vectors
    return vectors


def drop_fields(text: str, probability: float, rng: np.random.Generator) -> str:
    """Drop each line after the first with `probability`; the first line is the title."""
    lines = text.split("\n")
    remaining = [lines[0]] + [line for line in lines[1:] if rng.random() >= probability]
    return "\n".join(remaining)


def mask_tokens(
    input_ids: torch.Tensor, special: torch.Tensor, share: float, mask_id: int, generator: torch.Generator
) -> torch.Tensor:
    """Return a copy of `input_ids` (B, T) with about `share` of the non-special tokens set to `mask_id`."""
    draws = torch.rand(input_ids.shape, generator=generator)  # (B, T)
    chosen = (draws < share) & ~special  # (B, T)
    return input_ids.masked_fill(chosen, mask_id)


def fine_tune_text_encoder(
    texts: Sequence[str], labels: np.ndarray, task: str, config: TextFineTuneConfig | None = None
) -> FineTuneResult:
    """Fine-tune the backbone's last layers with a linear head on (texts, labels) (N,) and return the encoder.

    `config.validation_share` of the rows is held out for early stopping, and the weights of the
    epoch with the lowest validation loss are kept. Regression labels are standardised on the
    other rows, so the loss is in units of the label's standard deviation.
    """
    config = config or TextFineTuneConfig()
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    _check_inputs(texts, labels, task, config)
    device = resolve_device(config.device)
    if device.type == "cpu":
        # NOTE: this sets the thread count of the whole process, not only of this call.
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    # 1. A fresh copy of the pretrained backbone, with all but the last layers frozen.
    encoder = load_text_encoder(config.backbone, max_tokens=config.max_tokens, device=str(device))
    objective = _Objective(encoder.model, encoder.embedding_dim, config.dropout).to(device)
    trainable = _freeze_all_but_last(encoder.model, config.trainable_layers)

    # 2. Hold out rows for early stopping, and standardise regression labels on the rest.
    order = rng.permutation(len(texts))
    validation_count = max(1, round(config.validation_share * len(texts)))
    validation_rows, fit_rows = order[:validation_count], order[validation_count:]
    targets = labels.copy()
    if task == "regression":
        mean, scale = labels[fit_rows].mean(), labels[fit_rows].std()
        targets = (labels - mean) / (scale if scale > 0 else 1.0)
    fit_texts = [texts[i] for i in fit_rows]
    validation_texts = [texts[i] for i in validation_rows]

    # 3. Start the head from the linear probe on the frozen embeddings, or from zero weights.
    if config.head_init == "probe":
        init_head_from_probe(objective.head, embed_in_batches(encoder, fit_texts), targets[fit_rows], task, config.seed)
    else:
        with torch.no_grad():
            objective.head.weight.zero_()
            objective.head.bias.zero_()
    history = [
        EpochRecord(
            epoch=0,
            train_loss=_evaluate(objective, encoder, fit_texts, targets[fit_rows], task, config, device),
            validation_loss=_evaluate(objective, encoder, validation_texts, targets[validation_rows], task, config, device),
        )
    ]
    logger.info("fine-tune start: %d fit rows, %d validation rows, %s", len(fit_rows), validation_count, history[0])

    # 4. AdamW with linear warm-up over the first 10 % of steps and linear decay to 0.
    optimizer = torch.optim.AdamW(
        [
            {"params": trainable, "lr": config.learning_rate},
            {"params": list(objective.head.parameters()), "lr": config.head_learning_rate},
        ],
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = math.ceil(len(fit_rows) / config.batch_size)
    total_steps = steps_per_epoch * config.max_epochs
    warmup_steps = max(1, total_steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min((step + 1) / warmup_steps, max(0.0, (total_steps - step) / (total_steps - warmup_steps + 1))),
    )

    best_loss, best_epoch = history[0].validation_loss, 0
    best_state = _trainable_state(objective)
    stale_epochs = 0
    for epoch in range(1, config.max_epochs + 1):
        # 5. One pass over the fit rows in a new order, with augmented texts.
        train_loss = _train_epoch(
            objective, encoder, fit_texts, targets[fit_rows], task, config, optimizer, scheduler, rng, generator
        )

        # 6. Validation loss without augmentation, then early stopping on it.
        record = EpochRecord(
            epoch=epoch,
            train_loss=train_loss,
            validation_loss=_evaluate(objective, encoder, validation_texts, targets[validation_rows], task, config, device),
        )
        history.append(record)
        logger.info("fine-tune %s", record)
        if record.validation_loss < best_loss:
            best_loss, best_epoch = record.validation_loss, epoch
            best_state = _trainable_state(objective)
            stale_epochs = 0
        else:
            stale_epochs += 1
            if stale_epochs >= config.patience:
                logger.info("fine-tune stopped after epoch %d: no better validation loss for %d epochs", epoch, stale_epochs)
                break

    # 7. Keep the best epoch's weights and hand back an encoder in eval mode.
    objective.load_state_dict(best_state, strict=False)
    objective.eval()
    encoder.model_id = f"{encoder.model_id}+finetuned.seed{config.seed}.epoch{best_epoch}"
    logger.info("fine-tune kept epoch %d (validation loss %.4f)", best_epoch, best_loss)
    return FineTuneResult(encoder=encoder, best_epoch=best_epoch, history=history)


def _train_epoch(
    objective: _Objective,
    encoder: TextEncoder,
    texts: list[str],
    targets: np.ndarray,
    task: str,
    config: TextFineTuneConfig,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rng: np.random.Generator,
    generator: torch.Generator,
) -> float:
    """Run one epoch of AdamW steps over (texts, targets) (N,) in a random order and return the mean batch loss.

    Each batch drops non-title lines with `config.field_dropout` and masks `config.token_mask_share`
    of its text tokens.
    """
    device = objective.head.weight.device
    updated = [parameter for parameter in objective.parameters() if parameter.requires_grad]
    _set_training_mode(objective, config.trainable_layers)
    losses = []
    order = rng.permutation(len(texts))
    for start in range(0, len(texts), config.batch_size):
        positions = order[start : start + config.batch_size]
        batch = _tokenize(encoder, [drop_fields(texts[i], config.field_dropout, rng) for i in positions], config.max_tokens)
        special = batch.pop("special_tokens_mask").bool()  # (B, T)
        if config.token_mask_share > 0.0:
            batch["input_ids"] = mask_tokens(
                batch["input_ids"], special, config.token_mask_share, encoder.tokenizer.mask_token_id, generator
            )
        batch = {name: tensor.to(device) for name, tensor in batch.items()}
        batch_targets = torch.as_tensor(targets[positions], dtype=torch.float32, device=device)  # (B,)

        loss = head_loss(objective(batch), batch_targets, task)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(updated, max_norm=1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def _check_inputs(texts: Sequence[str], labels: np.ndarray, task: str, config: TextFineTuneConfig) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    if len(texts) != len(labels):
        raise ValueError(f"texts and labels must have the same length, got {len(texts)} and {len(labels)}")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] is a {type(text).__name__}, expected str: {text!r:.80}")
    if not np.isfinite(labels).all():
        raise ValueError(f"labels must be finite, got {int((~np.isfinite(labels)).sum())} missing or infinite values")
    if task == "binary" and not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError("binary labels must be 0 or 1")
    if round(config.validation_share * len(texts)) < 1 or len(texts) - round(config.validation_share * len(texts)) < 2:
        raise ValueError(
            f"{len(texts)} rows are too few to hold out TextFineTuneConfig.validation_share="
            f"{config.validation_share} for early stopping and still fit on at least 2"
        )


def _transformer_layers(backbone: torch.nn.Module) -> torch.nn.ModuleList:
    """Return the BERT-style backbone's transformer layers (`encoder.layer`), first layer first."""
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise TypeError(f"fine-tuning needs a BERT-style backbone with encoder.layer, got {type(backbone).__name__}")
    return layers


def _freeze_all_but_last(backbone: torch.nn.Module, trainable_layers: int) -> list[torch.nn.Parameter]:
    """Freeze every backbone weight except those of the last `trainable_layers` layers, and return those."""
    layers = _transformer_layers(backbone)
    if trainable_layers > len(layers):
        raise TextFineTuneConfigError(
            f"TextFineTuneConfig.trainable_layers={trainable_layers} is more than the backbone's {len(layers)} layers"
        )
    for parameter in backbone.parameters():
        parameter.requires_grad_(False)
    trainable: list[torch.nn.Parameter] = []
    for layer in layers[len(layers) - trainable_layers :]:
        for parameter in layer.parameters():
            parameter.requires_grad_(True)
            trainable.append(parameter)
    return trainable


def _set_training_mode(objective: _Objective, trainable_layers: int) -> None:
    """Turn on dropout in the head and the unfrozen layers only, so frozen layers stay deterministic."""
    objective.eval()
    objective.dropout.train()
    layers = _transformer_layers(objective.backbone)
    for layer in layers[len(layers) - trainable_layers :]:
        layer.train()


def _tokenize(encoder: TextEncoder, texts: list[str], max_tokens: int) -> dict[str, torch.Tensor]:
    batch = encoder.tokenizer(
        texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt",
        return_special_tokens_mask=True,
    )
    return {name: batch[name] for name in ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask")}


def head_loss(outputs: torch.Tensor, targets: torch.Tensor, task: str) -> torch.Tensor:
    """Return the head's loss: binary cross-entropy on logits, or mean squared error."""
    if task == "binary":
        return F.binary_cross_entropy_with_logits(outputs, targets)
    return F.mse_loss(outputs, targets)


def init_head_from_probe(
    head: torch.nn.Linear, vectors: np.ndarray, targets: np.ndarray, task: str, seed: int
) -> None:
    """Set the head to a ridge fit (regression) or logistic fit (binary) on frozen features (N, H)."""
    if task == "binary":
        probe = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(vectors, targets)
        weights, bias = probe.coef_.reshape(-1), float(probe.intercept_[0])
    else:
        ridge = RidgeCV(alphas=HEAD_INIT_ALPHAS).fit(vectors, targets)
        weights, bias = np.asarray(ridge.coef_).reshape(-1), float(ridge.intercept_)
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weights, dtype=torch.float32).reshape(1, -1))
        head.bias.fill_(bias)


def _evaluate(
    objective: _Objective,
    encoder: TextEncoder,
    texts: list[str],
    targets: np.ndarray,
    task: str,
    config: TextFineTuneConfig,
    device: torch.device,
) -> float:
    """Return the mean loss on (texts, targets) in eval mode, without augmentation."""
    objective.eval()
    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(texts), EMBED_BATCH_SIZE):
            batch = _tokenize(encoder, texts[start : start + EMBED_BATCH_SIZE], config.max_tokens)
            batch.pop("special_tokens_mask")
            batch = {name: tensor.to(device) for name, tensor in batch.items()}
            chunk = torch.as_tensor(targets[start : start + EMBED_BATCH_SIZE], dtype=torch.float32, device=device)
            total += float(head_loss(objective(batch), chunk, task)) * len(chunk)
    return total / len(texts)


def _trainable_state(objective: _Objective) -> dict[str, torch.Tensor]:
    """Copy the weights that training changes: the unfrozen layers and the head."""
    trainable = {name for name, parameter in objective.named_parameters() if parameter.requires_grad}
    return {name: tensor.detach().clone() for name, tensor in objective.state_dict().items() if name in trainable}
