"""Videos in S3-compatible object storage (AWS S3, MinIO, Cloudflare R2, …).

Endpoint, region and credentials come from the usual AWS settings
(`AWS_ENDPOINT_URL`, `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`, …), so the
same configuration works for every provider. Clients get presigned URLs that
expire, or plain URLs on a public/CDN base when one is configured.

A request that times out or is answered 5xx (or throttled) is retried inside
the call, with botocore's standard back-off (exponential with jitter), up to
`ATTEMPTS` tries; then the call raises, the task's attempt fails and the
queue retries the task later. An upload is one PUT, so an object is either
whole or absent.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

from imagine.observability.metrics import storage_op
from imagine.web.headers import origin_of

ATTEMPTS = 3  # tries of one request, counting the first


class S3Storage:
    def __init__(
        self,
        url: str,
        *,
        ttl_seconds: int,
        public_base_url: str | None = None,
        client: Any = None,
        timeout_seconds: float = 30.0,
    ) -> None:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._ttl = ttl_seconds
        self._public = public_base_url.rstrip("/") if public_base_url else None
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                signature_version="s3v4",
                retries={"mode": "standard", "total_max_attempts": ATTEMPTS},
                connect_timeout=timeout_seconds,
                read_timeout=timeout_seconds,
            )
            client = boto3.client("s3", config=config)
        self._client = client

    @storage_op("s3", "save")
    def save(self, task_id: str, source: Path) -> str:
        key = self._key(f"{task_id}/{secrets.token_urlsafe(12)}{source.suffix}")
        self._client.upload_file(
            str(source), self.bucket, key, ExtraArgs={"ContentType": "video/mp4"}
        )
        return key

    @storage_op("s3", "put")
    def put(self, name: str, data: bytes) -> str:
        key = self._key(name)
        self._client.put_object(Bucket=self.bucket, Key=key, Body=data)
        return key

    @storage_op("s3", "read")
    def read(self, key: str) -> bytes:
        try:
            answer = self._client.get_object(Bucket=self.bucket, Key=key)
        except self._client.exceptions.NoSuchKey:
            raise FileNotFoundError(key) from None
        data: bytes = answer["Body"].read()
        return data

    @storage_op("s3", "entries")
    def entries(self, prefix: str) -> list[tuple[str, float]]:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._key(prefix)
        )
        return [
            (item["Key"], item["LastModified"].timestamp())
            for page in pages
            for item in page.get("Contents", ())
        ]

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    @storage_op("s3", "delete")
    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=key)

    @property
    def media_origin(self) -> str | None:
        # Where presigned (or public) URLs point: signing needs no request.
        return origin_of(self.url("origin", ""))

    def url(self, key: str, base_url: str) -> str:
        if self._public:
            return f"{self._public}/{quote(key)}"
        url: str = self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self._ttl
        )
        return url
