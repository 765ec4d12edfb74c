"""s3:// models: streamed from AWS S3, or an S3-compatible store, into the cache with obstore.

Why obstore (Rust's object_store): streaming 256 MiB from versitygw on loopback it ran at 236 MB/s with a
32 MiB peak RSS, where boto3's get_object managed 185 MB/s and 50 MiB and its download_file 99 MB/s and
99 MiB; it adds 15 MB to site-packages, boto3 37 MB, minio 21 MB. It reads the standard AWS environment
itself (static keys, IRSA's web identity, container credentials, the instance metadata service), so no
credential passes through our settings, our code or our messages.

What obstore leaves to this module:
- Resuming. obstore retries a request, and a body that breaks, a few times on its own (kept few and short,
  so that a dead store fails within about a minute); past that, the download goes on from the bytes already
  on disk with a Range GET pinned to the object's ETag (If-Match), `attempts` times in all, and starts over
  from byte 0 when the object has changed in between.
- S3's own words. obstore keeps S3's error code only in the text of its exception, inside the XML body S3
  answered, so the `<Code>` and `<Message>` are taken from there and nothing else of that text is shown:
  a SignatureDoesNotMatch body carries the string to sign and the signature. A GET (never a HEAD, whose
  answer has no body) is the first request, so that every refusal comes with S3's code.
- Proxies. The choice of http(s) downloads (proxies.py) holds here too, where reqwest alone would send an
  in-cluster store's traffic to the environment's proxy.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import http
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import obstore
from modelship.server import proxies
from modelship.server.config import default_s3_addressing
from modelship.server.errors import ModelLoadError
from obstore.exceptions import PreconditionError
from obstore.store import S3Store

if TYPE_CHECKING:
    from obstore import GetOptions
    from obstore.store import ClientConfig, RetryConfig

log = logging.getLogger("modelship.server.s3")

SCHEME = "s3://"
_CHUNK = 1 << 20
# Bucket names as S3 and the S3-compatible stores accept them (AWS's rules are stricter; the store decides).
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# obstore's text for a refusal: "... Error performing GET <url> in 1ms - Server returned non-2xx status
# code: 404 Not Found: <?xml ...><Error><Code>NoSuchKey</Code><Message>...</Message>...</Error>"
_STATUS = re.compile(r"non-2xx status code: (\d{3})")
_URL = re.compile(r"Error performing [A-Z]+ (\S+)")
_CODE = re.compile(r"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")
# ... and for a transport failure, the innermost cause in its debug form.
_OS_MESSAGE = re.compile(r'message: "([^"]+)"')
_ERROR_FIELD = re.compile(r'error: "([^"]+)"')
_CONNECT_KIND = re.compile(r'ConnectError\(\s*"([^"]+)"')
_TRANSPORT = re.compile(r"error sending request|kind: (?:Connect|Body|Decode|Interrupted|Timeout)|TimedOut")
_SECRETS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_CREDENTIAL_SOURCES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")
# A proxy that is never used (see `_client_options`): the discard port of loopback.
_UNUSED_PROXY = "http://127.0.0.1:9"


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str


def is_s3(uri: str) -> bool:
    return uri.startswith(SCHEME)


def parse_uri(uri: str) -> S3Location:
    """Bucket and key of `s3://bucket/key`, the key exactly as written (S3 keys are not URL-encoded)."""
    bucket, slash, key = uri.removeprefix(SCHEME).partition("/")
    if not is_s3(uri) or not slash or not key:
        raise ModelLoadError(f"malformed S3 URI {uri}: expected s3://<bucket>/<key>")
    if not _BUCKET.fullmatch(bucket):
        raise ModelLoadError(f"malformed S3 URI {uri}: {bucket!r} is not a bucket name")
    segments = key.split("/")
    # object_store's paths have no empty, "." or ".." segments: such a key cannot be asked for.
    if any(segment in ("", ".", "..") for segment in segments):
        raise ModelLoadError(
            f"malformed S3 URI {uri}: the key has an empty, '.' or '..' segment, which cannot be fetched"
        )
    return S3Location(bucket, key)


@dataclass(frozen=True)
class S3Options:
    """Where and how the store is reached. No credentials: obstore reads them from the environment."""

    endpoint: str | None = None  # None: AWS S3
    region: str | None = None  # None: AWS_REGION, AWS_DEFAULT_REGION, else us-east-1
    addressing: str | None = None  # "path" or "virtual"; None: config.default_s3_addressing
    # obstore's own retries of one request (a connection, a 5xx, a broken body) within each of our attempts.
    store_retries: int = 2
    connect_timeout: timedelta = timedelta(seconds=5)
    # A body that sends nothing for this long is broken (and resumed); there is no bound on the whole
    # download, which may rightly take many minutes for a large model.
    read_timeout: timedelta = timedelta(seconds=30)


@dataclass(frozen=True)
class _Target:
    """The store of one bucket and the origin (scheme://host[:port]) its requests go to."""

    store: S3Store
    origin: str


def _aws_endpoint(bucket: str, region: str, virtual: bool) -> str:
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    host = f"s3.{region}.{domain}"
    return f"https://{bucket}.{host}" if virtual else f"https://{host}"


def _target(location: S3Location, options: S3Options, environ: Mapping[str, str]) -> _Target:
    region = options.region or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    addressing = options.addressing or default_s3_addressing(options.endpoint or "")
    virtual = addressing == "virtual"
    if options.endpoint:
        parts = urlsplit(options.endpoint.rstrip("/"))
        # object_store takes a virtual-hosted endpoint with the bucket already in its host name.
        netloc = f"{location.bucket}.{parts.netloc}" if virtual else parts.netloc
        endpoint = parts._replace(netloc=netloc).geturl()
    else:
        # Named here, not left to obstore, so that a stray AWS_ENDPOINT_URL cannot redirect an AWS fetch.
        endpoint = _aws_endpoint(location.bucket, region, virtual)
    parts = urlsplit(endpoint)
    retry: RetryConfig = {
        "max_retries": options.store_retries,
        # No retry of obstore's starts later than this after the request's first try: our attempts, with
        # their resumption, are the loop that outlasts an outage.
        "retry_timeout": timedelta(seconds=10),
        "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=2)},
    }
    store = S3Store(
        location.bucket,
        endpoint=endpoint,
        region=region,
        virtual_hosted_style_request=virtual,
        client_options=_client_options(endpoint, options, environ),
        retry_config=retry,
    )
    return _Target(store, f"{parts.scheme}://{parts.netloc}")


def _client_options(endpoint: str, options: S3Options, environ: Mapping[str, str]) -> ClientConfig:
    client: ClientConfig = {
        "allow_http": urlsplit(endpoint).scheme == "http",
        "connect_timeout": options.connect_timeout,
        "read_timeout": options.read_timeout,
        "timeout": timedelta(hours=12),  # obstore's default, 30 s, would cut any large model short
    }
    proxy = proxies.proxy_for(endpoint, environ)
    if proxy is not None:
        client["proxy_url"] = proxy
    elif any((environ.get(name) or environ.get(name.upper()) or "").strip() for name in _PROXY_VARIABLES):
        # reqwest would take the environment's proxy for this host; naming a proxy turns that reading
        # off, and excluding the host (its subdomains too) sends every request direct.
        client["proxy_url"] = _UNUSED_PROXY
        client["proxy_excludes"] = urlsplit(endpoint).hostname or ""
    return client


class _Transient(Exception):
    """A failure that another attempt may get past: the message says what happened, for the last report."""


class _Changed(_Transient):
    """The object changed since the download began (its ETag is not the one the bytes on disk came with)."""


def _scrub(text: str, environ: Mapping[str, str]) -> str:
    # Nothing we quote should hold a credential; this is the net under that.
    for name in _SECRETS:
        value = environ.get(name, "")
        if len(value) >= 8:
            text = text.replace(value, "***")
    return text


def _s3_error(text: str) -> str | None:
    """`Code: Message` of the XML error body S3 answered, when the text holds one."""
    code = _CODE.search(text)
    if code is None:
        return None
    message = _MESSAGE.search(text)
    words = html.unescape(message.group(1)).strip() if message else ""
    return f"{html.unescape(code.group(1))}: {words}" if words else html.unescape(code.group(1))


def _transport_reason(text: str) -> str:
    """Why a request got no answer, in the words of the innermost error (the OS's, the resolver's)."""
    for pattern in (_OS_MESSAGE, _ERROR_FIELD, _CONNECT_KIND):
        found = pattern.search(text)
        if found:
            return found.group(1)
    if "IncompleteBody" in text or "UnexpectedEof" in text:
        return "the connection closed before the whole body came"
    if "TimedOut" in text or "timed out" in text:
        return "timed out"
    first = text.splitlines()[0] if text else ""
    return first.rpartition(" - ")[2] or first


def _status_words(status: int) -> str:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"
    # What S3 would have called it, had it sent a body (a HEAD's answer, a proxy's): NotFound, Forbidden...
    return f"{phrase.replace(' ', '')}: HTTP {status} {phrase}"


@dataclass
class _Transfer:
    """One download: its bytes on disk so far, and what they are checked against."""

    uri: str
    location: S3Location
    target: _Target
    max_bytes: int
    out: IO[bytes]
    environ: Mapping[str, str]
    received: int = 0
    size: int | None = None
    etag: str | None = None
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)

    def restart(self) -> None:
        self.received, self.size, self.etag = 0, None, None
        self.digest = hashlib.sha256()
        self.out.seek(0)
        self.out.truncate()

    def attempt(self) -> None:
        """Get the rest of the object: all of it, or from `received` on if it is still the same object."""
        options: GetOptions = {}
        if self.received:
            options = {"range": {"offset": self.received}, "if_match": self.etag}
        try:
            result = obstore.get(self.target.store, self.location.key, options=options)
        except Exception as exc:
            raise self._failure(exc) from None
        meta = result.meta
        if self.size is None:
            size = int(meta["size"])
            if size > self.max_bytes:
                raise ModelLoadError(f"{self.uri} is {size} bytes, over the limit of {self.max_bytes}")
            self.size, self.etag = size, meta.get("e_tag")
        elif result.range[0] != self.received:
            raise _Changed(f"asked for byte {self.received} on, got {result.range[0]} on")
        stream = result.stream(min_chunk_size=_CHUNK)
        while True:
            try:
                chunk = next(stream)
            except StopIteration:
                break
            except Exception as exc:
                raise self._failure(exc) from None
            self.received += len(chunk)
            if self.received > self.max_bytes:
                raise ModelLoadError(f"{self.uri} is over the limit of {self.max_bytes} bytes")
            self.digest.update(chunk)
            self.out.write(chunk)
        if self.received != self.size:
            raise _Transient(f"the body ended at byte {self.received} of {self.size}")

    def _failure(self, exc: Exception) -> Exception:
        """What an exception of obstore's means: ModelLoadError (permanent), _Changed or _Transient."""
        text = str(exc)
        if isinstance(exc, PreconditionError) and self.received:
            return _Changed("the object changed while it was being downloaded")
        url = _URL.search(text)
        if url is not None and not unquote(urlsplit(url.group(1)).path).endswith("/" + self.location.key):
            return ModelLoadError(_scrub(self._credentials_failure(url.group(1), text), self.environ))
        s3_error = _s3_error(text)
        status = _STATUS.search(text)
        if status is not None:
            code = int(status.group(1))
            said = s3_error or _status_words(code)
            if code >= 500 or code == 429:
                return _Transient(_scrub(said, self.environ))
            return ModelLoadError(_scrub(f"{self.uri}: {said}", self.environ))
        if _TRANSPORT.search(text):
            reason = _transport_reason(text)
            if "kind: Body" in text or "kind: Decode" in text or "Interrupted" in text:
                broke = f"the download broke off at byte {self.received} of {self.size}: {reason}"
                return _Transient(_scrub(broke, self.environ))
            return _Transient(_scrub(f"cannot reach {self.target.origin}: {reason}", self.environ))
        first = text.splitlines()[0] if text else ""
        return ModelLoadError(_scrub(f"{self.uri}: {type(exc).__name__}: {first}", self.environ))

    def _credentials_failure(self, url: str, text: str) -> str:
        """The failure of a request for credentials (IMDS, STS, container credentials), not for the object."""
        parts = urlsplit(url)
        source = f"{parts.scheme}://{parts.netloc}"
        status = _STATUS.search(text)
        detail = _s3_error(text) or (
            f"HTTP {status.group(1)}" if status is not None else _transport_reason(text)
        )
        if not any(self.environ.get(name) for name in _CREDENTIAL_SOURCES):
            return (
                f"{self.uri}: no S3 credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set, "
                f"nor IRSA's AWS_WEB_IDENTITY_TOKEN_FILE, and the instance metadata service at {source} "
                f"gave none ({detail})"
            )
        return f"{self.uri}: cannot get S3 credentials from {source}: {detail}"


def download(
    uri: str,
    dest: Path,
    expected_sha256: str,
    max_bytes: int,
    *,
    options: S3Options | None = None,
    attempts: int = 4,
    backoff_seconds: float = 0.5,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Stream the object at `uri` into `dest`, resuming after transient failures; `dest` appears only once
    the digest of all its bytes matches."""
    location = parse_uri(uri)
    env = os.environ if environ is None else environ
    try:
        target = _target(location, options or S3Options(), env)
    except Exception as exc:  # obstore's refusal of a setting: its type varies, its first line says it
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelLoadError(_scrub(f"{uri}: cannot set up the S3 client: {first}", env)) from None
    part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        with open(part, "wb") as out:
            transfer = _Transfer(uri, location, target, max_bytes, out, env)
            _transfer(transfer, attempts, backoff_seconds)
            out.flush()
            os.fsync(out.fileno())
        got = transfer.digest.hexdigest()
        if got != expected_sha256:
            raise ModelLoadError(f"sha256 mismatch for {uri}: expected {expected_sha256}, got {got}")
        os.replace(part, dest)
    except OSError as exc:
        raise ModelLoadError(f"cannot write {dest}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()


def _transfer(transfer: _Transfer, attempts: int, backoff_seconds: float) -> None:
    last: _Transient | None = None
    for attempt in range(1, attempts + 1):
        try:
            transfer.attempt()
            return
        except _Transient as exc:
            last = exc
            if isinstance(exc, _Changed) or transfer.etag is None:
                # Without an ETag to pin a Range GET to, the bytes on disk could be spliced with another
                # object's: only a fresh start is safe.
                transfer.restart()
            log.warning(
                "%s: %s (attempt %d of %d)%s",
                transfer.uri,
                exc,
                attempt,
                attempts,
                f", resuming at byte {transfer.received}" if transfer.received else "",
            )
        if attempt < attempts:
            time.sleep(min(backoff_seconds * 2 ** (attempt - 1), 8.0))
    raise ModelLoadError(f"{transfer.uri}: {last} (after {attempts} attempts)")
