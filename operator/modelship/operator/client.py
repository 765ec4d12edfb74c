"""A small async Kubernetes API client on aiohttp: get, list, apply, replace, patch status, delete.

Kopf watches; this client writes. It takes its credentials from the same login function as
Kopf (see `auth`), so both use one source, and logs in again when the API says 401 (service
account tokens rotate). Conflicts, throttling, server errors and lost connections are retried
with backoff; what is still failing after that raises `ApiError` with `transient=True`, for
the caller to retry later. It counts every write it sends, so a benchmark or a test can prove
that an idle resync writes nothing.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf
from modelship.operator import naming

logger = logging.getLogger(__name__)

_TRANSIENT_STATUSES = frozenset({409, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class ResourceKind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        parts = [root]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{namespace}")
        parts.append(self.plural)
        if name:
            parts.append(name)
        if subresource:
            parts.append(subresource)
        return "/".join(parts)


MODEL_DEPLOYMENTS = ResourceKind(naming.GROUP, naming.VERSION, naming.PLURAL, naming.KIND)
DEPLOYMENTS = ResourceKind("apps", "v1", "deployments", "Deployment")
SERVICES = ResourceKind("", "v1", "services", "Service")
AUTOSCALERS = ResourceKind("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler")
PODS = ResourceKind("", "v1", "pods", "Pod")
CLUSTER_PEERINGS = ResourceKind(
    "kopf.dev", "v1", "clusterkopfpeerings", "ClusterKopfPeering", namespaced=False
)
PEERINGS = ResourceKind("kopf.dev", "v1", "kopfpeerings", "KopfPeering")
HTTPROUTES = ResourceKind("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute")

KINDS = {
    k.kind: k
    for k in (
        MODEL_DEPLOYMENTS,
        DEPLOYMENTS,
        SERVICES,
        AUTOSCALERS,
        PODS,
        CLUSTER_PEERINGS,
        PEERINGS,
        HTTPROUTES,
    )
}


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else f"{reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def transient(self) -> bool:
        """Worth retrying later without any change from the user (an outage, throttling)."""
        return self.status == 0 or self.status in _TRANSIENT_STATUSES


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
            raise ApiError(0, "LoginFailed", "no kubeconfig and no service account token found")
        assert isinstance(info, kopf.ConnectionInfo)
        if self._session is not None:
            await self._session.close()
        self._server = info.server.rstrip("/")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._connections, ssl=info.as_ssl_context()),
            headers={**info.as_http_headers(), "User-Agent": "modelship-operator"},
            timeout=self._timeout,
            trust_env=info.trust_env,
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
        """Send one request, retrying what is transient; return (status, parsed body)."""
        relogged = False
        last: ApiError | None = None
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
                    retry_after = response.headers.get("Retry-After")
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                last = ApiError(0, "Unavailable", f"{method} {path}: {exc!r}")
            else:
                parsed = _parse(raw)
                if status == 401 and not relogged:
                    relogged = True
                    async with self._relogin_lock:
                        await self._connect()
                    continue
                if status < 400 or status == 404:
                    return status, parsed
                error = _error(status, parsed)
                if not error.transient or status in final:
                    raise error
                last = error
                if retry_after and retry_after.isdigit():
                    await asyncio.sleep(min(float(retry_after), 10.0))
                    continue
            if attempt + 1 < self._attempts:
                delay = self._backoff * (2**attempt)
                await asyncio.sleep(delay * (0.5 + random.random()))
        assert last is not None
        raise last

    async def get(self, kind: ResourceKind, namespace: str | None, name: str) -> dict[str, Any] | None:
        status, body = await self._request("GET", kind.path(namespace, name))
        return None if status == 404 else body

    async def list_objects(
        self, kind: ResourceKind, namespace: str | None = None, *, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        return [
            item async for page in self.pages(kind, namespace, label_selector=label_selector) for item in page
        ]

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
            token = (body.get("metadata") or {}).get("continue")
            if not token:
                return
            params["continue"] = token

    async def apply(self, manifest: Mapping[str, Any], *, force: bool = True) -> dict[str, Any]:
        """Server-side apply under our field manager: a no-op when nothing changes."""
        kind = KINDS[manifest["kind"]]
        meta = manifest["metadata"]
        params = {"fieldManager": naming.FIELD_MANAGER, "force": "true" if force else "false"}
        status, body = await self._request(
            "PATCH",
            kind.path(meta.get("namespace"), meta["name"]),
            params=params,
            body=manifest,
            content_type="application/apply-patch+yaml",
            write="apply",
        )
        if status == 404:
            raise ApiError(404, "NotFound", f"{kind.kind} {meta['name']}: the API does not serve it")
        return dict(body)

    async def replace(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """PUT a whole object we do not own (a user's HTTPRoute). Its metadata.resourceVersion
        turns a concurrent change into a 409, raised at once rather than retried with the same
        stale body: transient, for the caller to read the object again and retry."""
        kind = KINDS[manifest["kind"]]
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
            raise ApiError(404, "NotFound", f"{kind.kind} {meta['name']} is gone")
        return dict(body)

    async def patch_status(
        self, kind: ResourceKind, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """A JSON merge patch on the status subresource; None if the object is gone."""
        status, body = await self._request(
            "PATCH",
            kind.path(namespace, name, "status"),
            params={"fieldManager": naming.FIELD_MANAGER},
            body={"status": patch},
            content_type="application/merge-patch+json",
            write="status",
        )
        return None if status == 404 else body

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
        except ApiError as exc:
            if exc.status == 409:  # the uid precondition failed: a new object took the name
                return False
            raise
        return status != 404


def _parse(raw: bytes) -> Any:
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return {"message": raw.decode(errors="replace")[:500]}


def _error(status: int, body: Any) -> ApiError:
    if isinstance(body, dict):
        return ApiError(status, str(body.get("reason") or "Error"), str(body.get("message") or body))
    return ApiError(status, "Error", str(body))
