"""The operator's client against the real API server. Canary weights: the Gateway API's own
HTTPRoute schema (its CRDs are installed by `hack/cluster up`), written with the operator's client,
and the per-revision Service applied server-side. No Gateway is needed: a route is stored and
validated without one. Status: a write computed from a version that has changed since is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes import client
from modelship.operator import auth, drift, kinds, spec
from modelship.operator import client as kube
from modelship.operator.rollout import traffic

from tests.operator.models import Models, model_spec
from tests.operator.routes import route_weights

pytestmark = pytest.mark.cluster

STABLE, CANARY = "iris-aaaaaaaaaa", "iris-bbbbbbbbbb"
MODELS_RULE = {
    "matches": [{"path": {"type": "PathPrefix", "value": "/v2/models/iris"}}],
    "backendRefs": [{"name": "iris", "port": 80}],
}
WEB_RULE = {
    "matches": [{"path": {"type": "PathPrefix", "value": "/web"}}],
    "backendRefs": [{"name": "web", "port": 8080}],
}


@pytest.fixture
async def api(kubeconfig: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[kube.KubeClient]:
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    api = kube.KubeClient(auth.login)
    yield api
    await api.close()


def create_route(k8s_api: client.ApiClient, namespace: str, *rules: dict[str, Any]) -> None:
    body = {
        "apiVersion": kinds.HTTPROUTES.api_version,
        "kind": kinds.HTTPROUTES.kind,
        "metadata": {"name": "models"},
        "spec": {"rules": list(rules)},
    }
    client.CustomObjectsApi(k8s_api).create_namespaced_custom_object(
        kinds.HTTPROUTES.group, kinds.HTTPROUTES.version, namespace, kinds.HTTPROUTES.plural, body
    )


def with_rules(route: dict[str, Any], rules: list[Any] | None) -> dict[str, Any]:
    assert rules is not None, "the weights should have changed"
    return {**route, "spec": {**route["spec"], "rules": rules}}


async def read_route(api: kube.KubeClient, namespace: str) -> dict[str, Any]:
    route = await api.get(kinds.HTTPROUTES, namespace, "models")
    assert route is not None
    return route


async def test_weights_set_with_replace_read_back_from_the_api_server(
    k8s_api: client.ApiClient, namespace: str, api: kube.KubeClient
) -> None:
    create_route(k8s_api, namespace, MODELS_RULE, WEB_RULE)
    route = await read_route(api, namespace)
    web_before = route["spec"]["rules"][1]

    await api.replace(with_rules(route, traffic.route_rules(route, "iris", set(), STABLE, CANARY, 10)))
    route = await read_route(api, namespace)
    assert route_weights(route) == {STABLE: 90, CANARY: 10, "web": 1}
    assert route["spec"]["rules"][0]["matches"] == MODELS_RULE["matches"]
    assert route["spec"]["rules"][1] == web_before
    # The schema filled in defaults on our refs; they still read as set, so an idle resync writes nothing.
    assert traffic.route_rules(route, "iris", {STABLE, CANARY}, STABLE, CANARY, 10) is None

    await api.replace(
        with_rules(route, traffic.route_rules(route, "iris", {STABLE, CANARY}, STABLE, None, 0))
    )
    route = await read_route(api, namespace)
    assert route_weights(route) == {STABLE: 100, "web": 1}
    assert api.writes["replace"] == 2


async def test_a_shadow_steps_mirror_is_accepted_by_the_schema_and_reads_back_as_set(
    k8s_api: client.ApiClient, namespace: str, api: kube.KubeClient
) -> None:
    create_route(k8s_api, namespace, MODELS_RULE, WEB_RULE)
    route = await read_route(api, namespace)
    ours = {STABLE, CANARY}

    await api.replace(
        with_rules(route, traffic.route_rules(route, "iris", ours, STABLE, None, 0, (CANARY, 20)))
    )
    route = await read_route(api, namespace)
    [mirror] = route["spec"]["rules"][0]["filters"]
    assert mirror["type"] == "RequestMirror" and mirror["requestMirror"]["percent"] == 20
    assert mirror["requestMirror"]["backendRef"]["name"] == CANARY
    assert route_weights(route) == {STABLE: 100, "web": 1}
    assert "filters" not in route["spec"]["rules"][1]
    # Whatever the schema filled in, the mirror reads as set: an idle resync writes nothing.
    assert traffic.route_rules(route, "iris", ours, STABLE, None, 0, (CANARY, 20)) is None

    # The shadow step ends: the weights move and the mirror goes.
    await api.replace(with_rules(route, traffic.route_rules(route, "iris", ours, STABLE, CANARY, 25)))
    route = await read_route(api, namespace)
    assert not route["spec"]["rules"][0].get("filters")
    assert route_weights(route) == {STABLE: 75, CANARY: 25, "web": 1}


async def test_a_route_changed_since_it_was_read_is_a_transient_conflict_and_not_overwritten(
    k8s_api: client.ApiClient, namespace: str, api: kube.KubeClient
) -> None:
    create_route(k8s_api, namespace, MODELS_RULE)
    route = await read_route(api, namespace)
    client.CustomObjectsApi(k8s_api).patch_namespaced_custom_object(
        kinds.HTTPROUTES.group,
        kinds.HTTPROUTES.version,
        namespace,
        kinds.HTTPROUTES.plural,
        "models",
        {"metadata": {"labels": {"edited-by": "someone-else"}}},
    )

    with pytest.raises(kube.Conflict) as conflict:
        await api.replace(with_rules(route, traffic.route_rules(route, "iris", set(), STABLE, CANARY, 10)))
    assert conflict.value.status == 409
    assert conflict.value.status == 409
    assert api.writes["replace"] == 1, "a stale body is not sent again"
    route = await read_route(api, namespace)
    assert route["metadata"]["labels"] == {"edited-by": "someone-else"}
    assert route_weights(route) == {"iris": 1}


async def test_a_revision_service_is_accepted_by_server_side_apply(
    k8s_api: client.ApiClient, namespace: str, crds: None, api: kube.KubeClient
) -> None:
    md = spec.parse(Models(k8s_api, namespace).create("iris", model_spec()))
    manifest = traffic.revision_service(md, "aaaaaaaaaa")

    applied = await api.apply(manifest)
    assert applied["metadata"]["name"] == STABLE
    assert applied["metadata"]["labels"] == manifest["metadata"]["labels"]
    assert applied["metadata"]["annotations"] == manifest["metadata"]["annotations"]
    assert [owner["uid"] for owner in applied["metadata"]["ownerReferences"]] == [md.uid]
    assert applied["spec"]["selector"] == manifest["spec"]["selector"]
    assert applied["spec"]["ports"][0]["port"] == 80
    assert applied["spec"]["ports"][0]["targetPort"] == "http"

    # What the API server stored holds the manifest, defaults and all: an idle resync, which applies
    # only on a difference, leaves it alone. (Not a second apply and its resourceVersion: the
    # package's operator may be reconciling this ModelDeployment, and it removes a revision
    # Service its spec does not ask for.)
    assert drift.difference(manifest, applied) is drift.Difference.NONE


async def test_a_status_patch_for_a_version_that_changed_since_is_a_conflict_and_not_applied(
    k8s_api: client.ApiClient, namespace: str, crds: None, api: kube.KubeClient
) -> None:
    models = Models(k8s_api, namespace)
    read_version = models.create("iris", model_spec())["metadata"]["resourceVersion"]
    models.patch("iris", {"metadata": {"labels": {"edited-by": "someone-else"}}})

    with pytest.raises(kube.Conflict):
        await api.patch_status(
            kinds.MODEL_DEPLOYMENTS,
            namespace,
            "iris",
            {"observedGeneration": 999},
            resource_version=read_version,
        )
    assert api.writes["status"] == 1, "a patch for a stale version is not sent again"
    live = await api.get(kinds.MODEL_DEPLOYMENTS, namespace, "iris")
    assert live is not None
    assert (live.get("status") or {}).get("observedGeneration") != 999
