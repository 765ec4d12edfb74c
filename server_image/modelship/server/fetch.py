"""Getting the model file: local paths as they are, http(s) and s3:// (s3.py) streamed into a cache named by
its sha256.

Nothing is handed to onnxruntime before its bytes have been checked against the expected sha256, and
the bytes that were checked are the bytes that get parsed (no second read of a file that may change).
The `fetch` command (an init container) only leaves a verified file in the cache: it hashes in chunks and
never holds the model in memory, so that its memory limit need not grow with the model.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
from modelship.server import proxies, s3
from modelship.server.errors import ModelLoadError

log = logging.getLogger("modelship.server.fetch")

_PERMANENT_STATUS = frozenset({400, 401, 403, 404, 405, 410, 451})
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelFile:
    data: bytes
    sha256: str
    source: str


@dataclass(frozen=True)
class FetchedFile:
    """A verified model file left on disk, as the `fetch` command reports it."""

    path: Path
    sha256: str
    size: int
    cached: bool  # it was in the cache already: nothing was downloaded


def is_remote(uri: str) -> bool:
    """Whether the model is downloaded into the cache (http(s), s3) rather than read where it is."""
    return urlsplit(uri).scheme in ("http", "https", "s3")


def cache_path(cache_dir: str | os.PathLike[str], sha256: str) -> Path:
    """Where a model with this digest lives in the cache: a pure function of the digest, so that an init
    container and the serving container agree without talking."""
    return Path(cache_dir) / f"{sha256}.onnx"


def local_path(uri: str) -> Path:
    """The path of a `file://` URI or a plain path; ModelLoadError for any other scheme."""
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ModelLoadError(f"file URI {uri} names host {parts.netloc!r}; only local files can be read")
        return Path(unquote(parts.path))
    if parts.scheme == "":
        return Path(uri)
    raise ModelLoadError(
        f"unsupported model URI scheme {parts.scheme!r} in {uri}: use file://, a path, http(s):// or s3://"
    )


def read_verified(path: Path, expected_sha256: str | None, max_bytes: int, source: str) -> ModelFile:
    """The file's bytes, refused when larger than `max_bytes` or when their digest is not the expected one."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ModelLoadError(f"{source} is {size} bytes, over the limit of {max_bytes}")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelLoadError(f"{source} does not exist") from None
    except IsADirectoryError:
        raise ModelLoadError(f"{source} is a directory, not an .onnx file") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read {source}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise ModelLoadError(f"{source} is over the limit of {max_bytes} bytes")
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise ModelLoadError(f"sha256 mismatch for {source}: expected {expected_sha256}, got {digest}")
    return ModelFile(data=data, sha256=digest, source=source)


def hash_file(path: Path, expected_sha256: str | None, max_bytes: int, source: str) -> tuple[str, int]:
    """The file's digest and size, read in chunks; refused as `read_verified` refuses."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as file:
            stated = os.fstat(file.fileno()).st_size
            if stated > max_bytes:
                raise ModelLoadError(f"{source} is {stated} bytes, over the limit of {max_bytes}")
            while chunk := file.read(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise ModelLoadError(f"{source} is over the limit of {max_bytes} bytes")
                digest.update(chunk)
    except FileNotFoundError:
        raise ModelLoadError(f"{source} does not exist") from None
    except IsADirectoryError:
        raise ModelLoadError(f"{source} is a directory, not an .onnx file") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read {source}: {exc.strerror or exc}") from None
    got = digest.hexdigest()
    if expected_sha256 is not None and got != expected_sha256:
        raise ModelLoadError(f"sha256 mismatch for {source}: expected {expected_sha256}, got {got}")
    return got, size


class _Retryable(Exception):
    pass


class _ProxyRouting(httpx.BaseTransport):
    """Sends each request, redirects included, direct or through the proxy `proxies.proxy_for` picks:
    the environment's proxy for remote hosts, none for local and cluster addresses (httpx's own reading
    of the environment would proxy those too: its NO_PROXY knows no CIDR blocks)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self._transports: dict[str | None, httpx.HTTPTransport] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        proxy = proxies.proxy_for(str(request.url), self._environ)
        transport = self._transports.get(proxy)
        if transport is None:
            # Each transport still reads SSL_CERT_FILE and SSL_CERT_DIR (trust_env) for its TLS.
            transport = self._transports[proxy] = httpx.HTTPTransport(proxy=proxy)
        return transport.handle_request(request)

    def close(self) -> None:
        for transport in self._transports.values():
            transport.close()


def download(
    url: str,
    dest: Path,
    expected_sha256: str,
    max_bytes: int,
    *,
    attempts: int = 4,
    backoff_seconds: float = 0.5,
    timeout_seconds: float = 60.0,
) -> None:
    """Stream `url` into `dest`, retrying transient failures; `dest` appears only once its digest matches."""
    last: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            _download_once(url, dest, expected_sha256, max_bytes, timeout_seconds)
            return
        except _Retryable as exc:
            last = exc
            log.warning("download of %s failed (attempt %d of %d): %s", url, attempt, attempts, exc)
            if attempt < attempts:
                time.sleep(min(backoff_seconds * 2 ** (attempt - 1), 8.0))
    raise ModelLoadError(f"download of {url} failed after {attempts} attempts: {last}")


def _download_once(url: str, dest: Path, expected_sha256: str, max_bytes: int, timeout: float) -> None:
    part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        with (
            httpx.Client(
                transport=_ProxyRouting(os.environ),
                trust_env=False,  # proxies are _ProxyRouting's choice alone
                follow_redirects=True,
                timeout=httpx.Timeout(timeout, connect=10.0),
            ) as client,
            client.stream("GET", url) as response,
        ):
            status = response.status_code
            if status in _PERMANENT_STATUS:
                raise ModelLoadError(f"download of {url} failed: HTTP {status}")
            if status >= 300:
                raise _Retryable(f"HTTP {status}")
            declared = response.headers.get("content-length")
            expected_len = int(declared) if declared and declared.isdigit() else None
            if expected_len is not None and expected_len > max_bytes:
                raise ModelLoadError(f"{url} is {expected_len} bytes, over the limit of {max_bytes}")
            digest = hashlib.sha256()
            received = 0
            with open(part, "wb") as out:
                for chunk in response.iter_raw(_CHUNK):
                    received += len(chunk)
                    if received > max_bytes:
                        raise ModelLoadError(f"{url} is over the limit of {max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if expected_len is not None and received != expected_len:
                raise _Retryable(f"truncated body: received {received} of {expected_len} bytes")
        got = digest.hexdigest()
        if got != expected_sha256:
            raise ModelLoadError(f"sha256 mismatch for {url}: expected {expected_sha256}, got {got}")
        os.replace(part, dest)
    except httpx.RemoteProtocolError as exc:
        raise _Retryable(f"truncated or broken response: {exc}") from None
    except httpx.TransportError as exc:
        raise _Retryable(f"{type(exc).__name__}: {exc}") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot write {dest}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()


def fetch_model(
    uri: str,
    expected_sha256: str | None,
    cache_dir: str,
    max_bytes: int,
    *,
    attempts: int = 4,
    s3_options: s3.S3Options | None = None,
) -> ModelFile:
    """The verified bytes of the model. A remote one comes from the cache when an init container (or an
    earlier start) already fetched it, and is downloaded into the cache otherwise."""
    if not is_remote(uri):
        return read_verified(local_path(uri), expected_sha256, max_bytes, uri)
    expected = _required_digest(uri, expected_sha256)
    dest = cache_path(cache_dir, expected)
    source = f"{dest} (from {uri})"
    if dest.exists():
        try:
            cached = read_verified(dest, expected, max_bytes, source)
            log.info("using the cached copy of %s at %s", uri, dest)
            return cached
        except ModelLoadError as exc:
            _drop_unusable(dest, exc)
    _download_into(uri, dest, expected, max_bytes, attempts, s3_options)
    return read_verified(dest, expected, max_bytes, source)


def fetch_file(
    uri: str,
    expected_sha256: str | None,
    cache_dir: str,
    max_bytes: int,
    *,
    attempts: int = 4,
    s3_options: s3.S3Options | None = None,
) -> FetchedFile:
    """What `fetch_model` gets, left verified on disk (in the cache, for a remote model) and never read
    into memory whole: the `fetch` command's work."""
    if not is_remote(uri):
        path = local_path(uri)
        digest, size = hash_file(path, expected_sha256, max_bytes, uri)
        return FetchedFile(path, digest, size, cached=False)
    expected = _required_digest(uri, expected_sha256)
    dest = cache_path(cache_dir, expected)
    if dest.exists():
        try:
            digest, size = hash_file(dest, expected, max_bytes, f"{dest} (from {uri})")
            log.info("using the cached copy of %s at %s", uri, dest)
            return FetchedFile(dest, digest, size, cached=True)
        except ModelLoadError as exc:
            _drop_unusable(dest, exc)
    # The download hashed every byte it wrote, and `dest` appeared only once they matched.
    _download_into(uri, dest, expected, max_bytes, attempts, s3_options)
    return FetchedFile(dest, expected, dest.stat().st_size, cached=False)


def _required_digest(uri: str, expected_sha256: str | None) -> str:
    if expected_sha256 is None:
        raise ModelLoadError(f"a sha256 is required to download {uri} (MODELSHIP_MODEL_SHA256)")
    return expected_sha256


def _drop_unusable(dest: Path, exc: ModelLoadError) -> None:
    log.warning("the cached copy is unusable, downloading again: %s", exc)
    with contextlib.suppress(OSError):
        dest.unlink()


def _download_into(
    uri: str, dest: Path, expected_sha256: str, max_bytes: int, attempts: int, s3_options: s3.S3Options | None
) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(f"cannot create the model cache {dest.parent}: {exc.strerror or exc}") from None
    if s3.is_s3(uri):
        s3.download(uri, dest, expected_sha256, max_bytes, options=s3_options, attempts=attempts)
    else:
        download(uri, dest, expected_sha256, max_bytes, attempts=attempts)
