"""A small async Kubernetes API client on aiohttp: get, list, apply, replace, patch status, delete.

Kopf watches; this client writes. It takes its credentials from the same login function as
Kopf (see `auth`), so both use one source, and logs in again when the API says 401 (service
account tokens rotate). Conflicts, throttling, server errors and lost connections are retried
with backoff, waiting as long as the server's Retry-After asks; what is still failing after
that raises `Transient` (or its `Conflict`), for the caller to retry later; a refusal for good
raises `ApiError`, and a 404 where an answer is needed `NotFound`, like Kopf's
`kopf._cogs.clients.errors`. It counts every write it sends, so a benchmark or a test can prove
that an idle resync writes nothing.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import inspect
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import kopf
from modelship.operator import bodies, naming
from modelship.operator.kinds import BY_KIND, ResourceKind

logger = logging.getLogger(__name__)

_TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
# A wait the server asks for beyond this is left to the work queue, not slept in a request.
_MAX_INLINE_WAIT = 10.0


class ApiError(Exception):
    """The API refused a request for good (403, 422, ...): retrying the same request is useless."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else f"{reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(ApiError):
    """404: the object (or the kind) is not there."""


class Transient(ApiError):
    """Worth retrying later without any change from the user: an outage, throttling, a server
    error. `retry_after` is the server's own word on when (Retry-After, or the Status body's
    details.retryAfterSeconds), if it gave one."""

    def __init__(self, status: int, reason: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(status, reason, message)
        self.retry_after = retry_after


class Conflict(Transient):
    """409: someone else changed the object (or a precondition failed); read it again and retry."""


def api_error(status: int, body: Any, retry_after: float | None = None) -> ApiError:
    """The error for a failed response, of the class that says what to do about it."""
    if isinstance(body, dict):
        reason, message = str(body.get("reason") or "Error"), str(body.get("message") or body)
        details = body.get("details") or {}
        if retry_after is None and isinstance(details, dict) and details.get("retryAfterSeconds"):
            retry_after = float(details["retryAfterSeconds"])
    else:
        reason, message = "Error", str(body)
    if status == 404:
        return NotFound(status, reason, message)
    if status == 409:
        return Conflict(status, reason, message, retry_after=retry_after)
    if status == 0 or status in _TRANSIENT_STATUSES:
        return Transient(status, reason, message, retry_after=retry_after)
    return ApiError(status, reason, message)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds: a number of seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


Login = Callable[[], kopf.ConnectionInfo | Awaitable[kopf.ConnectionInfo | None] | None]


class KubeClient:
    def __init__(
        self,
        login: Login,
        *,
        connections: int = 32,
        attempts: int = 5,
        backoff: float = 0.2,
        timeout: float = 30.0,
    ) -> None:
        self._login = login
        self._connections = connections
        self._attempts = attempts
        self._backoff = backoff
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(5.0, timeout))
        self._session: aiohttp.ClientSession | None = None
        self._server = ""
        self._relogin_lock = asyncio.Lock()
        self.writes: collections.Counter[str] = collections.Counter()

    async def _connect(self) -> None:
        info = self._login()
        if inspect.isawaitable(info):
            info = await info
        if info is None:
            raise Transient(0, "LoginFailed", "no kubeconfig and no service account token found")
        assert isinstance(info, kopf.ConnectionInfo)
        if self._session is not None:
            await self._session.close()
        self._server = info.server.rstrip("/")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._connections, ssl=info.as_ssl_context()),
            headers={**info.as_http_headers(), "User-Agent": "modelship-operator"},
            timeout=self._timeout,
            # The cluster's API server (or loopback): never through HTTP(S)_PROXY, as Kopf's own watch.
            trust_env=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: object = None,
        content_type: str = "application/json",
        write: str | None = None,
        final: frozenset[int] = frozenset(),
    ) -> tuple[int, Any]:
        """Send one request, retrying what is transient; return (status, parsed body).

        A 404 is returned, not raised: most callers treat "gone" as an answer. Statuses in
        `final` are raised at once, without retrying.
        """
        relogged = False
        last: Transient | None = None
        for attempt in range(self._attempts):
            if self._session is None:
                async with self._relogin_lock:
                    if self._session is None:
                        await self._connect()
            assert self._session is not None
            headers = {"Content-Type": content_type} if body is not None else {}
            data = json.dumps(body) if body is not None else None
            if write:
                self.writes[write] += 1
            try:
                async with self._session.request(
                    method, self._server + path, params=params, data=data, headers=headers
                ) as response:
                    status = response.status
                    raw = await response.read()
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                last = Transient(0, "Unavailable", f"{method} {path}: {exc!r}")
            else:
                parsed = _parse(raw)
                if status == 401 and not relogged:
                    relogged = True
                    async with self._relogin_lock:
                        await self._connect()
                    continue
                if status < 400 or status == 404:
                    return status, parsed
                error = api_error(status, parsed, retry_after)
                if not isinstance(error, Transient) or status in final:
                    raise error
                last = error
                if error.retry_after is not None:
                    if error.retry_after > _MAX_INLINE_WAIT:
                        raise error  # the work queue waits that long, without holding a slot
                    if attempt + 1 < self._attempts:
                        await asyncio.sleep(error.retry_after)
                    continue
            if attempt + 1 < self._attempts:
                delay = self._backoff * (2**attempt)
                await asyncio.sleep(delay * (0.5 + random.random()))
        assert last is not None
        raise last

    async def get(self, kind: ResourceKind, namespace: str | None, name: str) -> dict[str, Any] | None:
        status, body = await self._request("GET", kind.path(namespace, name))
        return None if status == 404 else body

    async def pages(
        self,
        kind: ResourceKind,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        limit: int = 250,
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """A LIST in pages of `limit` objects, so that thousands never sit in memory at once."""
        params = {"limit": str(limit)}
        if label_selector:
            params["labelSelector"] = label_selector
        while True:
            status, body = await self._request("GET", kind.path(namespace), params=params)
            if status == 404:
                return
            yield list(body.get("items") or [])
            token = bodies.meta(body).get("continue")
            if not token:
                return
            params["continue"] = token

    async def apply(self, manifest: Mapping[str, Any], *, force: bool = True) -> dict[str, Any]:
        """Server-side apply under our field manager: a no-op when nothing changes."""
        return await self._apply_as(naming.FIELD_MANAGER, manifest, force=force, write="apply")

    async def hold_replicas(
        self, kind: ResourceKind, namespace: str, name: str, replicas: int
    ) -> dict[str, Any]:
        """Server-side apply of spec.replicas alone, under the handover field manager: the field
        then outlives our own manager's next apply, which no longer sets it (see
        `decisions.replicas_hold`). Only for an object that exists: this partial manifest would
        not create a valid one."""
        manifest = {
            "apiVersion": kind.api_version,
            "kind": kind.kind,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas},
        }
        return await self._apply_as(naming.HANDOVER_FIELD_MANAGER, manifest, force=True, write="hold")

    async def _apply_as(
        self, manager: str, manifest: Mapping[str, Any], *, force: bool, write: str
    ) -> dict[str, Any]:
        kind = BY_KIND[manifest["kind"]]
        meta = manifest["metadata"]
        params = {"fieldManager": manager, "force": "true" if force else "false"}
        status, body = await self._request(
            "PATCH",
            kind.path(meta.get("namespace"), meta["name"]),
            params=params,
            body=manifest,
            content_type="application/apply-patch+yaml",
            write=write,
        )
        if status == 404:
            raise NotFound(404, "NotFound", f"{kind.kind} {meta['name']}: the API does not serve it")
        return dict(body)

    async def replace(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """PUT a whole object we do not own (a user's HTTPRoute). Its metadata.resourceVersion
        turns a concurrent change into a 409, raised at once rather than retried with the same
        stale body: transient, for the caller to read the object again and retry."""
        kind = BY_KIND[manifest["kind"]]
        meta = manifest["metadata"]
        status, body = await self._request(
            "PUT",
            kind.path(meta.get("namespace"), meta["name"]),
            params={"fieldManager": naming.FIELD_MANAGER},
            body=manifest,
            write="replace",
            final=frozenset({409}),
        )
        if status == 404:
            raise NotFound(404, "NotFound", f"{kind.kind} {meta['name']} is gone")
        return dict(body)

    async def patch_status(
        self,
        kind: ResourceKind,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
        *,
        resource_version: str | None = None,
    ) -> dict[str, Any] | None:
        """A JSON merge patch on the status subresource; None if the object is gone.

        With `resource_version`, the API server applies it only to that version of the object and
        answers 409 otherwise: `Conflict` is raised at once (retrying the same patch cannot help)."""
        body: dict[str, Any] = {"status": patch}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        status, answer = await self._request(
            "PATCH",
            kind.path(namespace, name, "status"),
            params={"fieldManager": naming.FIELD_MANAGER},
            body=body,
            content_type="application/merge-patch+json",
            write="status",
            final=frozenset({409}) if resource_version is not None else frozenset(),
        )
        return None if status == 404 else answer

    async def patch_json(
        self, kind: ResourceKind, namespace: str, name: str, operations: list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        """A JSON patch (RFC 6902) of the object; None if it is gone. A failed `test` is a 422."""
        status, body = await self._request(
            "PATCH",
            kind.path(namespace, name),
            params={"fieldManager": naming.FIELD_MANAGER},
            body=operations,
            content_type="application/json-patch+json",
            write="patch",
        )
        return None if status == 404 else body

    async def delete(self, kind: ResourceKind, namespace: str, name: str, *, uid: str | None = None) -> bool:
        """Delete (dependents in the background); False if it was already gone or replaced."""
        options: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            options["preconditions"] = {"uid": uid}
        try:
            status, _ = await self._request(
                "DELETE", kind.path(namespace, name), body=options, write="delete", final=frozenset({409})
            )
        except Conflict:  # the uid precondition failed: a new object took the name
            return False
        return status != 404


def _parse(raw: bytes) -> Any:
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return {"message": raw.decode(errors="replace")[:500]}
