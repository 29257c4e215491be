"""Coded segments as bytes: constriction's uint32 words, little-endian whatever the machine."""

from __future__ import annotations

import numpy as np

from harness.errors import UserError


def to_words(words: np.ndarray) -> bytes:
    """constriction's compressed uint32 array -> little-endian bytes."""
    return np.asarray(words, dtype=np.uint32).astype("<u4").tobytes()


def from_words(data: bytes) -> np.ndarray:
    """Little-endian bytes -> a native uint32 array (a fresh, writable copy)."""
    if len(data) % 4:
        raise ValueError(f"a segment of {len(data)} bytes is not a whole number of words")
    return np.frombuffer(data, dtype="<u4").astype(np.uint32)


def corrupt(source: str, why: str) -> UserError:
    """The one line for a file whose checksum holds but whose content does not decode."""
    return UserError(f"{source}: does not decode with this model ({why}); it is corrupted or "
                     "was written by another codec version")
