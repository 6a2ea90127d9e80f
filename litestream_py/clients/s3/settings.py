"""Where an S3 replica lives: its bucket, path, region and endpoint, from a config or a URL."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

from ...config import ReplicaConfig, parse_replica_url
from ...errors import ConfigError

__all__ = ["DEFAULT_REGION", "S3Settings", "env_credentials", "parse_host", "settings_from_config"]

DEFAULT_REGION = "us-east-1"

_LOCALHOST_RE = re.compile(r"^(?:(.+)\.)?localhost$")
_BACKBLAZE_RE = re.compile(r"^(?:(.+)\.)?s3.([^.]+)\.backblazeb2.com$")
_FILEBASE_RE = re.compile(r"^(?:(.+)\.)?s3.filebase.com$")
_DIGITALOCEAN_RE = re.compile(r"^(?:(.+)\.)?([^.]+)\.digitaloceanspaces.com$")
_SCALEWAY_RE = re.compile(r"^(?:(.+)\.)?s3.([^.]+)\.scw\.cloud$")
_LINODE_RE = re.compile(r"^(?:(.+)\.)?([^.]+)\.linodeobjects.com$")

# A Range the server will not serve: any range of an empty object (416), and on
# some servers a range that runs past the object's end (400).
_TRUE = {"1", "t", "true", "yes", "on"}
_FALSE = {"0", "f", "false", "no", "off"}


@dataclass(frozen=True)
class S3Settings:
    """Where a replica lives. Credentials are deliberately not part of it."""

    bucket: str
    path: str = ""
    region: str = ""
    endpoint: str = ""
    force_path_style: bool = False
    skip_verify: bool = False


def _split_host_port(s: str) -> tuple[str, str]:
    if s.startswith("["):  # [ipv6]:port
        host, _, rest = s[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else ""
    if s.count(":") == 1:
        host, port = s.split(":")
        return host, port
    return s, ""


def parse_host(s: str) -> tuple[str, str, str, bool]:
    """Bucket, region, endpoint and path-style from a URL host, as Go's ``s3.ParseHost``.

    ``bucket.localhost:9000`` means a local server at http://localhost:9000;
    hosts of a few S3-compatible services carry their region; any other host is
    the bucket name on AWS itself (virtual-hosted addressing).
    """
    host, port = _split_host_port(s)
    force_path_style = True
    scheme = "https"
    bucket = region = endpoint = ""
    if m := _LOCALHOST_RE.match(host):
        bucket, region = m.group(1) or "", DEFAULT_REGION
        scheme, endpoint = "http", "localhost"
    elif m := _BACKBLAZE_RE.match(host):
        bucket, region = m.group(1) or "", m.group(2)
        endpoint = f"s3.{region}.backblazeb2.com"
    elif m := _FILEBASE_RE.match(host):
        bucket, endpoint = m.group(1) or "", "s3.filebase.com"
    elif m := _DIGITALOCEAN_RE.match(host):
        bucket, region = m.group(1) or "", m.group(2)
        endpoint = f"{region}.digitaloceanspaces.com"
    elif m := _SCALEWAY_RE.match(host):
        bucket, region = m.group(1) or "", m.group(2)
        endpoint = f"s3.{region}.scw.cloud"
    elif m := _LINODE_RE.match(host):
        bucket, region = m.group(1) or "", m.group(2)
        endpoint = f"{region}.linodeobjects.com"
    else:
        bucket, force_path_style = host, False
    if endpoint and port:
        endpoint = f"{endpoint}:{port}"
    if endpoint:
        endpoint = f"{scheme}://{endpoint}"
    return bucket, region, endpoint, force_path_style


def _query_bool(query: dict[str, list[str]], *names: str) -> bool | None:
    for name in names:
        if name in query:
            value = query[name][-1].strip().lower()
            if value in _TRUE or value == "":
                return True
            if value in _FALSE:
                return False
            raise ConfigError(f"cannot parse s3 replica url: {name}={query[name][-1]!r} is not a boolean")
    return None


def settings_from_config(rc: ReplicaConfig) -> S3Settings:
    """Resolve a replica's S3 settings like Go Litestream 0.3.13's config loader.

    Explicit config keys win over what the URL implies. As an lsr extension a URL
    may carry ``?endpoint=URL&region=R&force-path-style=true&skip-verify=true``
    (Go 0.3.13 ignores a query; it only knows ``s3://bucket.localhost:PORT/path``
    for a local server).
    """
    if rc.url and rc.path:
        raise ConfigError("cannot create s3 replica: specify url or path, not both")
    if rc.url and rc.bucket:
        raise ConfigError("cannot create s3 replica: specify url or bucket, not both")
    bucket, path = rc.bucket, rc.path
    region, endpoint = rc.region, rc.endpoint
    # Path-style addressing when an endpoint is set: only AWS itself, which
    # needs no endpoint, prefers virtual-hosted buckets.
    force_path_style = endpoint != ""
    if rc.force_path_style is not None:
        force_path_style = rc.force_path_style
    skip_verify = rc.skip_verify
    if rc.url:
        _, host, upath = parse_replica_url(rc.url)
        ubucket, uregion, uendpoint, uforce = parse_host(host)
        query = parse_qs(urlparse(rc.url).query, keep_blank_values=True)
        if "endpoint" in query:
            uendpoint, uforce = query["endpoint"][-1], True
            uregion = uregion or DEFAULT_REGION
        if "region" in query:
            uregion = query["region"][-1]
        qforce = _query_bool(query, "force-path-style", "forcePathStyle")
        if qforce is not None:
            uforce = qforce
        qskip = _query_bool(query, "skip-verify", "skipVerify")
        skip_verify = skip_verify or bool(qskip)
        path = path or upath
        bucket = bucket or ubucket
        region = region or uregion
        endpoint = endpoint or uendpoint
        if rc.force_path_style is None and not force_path_style:
            force_path_style = uforce
    if not bucket:
        raise ConfigError("cannot create s3 replica: bucket required")
    if endpoint and "://" not in endpoint:
        endpoint = "https://" + endpoint  # as aws-sdk-go does for a bare host
    if not region and endpoint:
        region = DEFAULT_REGION  # the usual default of non-AWS object stores
    return S3Settings(
        bucket=bucket,
        path=path.strip("/"),
        region=region,
        endpoint=endpoint.rstrip("/"),
        force_path_style=force_path_style,
        skip_verify=skip_verify,
    )


def env_credentials() -> tuple[str, str]:
    """LITESTREAM_ACCESS_KEY_ID / LITESTREAM_SECRET_ACCESS_KEY, unless AWS_* are set.

    Go's applyLitestreamEnv copies them to AWS_* only when those are unset; when
    AWS_* are set, botocore's own chain reads them (with AWS_SESSION_TOKEN).
    """
    if "AWS_ACCESS_KEY_ID" in os.environ or "AWS_SECRET_ACCESS_KEY" in os.environ:
        return "", ""
    return os.environ.get("LITESTREAM_ACCESS_KEY_ID", ""), os.environ.get("LITESTREAM_SECRET_ACCESS_KEY", "")
