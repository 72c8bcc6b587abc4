"""A task's statuses: `pending` → `processing` → `completed` | `failed` | `cancelled`."""

from __future__ import annotations

PENDING = "pending"
PROCESSING = "processing"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"

ALL = (PENDING, PROCESSING, COMPLETED, FAILED, CANCELLED)
FINISHED = frozenset({COMPLETED, FAILED, CANCELLED})
