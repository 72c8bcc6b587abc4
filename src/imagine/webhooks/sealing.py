"""Webhook signing secrets at rest: encrypted, so a copy of the database (a
backup, a leaked dump, the SQLite file) does not let anyone forge webhooks.

AES-256-GCM under a key derived from the server secret (`imagine.server_secret`),
with the account id as associated data, so a sealed secret opens only for
its own account. Stored as `aesgcm1:` + base64url(nonce ‖ ciphertext ‖ tag) of
the secret's 32 random bytes (the `whsec_` text is rebuilt when opened),
which fits the column. Secrets stored in plain text before this keep working.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from imagine.server_secret import derived_key, server_secret
from imagine.settings import Settings
from imagine.webhooks.signing import SECRET_PREFIX

SEALED_PREFIX = "aesgcm1:"
_NONCE_BYTES = 12
_PURPOSE = "imagine webhook signing secrets v1"


class UnreadableSecret(Exception):
    """A sealed secret this process cannot open: sealed under another server
    secret (processes not given the same IMAGINE_SECRET_KEY), or damaged."""


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def for_settings(cls, settings: Settings) -> SecretBox:
        return cls(derived_key(server_secret(settings), _PURPOSE))

    def seal(self, account_id: str, secret: str) -> str:
        """The stored form of a `whsec_…` secret made by `signing.new_secret`."""
        if not secret.startswith(SECRET_PREFIX):
            raise ValueError("not a webhook signing secret")
        raw = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, raw, account_id.encode())
        return SEALED_PREFIX + base64.urlsafe_b64encode(sealed).decode("ascii").rstrip("=")

    def open(self, account_id: str, stored: str) -> str:
        """The secret to sign with, from its stored form (sealed, or plain text
        from before secrets were sealed). Raises `UnreadableSecret`."""
        if not stored.startswith(SEALED_PREFIX):
            return stored
        text = stored[len(SEALED_PREFIX) :]
        try:
            sealed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            raw = self._aead.decrypt(
                sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], account_id.encode()
            )
        except (InvalidTag, binascii.Error, ValueError):
            raise UnreadableSecret(
                f"the webhook signing secret of {account_id} was encrypted under another "
                "server secret: give every process the same IMAGINE_SECRET_KEY"
            ) from None
        return SECRET_PREFIX + base64.b64encode(raw).decode("ascii")
