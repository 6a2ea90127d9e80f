"""How direct reads (``signed``) reach a bucket: its address, region, credentials and CA bundle."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlparse, urlsplit

from ... import paths
from .settings import DEFAULT_REGION, S3Settings
from .signed import Credentials, quote_key

__all__ = ["Route", "configured_ca_bundle", "proxy_configured", "sdk_route", "standalone_route"]

_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


@dataclass(frozen=True)
class Route:
    """How direct reads (``signed``) reach the bucket."""

    base_url: str
    region: str
    credentials: Callable[[], Credentials]
    verify: bool | str  # False, or the CA bundle trusted for https


def proxy_configured() -> bool:
    """Whether botocore would send requests through a proxy: then only botocore does."""
    return any(os.environ.get(name) or os.environ.get(name.upper()) for name in _PROXY_VARIABLES)


def standalone_route(settings: S3Settings, access_key_id: str, secret_access_key: str) -> Route | None:
    """The route that needs nothing from botocore, or None.

    It exists for a path-style bucket at an explicit endpoint, with credentials
    from the config or the environment, and no proxy: there, botocore would
    send exactly these requests. Anything else (AWS's own endpoints, profiles,
    instance roles) is worked out by botocore.
    """
    endpoint = urlsplit(settings.endpoint)
    if not settings.force_path_style or endpoint.scheme not in ("http", "https") or not endpoint.hostname:
        return None
    if proxy_configured():
        return None
    if access_key_id or secret_access_key:
        if not (access_key_id and secret_access_key):
            return None  # botocore reports the half that is missing
        credentials = Credentials(access_key_id, secret_access_key)
    else:
        # The first link of botocore's credential chain: the AWS_* variables.
        env = os.environ
        if not env.get("AWS_ACCESS_KEY_ID") or not env.get("AWS_SECRET_ACCESS_KEY"):
            return None
        if env.get("AWS_CREDENTIAL_EXPIRATION"):
            return None  # credentials botocore re-reads when they expire
        token = env.get("AWS_SECURITY_TOKEN") or env.get("AWS_SESSION_TOKEN") or ""
        credentials = Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], token)
    verify: bool | str = False
    if endpoint.scheme == "https" and not settings.skip_verify:
        bundle = configured_ca_bundle()
        if bundle is None:
            return None
        verify = bundle
    base_url = f"{settings.endpoint.rstrip('/')}/{quote_key(settings.bucket)}"
    return Route(base_url, settings.region or DEFAULT_REGION, lambda: credentials, verify)


def configured_ca_bundle() -> str | None:
    """The CA bundle botocore would trust, when that is knowable without botocore.

    botocore takes AWS_CA_BUNDLE, then ca_bundle from the shared config file,
    then REQUESTS_CA_BUNDLE, then certifi's bundle (or its own copy).
    """
    if os.environ.get("AWS_CA_BUNDLE"):
        return os.environ["AWS_CA_BUNDLE"]
    config_file = os.path.expanduser(os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config")
    try:
        with open(config_file, encoding="utf-8", errors="replace") as f:
            if "ca_bundle" in f.read():
                return None  # for botocore to read, with the right profile
    except OSError:
        pass
    if os.environ.get("REQUESTS_CA_BUNDLE"):
        return os.environ["REQUESTS_CA_BUNDLE"]
    try:
        import certifi

        return str(certifi.where())
    except ImportError:
        return None


def sdk_route(s3: Any, sdk_credentials: Any, verify: bool | str, bucket: str, path: str) -> Route | None:
    """The route botocore's client ``s3`` takes: its address (read from one
    presigned URL), region and credentials, and the CA bundle (or False) that it
    was built to trust; None when it cannot be followed."""
    if sdk_credentials is None or proxy_configured():
        return None  # unsigned access, or a proxy
    from botocore.exceptions import BotoCoreError, ClientError  # loaded already: ``s3`` is botocore's

    probe = paths.generations_dir(path) + "/probe"
    try:
        url = urlparse(s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": probe}))
    except (BotoCoreError, ClientError):
        return None  # botocore cannot presign here: the SDK path stays
    suffix = "/" + quote_key(probe)
    if not url.path.endswith(suffix):
        return None  # an address that is not base + key
    def credentials() -> Credentials:
        frozen = sdk_credentials.get_frozen_credentials()
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token or "")

    base_url = f"{url.scheme}://{url.netloc}{url.path[: -len(suffix)]}"
    return Route(base_url, s3.meta.region_name, credentials, verify)
