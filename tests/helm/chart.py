"""Rendering the Helm chart with the pinned helm binary, for the tests."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT

CHART = ROOT / "helm" / "modelship"


def helm(bin_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(bin_dir / "helm"), *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed: {result.stderr}")
    return result


def set_args(values: dict[str, str]) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def render_text(
    bin_dir: Path,
    *,
    release: str = "ms",
    namespace: str = "modelship",
    values: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
) -> str:
    args = ["template", release, str(CHART), "--namespace", namespace, *set_args(values or {}), *extra]
    return helm(bin_dir, *args).stdout


def render(bin_dir: Path, **kwargs: Any) -> list[dict[str, Any]]:
    """The chart's objects (templates only, no CRDs unless asked with extra=('--include-crds',))."""
    return [doc for doc in yaml.safe_load_all(render_text(bin_dir, **kwargs)) if doc]


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]
