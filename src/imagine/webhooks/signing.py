"""Standard Webhooks signatures (https://www.standardwebhooks.com).

The signature is `v1,` + base64(HMAC-SHA256(secret, "<id>.<timestamp>.<body>"))
under a per-account secret `whsec_<base64>`. Signing goes through the
`standardwebhooks` package, the same code receivers verify with, so the two
sides cannot drift apart.
"""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # the spec asks for 24 to 64 random bytes


def new_secret() -> str:
    """A fresh signing secret, `whsec_` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for one message at one moment (Unix seconds)."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return Webhook(secret).sign(webhook_id, moment, body.decode("utf-8"))


def signed_headers(secret: str, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers. The timestamp is the attempt's, not the
    event's: receivers refuse messages older than a few minutes, and retries
    can come hours later."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, webhook_id, timestamp, body),
    }
