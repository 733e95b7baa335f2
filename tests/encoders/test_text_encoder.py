"""Tests of encoders.text against the real all-MiniLM-L6-v2 model and tokenizer, on CPU."""

from __future__ import annotations

import time

import hashlib
import re
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from encoders.text import (
    DEFAULT_TEXT_BACKBONE,
    TEXT_BACKBONES,
    TextEncoder,
    get_text_backbone,
    load_text_encoder,
)
from encoders.text.encoder import resolve_device

SPEC = get_text_backbone(DEFAULT_TEXT_BACKBONE)

TEXTS = [
    "Wireless over-ear headphones with active noise cancelling and 30 hours of battery life.",
    "Stainless steel water bottle, 500 ml",
    "A cooperative board game for two to four players about building a railway network across Europe.",
    "Cotton T-shirt",
]

# "Wireless headphones with clear sound and long battery life", "stainless steel vacuum flask 500 ml".
CHINESE_TEXTS = ["这款无线蓝牙耳机音质清晰，续航时间长。", "不锈钢保温杯 500毫升"]

LONG_TEXT = "This board game has very detailed rules about trading resources. " * 80

# Socket calls recorded while the module fixture loads the model; loading must make none.
_network_calls: list[tuple[str, object]] = []


@pytest.fixture(scope="module")
def encoder() -> Iterator[TextEncoder]:
    recording = True

    def record_network(event: str, args: tuple[object, ...]) -> None:
        if recording and event in ("socket.connect", "socket.getaddrinfo"):
            _network_calls.append((event, args[1] if event == "socket.connect" else args[0]))

    # Audit hooks cannot be removed, so this one switches itself off after loading.
    sys.addaudithook(record_network)
    loaded = load_text_encoder(DEFAULT_TEXT_BACKBONE, max_tokens=256, device="cpu")
    recording = False
    yield loaded


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(SPEC.model_dir(), local_files_only=True)


def test_registry_default_entry() -> None:
    assert DEFAULT_TEXT_BACKBONE in TEXT_BACKBONES
    assert SPEC.embedding_dim == 384
    assert SPEC.pooling == "mean"
    assert SPEC.languages == ("en",)
    assert SPEC.default_max_tokens == 256
    assert (SPEC.model_dir() / SPEC.weights_file).is_file()


def test_unknown_backbone_rejected() -> None:
    with pytest.raises(ValueError, match="known backbones: all-minilm-l6-v2"):
        get_text_backbone("bert-huge")


@pytest.mark.parametrize("max_tokens", [2, 513, 0, True])
def test_max_tokens_out_of_range(max_tokens: int) -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        load_text_encoder(max_tokens=max_tokens, device="cpu")


def test_invalid_device_rejected() -> None:
    with pytest.raises(ValueError, match="invalid device 'gpu0'"):
        resolve_device("gpu0")


def test_auto_device_choice() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_load_makes_no_network_call(encoder: TextEncoder) -> None:
    assert _network_calls == []


def test_model_id_names_weights(encoder: TextEncoder) -> None:
    weights = SPEC.model_dir() / SPEC.weights_file
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert re.fullmatch(r"all-minilm-l6-v2\.mean\.256@[0-9a-f]{8}", encoder.model_id)
    assert encoder.model_id.endswith("@" + digest[:8])
    assert encoder.embedding_dim == 384
    assert encoder.max_tokens == 256
    assert encoder.device == torch.device("cpu")


def test_embedding_shape_and_dtype(encoder: TextEncoder) -> None:
    result = encoder.embed(TEXTS)
    assert result.vectors.shape == (len(TEXTS), 384)
    assert result.vectors.dtype == np.float32
    assert result.truncated.shape == (len(TEXTS),)
    assert result.truncated.dtype == np.bool_
    assert result.token_counts.shape == (len(TEXTS),)
    assert result.token_counts.dtype == np.int64


def test_embeddings_unit_norm(encoder: TextEncoder) -> None:
    vectors = encoder.embed(TEXTS).vectors
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_embed_deterministic(encoder: TextEncoder) -> None:
    first = encoder.embed(TEXTS).vectors
    second = encoder.embed(TEXTS).vectors
    np.testing.assert_array_equal(first, second)


def test_batch_equals_single(encoder: TextEncoder) -> None:
    # Padding a short text to the longest one of the batch must not change its embedding.
    texts = [*TEXTS, LONG_TEXT]
    batch = encoder.embed(texts)
    for index, text in enumerate(texts):
        single = encoder.embed([text])
        np.testing.assert_allclose(batch.vectors[index], single.vectors[0], atol=1e-5)
        assert batch.token_counts[index] == single.token_counts[0]
        assert batch.truncated[index] == single.truncated[0]


def test_matches_sentence_transformers(encoder: TextEncoder) -> None:
    from sentence_transformers import SentenceTransformer

    reference_model = SentenceTransformer(str(SPEC.model_dir()), device="cpu", local_files_only=True)
    assert reference_model.max_seq_length == encoder.max_tokens

    texts = [*TEXTS, *CHINESE_TEXTS, LONG_TEXT]
    reference = reference_model.encode(texts, batch_size=len(texts), convert_to_numpy=True)
    ours = encoder.embed(texts).vectors
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_concurrent_embed_consistent(encoder: TextEncoder) -> None:
    # The gRPC server calls embed from several threads at once.
    batches = [[text, LONG_TEXT] for text in TEXTS]
    expected = [encoder.embed(batch).vectors for batch in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(encoder.embed, batches))
    for result, vectors in zip(results, expected, strict=True):
        np.testing.assert_allclose(result.vectors, vectors, atol=1e-5)
        assert result.truncated.tolist() == [False, True]


def test_long_text_truncated(encoder: TextEncoder) -> None:
    result = encoder.embed([LONG_TEXT, TEXTS[0]])
    assert bool(result.truncated[0]) is True
    assert result.token_counts[0] == 256
    assert bool(result.truncated[1]) is False
    assert 2 < result.token_counts[1] < 256


def test_truncation_boundary(encoder: TextEncoder) -> None:
    # "hello" is one WordPiece token, and [CLS] and [SEP] add two, so 254 words fill 256 tokens.
    exactly_full = "hello " * 254
    one_over = "hello " * 255
    result = encoder.embed([exactly_full, one_over])
    assert result.token_counts.tolist() == [256, 256]
    assert result.truncated.tolist() == [False, True]


def test_custom_max_tokens() -> None:
    short_encoder = load_text_encoder(max_tokens=16, device="cpu")
    assert re.fullmatch(r"all-minilm-l6-v2\.mean\.16@[0-9a-f]{8}", short_encoder.model_id)
    result = short_encoder.embed(["one two three", "word " * 20])
    assert result.token_counts.tolist() == [5, 16]
    assert result.truncated.tolist() == [False, True]


def test_chinese_text_embeds(encoder: TextEncoder) -> None:
    result = encoder.embed(CHINESE_TEXTS)
    assert result.vectors.shape == (2, 384)
    assert np.isfinite(result.vectors).all()
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    assert result.truncated.tolist() == [False, False]


def test_chinese_one_token_per_ideograph(tokenizer) -> None:
    # 的 and 高 are among the 244 ideographs of the vocabulary; 质 and 量 are not.
    assert tokenizer.tokenize("的质量高") == ["的", "[UNK]", "[UNK]", "高"]

    vocabulary = tokenizer.get_vocab()
    ideographs = [token for token in vocabulary if len(token) == 1 and "\u4e00" <= token <= "\u9fff"]
    assert len(ideographs) == 244


def test_other_scripts_per_letter(tokenizer) -> None:
    assert tokenizer.tokenize("мир") == ["м", "##и", "##р"]
    assert tokenizer.tokenize("Café") == ["cafe"]
    assert tokenizer.tokenize("สวัสดี") == ["[UNK]"]


def test_empty_batch(encoder: TextEncoder) -> None:
    result = encoder.embed([])
    assert result.vectors.shape == (0, 384)
    assert result.truncated.shape == (0,)
    assert result.token_counts.shape == (0,)


def test_non_string_rejected(encoder: TextEncoder) -> None:
    with pytest.raises(TypeError, match=r"texts\[1\] is a float"):
        encoder.embed(["fine", float("nan")])  # type: ignore[list-item]


def test_megabyte_text_cut_before_tokenising(encoder: TextEncoder) -> None:
    words = "solid oak table with drawers " * 40_000  # about 1.2 MB
    prefix = words[: 101 * encoder.max_tokens]

    start = time.perf_counter()
    whole = encoder.embed([words])
    seconds = time.perf_counter() - start
    cut = encoder.embed([prefix])

    assert whole.truncated[0]
    assert whole.token_counts[0] == encoder.max_tokens
    np.testing.assert_allclose(whole.vectors[0], cut.vectors[0], atol=1e-6)
    assert seconds < 5.0
