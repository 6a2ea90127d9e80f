"""S3 reads signed here (AWS Signature Version 4) and sent over ``http.client``.

A restore is hundreds of GETs. Through botocore each one cost ~1.1 ms of CPU
(event hooks, endpoint rules, urllib3, response parsing); here it costs
~0.45 ms. A read-only command whose replica can be reached without botocore
(an explicit endpoint, credentials from the config or the environment) also
skips importing botocore and building its client, ~0.35 s at every start.

Only what reading a replica needs is here: GET an object or a range of it, and
list keys. Anything but a clean answer returns None, and the caller repeats the
request through botocore, which retries, follows redirects and names the error.
This module never imports botocore.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import ssl
import threading
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Callable
from urllib.parse import quote, unquote_plus, urlsplit

__all__ = ["Credentials", "ListedObject", "Reply", "S3HTTP", "quote_key", "sign"]

log = logging.getLogger(__name__)

# The SHA-256 of an empty body: what a GET's x-amz-content-sha256 says.
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
ALGORITHM = "AWS4-HMAC-SHA256"
# Answers that say the request itself is wrong (the bucket lives in another
# region, a proxy or a policy wants what botocore would have done): stop trying.
GIVE_UP_STATUSES = frozenset({301, 302, 307, 308, 400, 401, 403})
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str = field(repr=False)
    token: str = field(default="", repr=False)


@dataclass(frozen=True)
class ListedObject:
    """One entry of a listing, the same whichever path (this or botocore) listed it."""

    key: str
    size: int
    last_modified: datetime


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def quote_key(key: str) -> str:
    """A key as it appears in a URL path, and so in the signature (slashes kept)."""
    return quote(key, safe="/~")


@lru_cache(maxsize=8)
def _signing_key(secret_key: str, day: str, region: str) -> bytes:
    key = ("AWS4" + secret_key).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _query_string(query: list[tuple[str, str]]) -> str:
    """``query`` encoded as SigV4's canonical request wants it (sorted), and so sent."""
    return "&".join(f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in sorted(query))


def sign(
    method: str,
    host: str,
    path: str,
    query: list[tuple[str, str]],
    headers: dict[str, str],
    credentials: Credentials,
    region: str,
    now: datetime,
) -> dict[str, str]:
    """The headers of a signed request without a body: ``headers`` plus host,
    date, payload hash, session token and Authorization. ``path`` is already
    URL-encoded (as sent); ``query`` is not."""
    stamp = now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    signed = {name.lower(): " ".join(value.split()) for name, value in headers.items()}
    signed.update({"host": host, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": stamp})
    if credentials.token:
        signed["x-amz-security-token"] = credentials.token
    names = sorted(signed)
    canonical_request = "\n".join([
        method,
        path,
        _query_string(query),
        "".join(f"{name}:{signed[name]}\n" for name in names),
        ";".join(names),
        EMPTY_SHA256,
    ])
    scope = f"{stamp[:8]}/{region}/s3/aws4_request"
    string_to_sign = "\n".join([ALGORITHM, stamp, scope, hashlib.sha256(canonical_request.encode()).hexdigest()])
    key = _signing_key(credentials.secret_key, stamp[:8], region)
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    signed["authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return signed


def _local_name(element: ElementTree.Element) -> str:
    return element.tag.rpartition("}")[2]  # without the S3 namespace, which some servers omit


class S3HTTP:
    """Signed GETs and listings against one bucket, on a pool of kept-alive connections.

    ``base_url`` addresses the bucket (``http://host:port/bucket`` path-style,
    ``https://bucket.host`` virtual-hosted); ``verify`` is False, or the CA
    bundle to trust for https. ``usable`` turns False after an answer that says
    the request itself is wrong; every later call then returns None at once.
    """

    def __init__(
        self,
        base_url: str,
        region: str,
        credentials: Callable[[], Credentials],
        *,
        verify: bool | str,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in _DEFAULT_PORTS or not url.hostname:
            raise ValueError(f"not an http(s) address: {base_url!r}")
        self._hostname = url.hostname
        self._port = url.port or _DEFAULT_PORTS[url.scheme]
        # The Host header as signed: the default port left out, an IPv6 address in brackets.
        self._host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
        if self._port != _DEFAULT_PORTS[url.scheme]:
            self._host += f":{self._port}"
        self._path = url.path.rstrip("/")
        self._region = region
        self._credentials = credentials
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._ssl: ssl.SSLContext | None = None
        if url.scheme == "https":
            self._ssl = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
            if verify is False:
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self.usable = True

    def get(self, key: str, headers: dict[str, str]) -> Reply | None:
        """The object (or the range in ``headers``); None unless the answer is a clean 200/206."""
        reply = self._request(f"{self._path}/{quote_key(key)}", [], headers)
        # A body cut short never gets here: http.client raises on fewer bytes than Content-Length.
        return reply if reply is not None and reply.status in (200, 206) else None

    def list_objects(
        self, prefix: str, delimiter: str | None, max_keys: int | None = None
    ) -> tuple[list[ListedObject], list[str]] | None:
        """Every object and common prefix under ``prefix``, or None."""
        query = [("list-type", "2"), ("prefix", prefix), ("encoding-type", "url")]
        if delimiter:
            query.append(("delimiter", delimiter))
        if max_keys is not None:
            query.append(("max-keys", str(max_keys)))
        objects: list[ListedObject] = []
        prefixes: list[str] = []
        token = ""
        while True:
            page_query = query + ([("continuation-token", token)] if token else [])
            reply = self._request(self._path or "/", page_query, {})
            if reply is None or reply.status != 200:
                return None
            try:
                token = self._parse_page(reply.body, objects, prefixes)
            except (ElementTree.ParseError, ValueError, KeyError) as exc:
                log.debug("listing of %s unreadable (%s), using botocore", prefix, exc)
                return None
            if not token:
                return objects, prefixes

    @staticmethod
    def _parse_page(body: bytes, objects: list[ListedObject], prefixes: list[str]) -> str:
        """Adds one ListObjectsV2 page to ``objects`` and ``prefixes``; the next page's token."""
        root = ElementTree.fromstring(body)
        fields = {_local_name(e): e.text or "" for e in root if len(e) == 0}
        # Keys come URL-encoded only where the server honoured encoding-type=url.
        decode = unquote_plus if fields.get("EncodingType") == "url" else str
        for element in root:
            name = _local_name(element)
            if name == "Contents":
                entry = {_local_name(e): e.text or "" for e in element}
                objects.append(ListedObject(decode(entry["Key"]), int(entry["Size"]),
                                            datetime.fromisoformat(entry["LastModified"])))
            elif name == "CommonPrefixes":
                prefixes.extend(decode(e.text or "") for e in element if _local_name(e) == "Prefix")
        if fields.get("IsTruncated", "false").lower() != "true":
            return ""
        token = fields.get("NextContinuationToken", "")
        if not token:
            raise ValueError("a truncated page without a continuation token")
        return token

    def _request(self, path: str, query: list[tuple[str, str]], headers: dict[str, str]) -> Reply | None:
        """One signed GET. A kept-alive connection the server has closed meanwhile
        fails before any answer: that request is sent once more on a new connection."""
        if not self.usable:
            return None
        try:
            credentials = self._credentials()
        except Exception as exc:  # botocore's refresh failed: botocore will meet it again, and name it
            log.debug("no credentials for a direct GET (%s), using botocore", type(exc).__name__)
            return None
        target = f"{path}?{_query_string(query)}" if query else path
        for fresh in (False, True):
            conn, reused = self._checkout(fresh)
            try:
                if conn.sock is None:
                    conn.connect()
                    assert conn.sock is not None
                    conn.sock.settimeout(self._read_timeout)  # per socket read, as botocore's read timeout
                signed = sign("GET", self._host, path, query, headers, credentials, self._region,
                              datetime.now(timezone.utc))
                conn.request("GET", target, headers=signed)
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if isinstance(exc, ssl.SSLCertVerificationError):
                    # This route does not trust the server; botocore decides (and reports) from here on.
                    log.debug("direct GET %s: certificate not trusted, using botocore from now on", path)
                    self.usable = False
                    return None
                if reused:
                    continue
                log.debug("direct GET %s failed (%s), using botocore", path, type(exc).__name__)
                return None
            try:
                body = response.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                log.debug("direct GET %s cut off (%s), using botocore", path, type(exc).__name__)
                return None
            self._checkin(conn, response)
            # Some servers answer 400 to a range past an object's end: the range is wrong, not the request.
            range_refused = response.status == 400 and "Range" in headers
            if response.status in GIVE_UP_STATUSES and not range_refused:
                log.debug("direct GET %s answered %d, using botocore from now on", path, response.status)
                self.usable = False
            return Reply(response.status, response.headers, body)
        return None

    def _checkout(self, fresh: bool) -> tuple[http.client.HTTPConnection, bool]:
        if not fresh:
            with self._lock:
                if self._idle:
                    return self._idle.pop(), True
        conn: http.client.HTTPConnection
        if self._ssl is not None:
            conn = http.client.HTTPSConnection(self._hostname, self._port, timeout=self._connect_timeout,
                                               context=self._ssl)
        else:
            conn = http.client.HTTPConnection(self._hostname, self._port, timeout=self._connect_timeout)
        return conn, False

    def _checkin(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        if response.will_close:
            conn.close()
            return
        with self._lock:
            self._idle.append(conn)
