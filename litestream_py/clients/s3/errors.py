"""The one place where botocore's errors become the engine's errors."""

from __future__ import annotations

from typing import Iterable

from ...errors import (
    AccessDeniedError,
    BucketNotFoundError,
    ChecksumMismatchError,
    LitestreamError,
    NotFoundError,
    StorageError,
    ThrottledError,
)

__all__ = ["RANGE_CODES", "RangeRefused", "body_errors", "redact", "translate_error"]

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_NO_BUCKET_CODES = frozenset({"NoSuchBucket"})
_ACCESS_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "AllAccessDisabled",
    "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "AccountProblem", "InvalidClientTokenId",
})
_THROTTLE_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestLimitExceeded", "TooManyRequests", "TooManyRequestsException", "429",
})

# Hosts of S3-compatible services that Go Litestream 0.3.13 recognises in a URL.
RANGE_CODES = frozenset({"InvalidRange", "InvalidArgument"})


def body_errors() -> tuple[type[BaseException], ...]:
    """A response body that breaks off while being read (the request itself succeeded)."""
    from botocore.exceptions import IncompleteReadError, ReadTimeoutError, ResponseStreamingError
    from urllib3.exceptions import ProtocolError, ReadTimeoutError as Urllib3ReadTimeoutError

    return (ProtocolError, Urllib3ReadTimeoutError, ResponseStreamingError, IncompleteReadError, ReadTimeoutError,
            ConnectionError)


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def translate_error(exc: BaseException, what: str, endpoint: str, secrets: Iterable[str] = ()) -> LitestreamError:
    """The one place where SDK errors become the engine's errors.

    ``what`` names the operation and object ("write wal segment s3://b/k").
    Network failures get a message that names only the endpoint, so that an
    outage reads the same whatever was being transferred and the replicator
    logs it once. No credential ever reaches a message.
    """
    if isinstance(exc, LitestreamError):
        return exc
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        CredentialRetrievalError,
        EndpointConnectionError,
        FlexibleChecksumError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
        ProxyConnectionError,
        SSLError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {}) or {}
        meta = exc.response.get("ResponseMetadata", {}) or {}
        code = str(err.get("Code") or meta.get("HTTPStatusCode") or "unknown")
        status = meta.get("HTTPStatusCode")
        message = redact(str(err.get("Message") or "").strip(), secrets)
        detail = f"{code}: {message}" if message and message != code else code
        if code in _NOT_FOUND_CODES:
            return NotFoundError(f"cannot {what}: not found")
        if code == "PreconditionFailed" or status == 412:
            # If-Match failed: the object was replaced while being read in ranges.
            return NotFoundError(f"cannot {what}: the object was replaced while it was being read")
        if code in _NO_BUCKET_CODES:
            return BucketNotFoundError(f"cannot {what}: bucket does not exist ({code})")
        if code in _ACCESS_CODES or status == 403:
            return AccessDeniedError(
                f"cannot {what}: access denied ({detail}); check the credentials and bucket policy"
            )
        if code in _THROTTLE_CODES or status == 429:
            return ThrottledError(f"cannot {what}: s3 kept throttling requests ({code}) through every retry")
        suffix = f" (HTTP {status})" if status else ""
        return StorageError(f"cannot {what}: {detail}{suffix}")
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)):
        return AccessDeniedError(
            f"cannot {what}: no usable s3 credentials (set access-key-id and secret-access-key, "
            "or LITESTREAM_ACCESS_KEY_ID and LITESTREAM_SECRET_ACCESS_KEY)"
        )
    if isinstance(exc, FlexibleChecksumError):
        return ChecksumMismatchError(f"cannot {what}: s3 response checksum mismatch")
    if isinstance(exc, SSLError):
        return StorageError(f"cannot reach s3 endpoint {endpoint}: TLS handshake failed (see skip-verify)")
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError)):
        return StorageError(f"cannot reach s3 endpoint {endpoint}: connection failed")
    if isinstance(exc, (HTTPClientError, BotoConnectionError, ConnectionError, TimeoutError, *body_errors())):
        return StorageError(f"cannot reach s3 endpoint {endpoint}: connection lost or timed out")
    if isinstance(exc, BotoCoreError):
        return StorageError(f"cannot {what}: {redact(str(exc), secrets)}")
    return StorageError(f"cannot {what}: {redact(str(exc) or type(exc).__name__, secrets)}")


class RangeRefused(StorageError):
    """A server that will not serve a range of an object (some refuse one past its end)."""
