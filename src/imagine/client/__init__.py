"""Python SDK for the Imagine video-generation API.

    from imagine.client import Client

    with Client() as client:              # IMAGINE_API_KEY, IMAGINE_BASE_URL
        task = client.run("a lighthouse at dusk", ratio="1:1")
        print(client.download(task, "videos"))

Everything public is listed in `__all__`; the underscored modules are
private. The SDK needs only `httpx`: it imports nothing of the server.
See docs/sdk.md.
"""

from imagine.client._client import AsyncClient, Client
from imagine.client._exceptions import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    Conflict,
    Forbidden,
    ImagineError,
    InsufficientCredits,
    InvalidRequest,
    MissingAPIKey,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    TaskFailed,
    TaskFinished,
    Unauthorized,
    UnexpectedResponse,
    UsageError,
    WaitTimeout,
)
from imagine.client._images import ImageInput, SavableImage
from imagine.client._models import (
    Account,
    DeliveryAttempt,
    LedgerEntry,
    LedgerPage,
    RateLimit,
    Task,
    TaskDeliveries,
    TaskPage,
    Usage,
    WebhookDelivery,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "Account",
    "AsyncClient",
    "Client",
    "Conflict",
    "DeliveryAttempt",
    "Forbidden",
    "ImageInput",
    "ImagineError",
    "InsufficientCredits",
    "InvalidRequest",
    "LedgerEntry",
    "LedgerPage",
    "MissingAPIKey",
    "NotFound",
    "PayloadTooLarge",
    "RateLimit",
    "RateLimited",
    "SavableImage",
    "ServerError",
    "Task",
    "TaskDeliveries",
    "TaskFailed",
    "TaskFinished",
    "TaskPage",
    "Unauthorized",
    "UnexpectedResponse",
    "Usage",
    "UsageError",
    "WaitTimeout",
    "WebhookDelivery",
]
