"""Runs the chart's Argo CD health check the way Argo CD does: Lua 5.1 with the object in `obj`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lupa.lua51 as lua51

HEALTH_LUA = Path(__file__).resolve().parents[2] / "helm" / "modelship" / "files" / "argocd-health.lua"
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def _to_lua(runtime: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return runtime.table_from({k: _to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        # Lua arrays are 1-based tables, as gopher-lua builds them from JSON arrays.
        return runtime.table_from({i + 1: _to_lua(runtime, v) for i, v in enumerate(value)})
    return value


def argo_health(obj: dict[str, Any], script: str | None = None) -> dict[str, str]:
    """Return Argo CD's view of `obj`: {"status": ..., "message": ...}."""
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = _to_lua(runtime, obj)
    chunk = runtime.execute(script if script is not None else HEALTH_LUA.read_text())
    result = {"status": chunk["status"], "message": chunk["message"]}
    assert result["status"] in ARGO_STATUSES, result
    return result
