"""Text normalisation before scoring.

    none        the text as written (jiwer then applies only its own defaults: strip, collapse spaces)
    basic       lower-case (str.lower), then every character that is neither a word character (Python's
                Unicode `\\w`: letters, digits, underscore) nor whitespace is deleted, then runs of
                whitespace become one space and the ends are stripped. "Don't stop, well-known!" ->
                "dont stop wellknown". Captions are always scored after this (the DCASE tools' lower-case +
                punctuation removal without the Java PTB tokenizer; FENSE preprocesses the same way).
    whisper_en  Whisper's English normaliser (the whisper-normalizer package, a copy of openai/whisper's
                whisper/normalizers/english.py with its english.json spelling map): spelled-out numbers to
                digits, British to American spelling, fillers and bracketed text removed, ...
"""

from __future__ import annotations

import re
from functools import lru_cache

NORMALIZERS = ("none", "basic", "whisper_en")

_NOT_WORD_OR_SPACE = re.compile(r"[^\w\s]")
_SPACES = re.compile(r"\s+")


def basic(text: str) -> str:
    return _SPACES.sub(" ", _NOT_WORD_OR_SPACE.sub("", text.lower())).strip()


@lru_cache(maxsize=1)
def _whisper_english():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def whisper_en(text: str) -> str:
    return _whisper_english()(text)


def normalizer(name: str):
    """The function text -> text that `--normalize NAME` applies."""
    if name == "none":
        return lambda text: text
    if name == "basic":
        return basic
    if name == "whisper_en":
        return whisper_en
    raise ValueError(f"unknown normalisation {name!r}: expected one of {', '.join(NORMALIZERS)}")
