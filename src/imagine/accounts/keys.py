"""API key format: recognisable, high-entropy, self-checking, stored only as a hash.

`imk_` + 32 random base62 characters (≈190 bits) + 6 characters of a CRC32
checksum of the random part, as GitHub's tokens do: a typo or a truncated key
is refused before any database query, and secret scanners can spot the prefix.
Only SHA-256 of the key is stored; with this much entropy a slow hash adds
nothing, and a fast one keeps authentication cheap.
"""

from __future__ import annotations

import hashlib
import secrets
import string
import zlib

PREFIX = "imk_"
_ALPHABET = string.digits + string.ascii_letters
_RANDOM_LEN = 32
_CHECK_LEN = 6
KEY_LENGTH = len(PREFIX) + _RANDOM_LEN + _CHECK_LEN


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECK_LEN)


def generate_key() -> str:
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_LEN))
    return f"{PREFIX}{body}{_checksum(body)}"


def has_key_shape(key: str) -> bool:
    """Length, prefix and alphabet: cheap enough for every request, and enough to
    refuse anything that cannot be a key (an over-long or non-ASCII token)
    before it is hashed, compared or looked up."""
    return (
        len(key) == KEY_LENGTH
        and key.startswith(PREFIX)
        and key.isascii()
        and key[len(PREFIX) :].isalnum()  # ASCII and alphanumeric: base62
    )


def is_well_formed(key: str) -> bool:
    """True when the key has our shape and its checksum matches (no I/O)."""
    if not has_key_shape(key):
        return False
    body, check = key[len(PREFIX) : -_CHECK_LEN], key[-_CHECK_LEN:]
    return secrets.compare_digest(check, _checksum(body))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def display_form(key: str) -> str:
    """What listings show: the prefix and the last four characters."""
    return f"{key[: len(PREFIX) + 4]}…{key[-4:]}"
