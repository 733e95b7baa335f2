"""Sentence embeddings from a registered transformer: tokenise, one forward pass, mean-pool, L2-normalise.

The pooling matches sentence-transformers' Pooling(mode="mean") followed by Normalize, so vectors
agree with `SentenceTransformer(model_dir).encode(texts)` to within float32 rounding. Model files are
always read from the installed directory and never from the Hugging Face Hub.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from encoders.text.backbones import DEFAULT_TEXT_BACKBONE, TextBackboneSpec, get_text_backbone

logger = logging.getLogger(__name__)

# Characters kept per token of max_tokens before tokenising: a token spans at most a 100-character
# word piece plus a separator.
_CHARACTERS_PER_TOKEN = 101


@dataclass(frozen=True)
class TextEmbeddings:
    """Embeddings of a batch of texts, row i for text i."""

    vectors: np.ndarray  # (N, D) float32, L2-normalised
    truncated: np.ndarray  # (N,) bool, True where the text had more than max_tokens tokens
    token_counts: np.ndarray  # (N,) int64, tokens the model saw, special tokens included


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token states of each sequence over its attention mask, ignoring padding."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    summed = (hidden * mask).sum(dim=1)  # (B, H)
    # The clamp only matters for an all-padding row, which the tokenizer never produces because
    # [CLS] and [SEP] are always present. 1e-9 is the value sentence-transformers uses.
    counts = mask.sum(dim=1).clamp(min=1e-9)  # (B, 1)
    return summed / counts


class TextEncoder:
    """A loaded text backbone that embeds batches of texts on one device.

    `embed` may be called from several threads. Tokenisation is serialised by a lock because
    transformers reconfigures the shared Rust tokenizer's truncation and padding whenever they differ
    from the previous call, and a call that does so while another thread encodes fails with
    "RuntimeError: Already borrowed". The forward passes run concurrently.
    """

    def __init__(
        self,
        spec: TextBackboneSpec,
        tokenizer: Any,
        model: torch.nn.Module,
        *,
        max_tokens: int,
        device: torch.device,
        model_id: str,
    ) -> None:
        self.spec = spec
        self.model_id = model_id
        self.embedding_dim = spec.embedding_dim
        self.max_tokens = max_tokens
        self.device = device
        self._tokenizer = tokenizer
        self._model = model
        self._tokenizer_lock = threading.Lock()

    @property
    def model(self) -> torch.nn.Module:
        """The transformer backbone, for callers that fine-tune it in place."""
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The fast (Rust-backed) tokenizer of the backbone."""
        return self._tokenizer

    def embed(self, texts: Sequence[str]) -> TextEmbeddings:
        """Embed `texts` in one forward pass, truncating each to `max_tokens` tokens.

        Any string is accepted, the empty string included (it embeds [CLS] [SEP]). Rejecting empty
        texts is the caller's decision. Raises TypeError naming the index of a non-string item.
        """
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{index}] is a {type(text).__name__}, expected str: {text!r:.80}")
        if len(texts) == 0:
            return TextEmbeddings(
                vectors=np.zeros((0, self.embedding_dim), dtype=np.float32),
                truncated=np.zeros(0, dtype=bool),
                token_counts=np.zeros(0, dtype=np.int64),
            )

        # Tokenising costs about 1 s per MB of text, so texts far beyond what the model can see are
        # cut first. A WordPiece token covers at most 100 characters of a word (longer words become
        # one [UNK]), so `max_characters` covers more than max_tokens tokens of any ordinary text,
        # and a cut text is reported as truncated.
        max_characters = _CHARACTERS_PER_TOKEN * self.max_tokens
        cut = np.array([len(text) > max_characters for text in texts], dtype=bool)
        model_texts = [text[:max_characters] for text in texts]

        with self._tokenizer_lock:
            batch = self._tokenizer(
                model_texts,
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            )
        # With truncation on, the Rust tokenizer keeps the cut-off tokens of each text in
        # `Encoding.overflowing`, so one tokenisation gives both the model input and the flag.
        overflowed = np.array([len(encoding.overflowing) > 0 for encoding in batch.encodings], dtype=bool)
        truncated = overflowed | cut

        input_ids = batch["input_ids"].to(self.device)  # (B, T)
        attention_mask = batch["attention_mask"].to(self.device)  # (B, T)
        token_type_ids = batch["token_type_ids"].to(self.device)  # (B, T)

        with torch.inference_mode():
            hidden = self._model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
            ).last_hidden_state  # (B, T, H)
            pooled = mean_pool(hidden, attention_mask)  # (B, H)
            vectors = F.normalize(pooled, p=2, dim=1)  # (B, H)

        return TextEmbeddings(
            vectors=vectors.float().cpu().numpy(),
            truncated=truncated,
            token_counts=attention_mask.sum(dim=1).cpu().numpy().astype(np.int64),
        )


def resolve_device(device: str) -> torch.device:
    """Turn "auto", "cpu", "cuda" or "cuda:N" into a torch device. "auto" picks CUDA when available."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(
            f"invalid device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N' ({error})"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available; use 'cpu' or 'auto'")
    return resolved


@functools.lru_cache(maxsize=16)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """Hash a file, cached per process by path, size and modification time.

    Hashing the 91 MB all-MiniLM-L6-v2 weights took 0.12 s on the 2-core x86 development VM, and
    only the first load in a process pays for it.
    """
    stat = path.stat()
    return _cached_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _import_transformers() -> Any:
    # huggingface_hub reads these variables when it is first imported. local_files_only=True below
    # already keeps loading offline, and the variables also stop telemetry and any later hub call.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import transformers

    return transformers


def load_text_encoder(
    name: str = DEFAULT_TEXT_BACKBONE,
    *,
    max_tokens: int = 256,
    device: str = "auto",
) -> TextEncoder:
    """Load a registered backbone from its installed directory, in float32 and eval mode.

    Raises ValueError for an unknown name, an out-of-range `max_tokens` or an unusable device, and
    BackboneUnavailableError when the backbone's files are not installed.
    """
    spec = get_text_backbone(name)
    spec.check_max_tokens(max_tokens)
    torch_device = resolve_device(device)
    model_dir = spec.model_dir()
    transformers = _import_transformers()

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if not tokenizer.is_fast:
        raise RuntimeError(
            f"text backbone {name!r} loaded a slow tokenizer from {model_dir}; the encoder needs a "
            f"Rust-backed one to report truncation (is tokenizer.json missing?)"
        )
    model = transformers.AutoModel.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32)
    model.eval().to(torch_device)

    # The registry entry must describe the files it points to.
    config = model.config
    if config.hidden_size != spec.embedding_dim or config.max_position_embeddings != spec.max_position_tokens:
        raise RuntimeError(
            f"text backbone {name!r}: the registry entry has embedding_dim={spec.embedding_dim} and "
            f"max_position_tokens={spec.max_position_tokens}, but {model_dir / 'config.json'} has "
            f"hidden_size={config.hidden_size} and max_position_embeddings={config.max_position_embeddings}"
        )

    weights_hash = file_sha256(model_dir / spec.weights_file)[:8]
    model_id = f"{spec.name}.{spec.pooling}.{max_tokens}@{weights_hash}"
    logger.debug("loaded text backbone %s from %s as %s on %s", name, model_dir, model_id, torch_device)
    return TextEncoder(spec, tokenizer, model, max_tokens=max_tokens, device=torch_device, model_id=model_id)
