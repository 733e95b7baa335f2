"""Checks on request texts shared by the predictor and the text encoder service."""

from __future__ import annotations

import unicodedata

# Unicode general categories that the default text encoder's tokenizer drops: control (Cc), format
# (Cf, the zero-width characters), private use (Co) and non-spacing marks (Mn, removed with the
# accents). Checked with all-MiniLM-L6-v2's BERT tokenizer from tokenizers 0.23. A text made only of
# these and white space would be embedded as an empty text.
DROPPED_BY_TOKENIZER_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Mn"})


def dropped_by_tokenizer(character: str) -> bool:
    """Return whether the text encoder's tokenizer drops `character` (white space included)."""
    return character.isspace() or unicodedata.category(character) in DROPPED_BY_TOKENIZER_CATEGORIES


def has_embeddable_text(text: str) -> bool:
    """Return whether `text` has at least one character that the tokenizer keeps."""
    return not all(dropped_by_tokenizer(character) for character in text)
