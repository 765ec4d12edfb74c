"""examples/argocd/ carries the chart's health check verbatim, under the key Argo CD reads."""

from __future__ import annotations

from typing import Any

import yaml

from tests.argocd.lua_health import HEALTH_LUA, argo_health
from tests.conftest import ROOT

ARGOCD = ROOT / "examples" / "argocd"
# Argo CD's key for a custom health check: resource.customizations.health.<group>_<kind>.
KEY = "resource.customizations.health.modelship.io_ModelDeployment"


def _config_map() -> dict[str, Any]:
    return dict(yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text()))


def test_the_argocd_cm_snippet_embeds_the_charts_script_verbatim() -> None:
    cm = _config_map()
    assert (cm["kind"], cm["metadata"]["name"], cm["metadata"]["namespace"]) == (
        "ConfigMap",
        "argocd-cm",
        "argocd",
    )
    assert cm["data"][KEY] == HEALTH_LUA.read_text(), (
        "examples/argocd/argocd-cm.yaml is stale: copy helm/modelship/files/argocd-health.lua into it"
    )


def test_the_embedded_script_runs_in_lua_5_1() -> None:
    obj = {"metadata": {"generation": 2}, "status": {"observedGeneration": 1}}
    assert argo_health(obj, _config_map()["data"][KEY])["status"] == "Progressing"


def test_the_application_syncs_server_side_into_its_own_namespace() -> None:
    app = yaml.safe_load((ARGOCD / "application.yaml").read_text())
    assert app["kind"] == "Application"
    assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"]
    assert app["spec"]["source"]["path"] == "examples"
