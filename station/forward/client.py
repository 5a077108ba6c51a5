"""The S3 side: a boto3 client of the forwarder's own, HEAD, error codes, throttled bodies.

Requests are signed by botocore (SigV4). The body is covered by the signed
Content-MD5 and SHA-256 headers, so the payload itself is not hashed a second time
for the signature (`UNSIGNED-PAYLOAD`).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from typing import Any

from station.forward.config import ForwardConfig
from station.forward.errors import Interrupted
from station.ingest.priority import TokenBucket

SEND_CHUNK = 64 * 1024


def make_client(c: ForwardConfig) -> Any:
    """A boto3 S3 client for `c` (one per forwarder: boto3 clients are not shared)."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=c.endpoint_url,
        region_name=c.region,
        aws_access_key_id=c.access_key_id,
        aws_secret_access_key=(
            c.secret_access_key.get_secret_value() if c.secret_access_key else None
        ),
        verify=c.ca_bundle if c.ca_bundle else True,
        config=Config(
            # the body is covered by the signed Content-MD5 and SHA-256 headers:
            # signing its hash too would read every part twice on http://
            s3={"addressing_style": c.addressing_style, "payload_signing_enabled": False},
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=10,
            read_timeout=120,
            # we choose the checksums: botocore's default CRC32 trailers are not
            # understood by every S3-compatible server
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def error_code(e: Exception) -> str:
    """The S3 error code of a botocore `ClientError` ("" for anything else)."""
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


def head_object(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """The object's HEAD (with its checksum), or None when the key holds nothing."""
    from botocore.exceptions import ClientError

    try:
        return client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as e:
        if error_code(e) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


class ThrottledBody(io.BytesIO):
    """A part's bytes, handed to the HTTP connection no faster than the bucket allows."""

    def __init__(
        self, data: bytes, bucket: TokenBucket, stop: threading.Event, sent: Callable[[int], None]
    ) -> None:
        super().__init__(data)
        self.bucket = bucket
        self.stop = stop
        self.sent = sent

    def read(self, n: int | None = -1) -> bytes:
        if self.stop.is_set():
            raise Interrupted()
        if n is None or n < 0 or n > SEND_CHUNK:
            n = SEND_CHUNK
        data = super().read(n)
        if data:
            if not self.bucket.take(len(data), self.stop):
                raise Interrupted()
            self.sent(len(data))
        return data
