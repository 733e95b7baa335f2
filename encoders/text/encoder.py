"""Sentence embeddings from a registered transformer: tokenise, one forward pass, mean-pool, L2-normalise.

The pooling matches sentence-transformers' Pooling(mode="mean") followed by Normalize, so vectors
agree with `SentenceTransformer(model_dir).encode(texts)` to within float32 rounding. Model files are
always read from the installed directory and never from the Hugging Face Hub.

The forward pass runs in torch eager mode or in ONNX Runtime (encoders.runtime). Both run
encoders.text.pooling.SentenceEmbeddingModel, and their vectors agree within TEXT_RUNTIME_TOLERANCE,
so the model id does not depend on the runtime.
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

from encoders.onnx_model import OnnxModel, load_onnx_model, onnx_cache_path, resolve_onnx_cache_dir
from encoders.runtime import (
    AUTO,
    ONNX,
    TEXT_RUNTIMES,
    TORCH,
    EmbeddingTolerance,
    InferenceRuntimeError,
    apply_torch_threads,
    check_threads,
    resolve_runtime,
)
from encoders.text.backbones import DEFAULT_TEXT_BACKBONE, TextBackboneSpec, get_text_backbone
from encoders.text.pooling import SentenceEmbeddingModel, mean_pool

logger = logging.getLogger(__name__)

# Characters kept per token of max_tokens before tokenising: a token spans at most a 100-character
# word piece plus a separator.
_CHARACTERS_PER_TOKEN = 101

# Vectors of every runtime equal the torch eager vectors within this tolerance: per text,
# max |difference| <= 1e-4 on the L2-normalised vector. ONNX Runtime on the CPU differed by at most
# about 3e-7 (tests/encoders/test_encoder_runtimes.py checks it on texts of several lengths).
TEXT_RUNTIME_TOLERANCE = EmbeddingTolerance(absolute=1e-4, relative=0.0)

# Texts of different token counts, so the example batch that the ONNX export traces and that checks
# the export against torch contains padding. A batch axis of size 1 would be fixed in the graph.
_EXPORT_EXAMPLE_TEXTS = (
    "A cooperative board game about building railways across Europe.",
    "Cotton T-shirt",
)

__all__ = [
    "TEXT_RUNTIME_TOLERANCE",
    "TextEmbeddings",
    "TextEncoder",
    "file_sha256",
    "load_text_encoder",
    "mean_pool",
    "resolve_device",
]


@dataclass(frozen=True)
class TextEmbeddings:
    """Embeddings of a batch of texts, row i for text i."""

    vectors: np.ndarray  # (N, D) float32, L2-normalised
    truncated: np.ndarray  # (N,) bool, True where the text had more than max_tokens tokens
    token_counts: np.ndarray  # (N,) int64, tokens the model saw, special tokens included


class TextEncoder:
    """A loaded text backbone that embeds batches of texts on one device.

    `embed` may be called from several threads. Tokenisation is serialised by a lock because
    transformers reconfigures the shared Rust tokenizer's truncation and padding whenever they differ
    from the previous call, and a call that does so while another thread encodes fails with
    "RuntimeError: Already borrowed". The forward passes run concurrently, in torch or in ONNX
    Runtime, whose InferenceSession.run is thread-safe.

    `runtime` is "torch" or "onnx" (with `onnx_model`), and `device` is where the forward pass runs.
    The model id is the same for both runtimes, whose vectors agree within TEXT_RUNTIME_TOLERANCE.
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
        runtime: str = TORCH,
        onnx_model: OnnxModel | None = None,
    ) -> None:
        if runtime not in (TORCH, ONNX):
            raise ValueError(f"invalid runtime {runtime!r}; use 'torch' or 'onnx'")
        if (runtime == ONNX) != (onnx_model is not None):
            raise ValueError("an onnx_model must be given with runtime 'onnx', and only with it")
        self.spec = spec
        self.model_id = model_id
        self.embedding_dim = spec.embedding_dim
        self.max_tokens = max_tokens
        self.runtime = runtime
        self.device = onnx_model.device if onnx_model is not None else device
        self._tokenizer = tokenizer
        self._model = model
        self._sentence_model = SentenceEmbeddingModel(model)
        self._onnx_model = onnx_model
        self._tokenizer_lock = threading.Lock()

    @property
    def model(self) -> torch.nn.Module:
        """The transformer backbone, for callers that fine-tune it in place.

        NOTE: with runtime "onnx", `embed` runs the export of the loaded weights, so changes to this
        module do not reach the embeddings. Fine-tune with runtime "torch".
        """
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

        input_ids = batch["input_ids"]  # (B, T) int64
        attention_mask = batch["attention_mask"]  # (B, T) int64
        token_type_ids = batch["token_type_ids"]  # (B, T) int64

        if self._onnx_model is not None:
            vectors = self._onnx_model.run({
                "input_ids": input_ids.numpy(),
                "attention_mask": attention_mask.numpy(),
                "token_type_ids": token_type_ids.numpy(),
            })  # (B, H)
        else:
            with torch.inference_mode():
                vectors = self._sentence_model(
                    input_ids.to(self.device), attention_mask.to(self.device), token_type_ids.to(self.device)
                ).float().cpu().numpy()  # (B, H)

        return TextEmbeddings(
            vectors=vectors,
            truncated=truncated,
            token_counts=attention_mask.sum(dim=1).numpy().astype(np.int64),
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
    runtime: str = TORCH,
    threads: int | None = None,
    onnx_cache_dir: Path | None = None,
) -> TextEncoder:
    """Load a registered backbone from its installed directory, in float32 and eval mode.

    `runtime` is "torch" (eager), "onnx" (the transformer with mean pooling and L2 normalisation
    exported to ONNX and run by ONNX Runtime) or "auto" ("onnx" when onnxruntime can run on the
    device, else "torch"). With "auto", a failed export logs a warning and falls back to "torch".
    `threads` sets ONNX Runtime's intra-op threads and, when given, torch's process-wide thread
    count. None keeps torch's setting and gives ONNX Runtime every core the process may use. ONNX
    exports are cached in `onnx_cache_dir` (default: encoders.onnx_model.default_onnx_cache_dir()).

    Raises ValueError for an unknown name or runtime, an out-of-range `max_tokens`, an invalid
    thread count or an unusable device, BackboneUnavailableError when the backbone's files are not
    installed, and InferenceRuntimeError when runtime "onnx" cannot be used.
    """
    spec = get_text_backbone(name)
    spec.check_max_tokens(max_tokens)
    torch_device = resolve_device(device)
    check_threads(threads)
    resolved_runtime = resolve_runtime(runtime, TEXT_RUNTIMES, device=torch_device, encoder="text")
    model_dir = spec.model_dir()
    transformers = _import_transformers()

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if not tokenizer.is_fast:
        raise RuntimeError(
            f"text backbone {name!r} loaded a slow tokenizer from {model_dir}; the encoder needs a "
            f"Rust-backed one to report truncation (is tokenizer.json missing?)"
        )
    model = transformers.AutoModel.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32)
    model.eval()

    # The registry entry must describe the files it points to.
    config = model.config
    if config.hidden_size != spec.embedding_dim or config.max_position_embeddings != spec.max_position_tokens:
        raise RuntimeError(
            f"text backbone {name!r}: the registry entry has embedding_dim={spec.embedding_dim} and "
            f"max_position_tokens={spec.max_position_tokens}, but {model_dir / 'config.json'} has "
            f"hidden_size={config.hidden_size} and max_position_embeddings={config.max_position_embeddings}"
        )

    weights_sha256 = file_sha256(model_dir / spec.weights_file)
    model_id = f"{spec.name}.{spec.pooling}.{max_tokens}@{weights_sha256[:8]}"

    apply_torch_threads(threads)
    onnx_model = None
    if resolved_runtime == ONNX:
        cache_dir = resolve_onnx_cache_dir(onnx_cache_dir)
        try:
            onnx_model = _load_onnx_text_model(
                spec, tokenizer, model, weights_sha256, cache_dir, torch_device, threads
            )
        except InferenceRuntimeError as error:
            if runtime != AUTO:
                raise
            logger.warning("text encoder runtime 'auto' falls back to torch: %s", error)
            resolved_runtime = TORCH
    if onnx_model is None:
        model.to(torch_device)

    encoder = TextEncoder(
        spec, tokenizer, model, max_tokens=max_tokens, device=torch_device, model_id=model_id,
        runtime=resolved_runtime, onnx_model=onnx_model,
    )
    logger.debug(
        "loaded text backbone %s from %s as %s, runtime %s on %s",
        name, model_dir, model_id, encoder.runtime, encoder.device,
    )
    return encoder


def _load_onnx_text_model(
    spec: TextBackboneSpec,
    tokenizer: Any,
    model: torch.nn.Module,
    weights_sha256: str,
    cache_dir: Path,
    device: torch.device,
    threads: int | None,
) -> OnnxModel:
    example = tokenizer(list(_EXPORT_EXAMPLE_TEXTS), padding=True, return_tensors="pt")
    input_names = ("input_ids", "attention_mask", "token_type_ids")
    example_inputs = tuple(example[input_name] for input_name in input_names)  # 3 x (2, T) int64
    # One Dim object per axis ties the three inputs to the same batch size and sequence length.
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", max=spec.max_position_tokens)
    return load_onnx_model(
        SentenceEmbeddingModel(model).eval(),
        example_inputs,
        onnx_cache_path(cache_dir, f"{spec.name}-{spec.pooling}", weights_sha256),
        input_names=input_names,
        output_name="embeddings",
        dynamic_shapes=tuple({0: batch, 1: sequence} for _ in input_names),
        tolerance=TEXT_RUNTIME_TOLERANCE,
        device=device,
        threads=threads,
        setting=f"text encoder {spec.name!r} runtime 'onnx'",
    )
