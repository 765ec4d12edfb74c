"""Exact canary weights on a user's HTTPRoute, and the per-revision Services they point at."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from modelship.operator import manifests, naming, spec
from modelship.operator.rollout import traffic

from tests.operator.factories import md_body
from tests.operator.routes import route_weights

STABLE, CANARY, OLD = "iris-aaaaaaaaaa", "iris-bbbbbbbbbb", "iris-0000000000"
REVISION_SERVICES = {STABLE, CANARY, OLD}


def route(*rules: dict[str, Any], namespace: str = "ml") -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "models", "namespace": namespace, "resourceVersion": "7"},
        "spec": {"parentRefs": [{"name": "gateway"}], "rules": list(rules)},
    }


def to(*names: str, **fields: Any) -> dict[str, Any]:
    """A rule sending traffic to the named Services on port 80."""
    return {"backendRefs": [{"name": name, "port": 80, **fields} for name in names]}


def rules_for(r: dict[str, Any], canary: str | None = CANARY, weight: int = 10) -> list[Any] | None:
    return traffic.route_rules(r, "iris", REVISION_SERVICES, STABLE, canary, weight)


def with_rules(r: dict[str, Any], rules: list[Any] | None) -> dict[str, Any]:
    if rules is None:
        return r
    return {**r, "spec": {**r["spec"], "rules": rules}}


# ---------------------------------------------------------------- the per-revision Service


def test_a_revision_service_selects_only_that_revisions_pods_and_is_named_like_its_deployment() -> None:
    md = spec.parse(md_body())
    service = traffic.revision_service(md, "aaaaaaaaaa")
    assert service["metadata"]["name"] == naming.deployment_name("iris", "aaaaaaaaaa") == STABLE
    assert service["metadata"]["namespace"] == "ml"
    assert service["spec"]["selector"] == {
        naming.LABEL_MODEL_DEPLOYMENT: "iris",
        naming.LABEL_REVISION: "aaaaaaaaaa",
    }
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert service["metadata"]["labels"] == {
        **naming.common_labels("iris"),
        naming.LABEL_REVISION: "aaaaaaaaaa",
    }
    assert service["metadata"]["ownerReferences"] == [md.owner_reference()]


def test_a_revision_service_carries_the_hash_of_what_was_applied_like_every_child() -> None:
    md = spec.parse(md_body())
    first, second = traffic.revision_service(md, "aaaaaaaaaa"), traffic.revision_service(md, "aaaaaaaaaa")
    assert first == second
    digest = first["metadata"]["annotations"][naming.ANNOTATION_APPLIED]
    unstamped = copy.deepcopy(first)
    del unstamped["metadata"]["annotations"]
    assert digest == manifests.canonical_hash(unstamped, 16)
    other = traffic.revision_service(md, "bbbbbbbbbb")["metadata"]["annotations"][naming.ANNOTATION_APPLIED]
    assert other != digest


def test_the_pods_of_a_revision_match_its_service_and_no_other_revisions_service() -> None:
    md = spec.parse(md_body())
    revision = manifests.desired_revision(md, server_image="modelship/server:test")
    pod_labels = revision.template["metadata"]["labels"]
    own = traffic.revision_service(md, revision.revision)["spec"]["selector"]
    other = traffic.revision_service(md, "0000000000")["spec"]["selector"]
    assert own.items() <= pod_labels.items()
    assert not other.items() <= pod_labels.items()


# ---------------------------------------------------------------- the weights


def test_the_backend_refs_split_100_between_stable_and_canary() -> None:
    assert traffic.backend_refs(STABLE, CANARY, 10) == [
        {"name": STABLE, "port": 80, "weight": 90},
        {"name": CANARY, "port": 80, "weight": 10},
    ]


def test_without_a_canary_the_stable_revision_gets_everything() -> None:
    assert traffic.backend_refs(STABLE, None, 0) == [{"name": STABLE, "port": 80, "weight": 100}]
    assert traffic.backend_refs(STABLE, STABLE, 30) == [{"name": STABLE, "port": 80, "weight": 100}]


def test_a_full_canary_keeps_the_stable_backend_at_weight_zero() -> None:
    assert [ref["weight"] for ref in traffic.backend_refs(STABLE, CANARY, 100)] == [0, 100]


@pytest.mark.parametrize("weight", [-1, 101])
def test_a_weight_outside_0_to_100_is_a_bug(weight: int) -> None:
    with pytest.raises(ValueError, match="percentage"):
        traffic.backend_refs(STABLE, CANARY, weight)


# ---------------------------------------------------------------- the route's rules


def test_a_rule_to_the_main_service_is_split_between_the_revisions() -> None:
    matches = [{"path": {"type": "PathPrefix", "value": "/v2/models/iris"}}]
    filters = [
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x", "value": "1"}]}}
    ]
    r = route({"matches": matches, "filters": filters, **to("iris")})
    assert rules_for(r) == [
        {
            "matches": matches,
            "filters": filters,
            "backendRefs": [
                {"name": STABLE, "port": 80, "weight": 90},
                {"name": CANARY, "port": 80, "weight": 10},
            ],
        }
    ]


def test_rules_to_other_services_are_left_alone() -> None:
    foreign = [
        to("other"),
        to("iris", namespace="elsewhere"),  # a Service of the same name in another namespace
        {"backendRefs": [{"group": "example.com", "kind": "Bucket", "name": "iris"}]},
        {"matches": [{"path": {"type": "Exact", "value": "/healthz"}}]},  # no backends at all
    ]
    r = route(*copy.deepcopy(foreign), to(STABLE))
    new = rules_for(r)
    assert new is not None
    assert new[:4] == foreign
    assert new[4]["backendRefs"] == traffic.backend_refs(STABLE, CANARY, 10)


def test_every_rule_of_ours_gets_the_same_weights_old_revisions_included() -> None:
    r = route(to(OLD), to("iris"), to(STABLE, CANARY, weight=50))
    new = rules_for(r, weight=25)
    assert new is not None
    assert all(rule["backendRefs"] == traffic.backend_refs(STABLE, CANARY, 25) for rule in new)


def test_a_rule_sharing_traffic_with_another_service_becomes_ours_alone() -> None:
    # The design: in a rule that refers to this ModelDeployment, the backends are exactly ours.
    new = rules_for(route(to("iris", "other")))
    assert new is not None
    assert [ref["name"] for ref in new[0]["backendRefs"]] == [STABLE, CANARY]


def test_an_abort_sends_everything_back_to_stable() -> None:
    r = route(to(STABLE, CANARY, weight=50))
    new = rules_for(r, canary=None, weight=0)
    assert new is not None
    assert new[0]["backendRefs"] == [{"name": STABLE, "port": 80, "weight": 100}]


def test_weights_already_set_change_nothing() -> None:
    r = route(to("other"), {"backendRefs": traffic.backend_refs(STABLE, CANARY, 10)})
    assert rules_for(r) is None


def test_what_the_api_server_returns_for_our_refs_reads_as_unchanged() -> None:
    # The HTTPRoute schema fills in group and kind; a namespace may be spelled out; order is free.
    returned = [
        {"group": "", "kind": "Service", "name": CANARY, "namespace": "ml", "port": 80, "weight": 10},
        {"group": "", "kind": "Service", "name": STABLE, "port": 80, "weight": 90},
    ]
    assert rules_for(route({"backendRefs": returned})) is None


def test_a_different_port_or_an_extra_backend_filter_is_rewritten() -> None:
    wanted = traffic.backend_refs(STABLE, CANARY, 10)
    wrong_port = [{**wanted[0], "port": 8080}, wanted[1]]
    with_filter = [{**wanted[0], "filters": [{"type": "RequestMirror"}]}, wanted[1]]
    for refs in (wrong_port, with_filter):
        new = rules_for(route({"backendRefs": refs}))
        assert new is not None and new[0]["backendRefs"] == wanted


def test_a_route_that_never_sends_traffic_here_is_not_touched() -> None:
    assert rules_for(route(to("other"))) is None
    assert rules_for(route()) is None
    assert traffic.route_rules({"metadata": {"namespace": "ml"}}, "iris", set(), STABLE, CANARY, 10) is None


def test_the_route_itself_is_never_modified() -> None:
    r = route(to("iris"), to("other"))
    before = copy.deepcopy(r)
    new = rules_for(r)
    assert r == before
    assert new is not None
    new[1]["backendRefs"].append({"name": "x"})
    assert r == before


# ---------------------------------------------------------------- reading the weights back


def test_the_weights_are_read_back_per_service() -> None:
    r = route(to(STABLE, weight=70), to(CANARY, weight=30), to("other"))
    assert route_weights(r) == {STABLE: 70, CANARY: 30, "other": 1}


def test_only_services_of_the_routes_namespace_have_a_weight_and_the_first_rule_counts() -> None:
    r = route(
        {"backendRefs": [{"group": "example.com", "kind": "Bucket", "name": "b", "weight": 5}]},
        to("far", namespace="elsewhere", weight=5),
        to(STABLE, weight=80),
        to(STABLE, weight=20),
        to(CANARY, weight=None),
    )
    assert route_weights(r) == {STABLE: 80, CANARY: 1}
    assert route_weights({}) == {}


# ---------------------------------------------------------------- a shadow step's RequestMirror

USERS_FILTER = {
    "type": "RequestHeaderModifier",
    "requestHeaderModifier": {"set": [{"name": "x", "value": "1"}]},
}


def mirrored(r: dict[str, Any], percent: int | None = 20) -> list[Any] | None:
    mirror = (CANARY, percent) if percent is not None else None
    return traffic.route_rules(r, "iris", REVISION_SERVICES, STABLE, None, 0, mirror)


def test_a_shadow_step_mirrors_a_share_of_our_rules_to_the_canary_and_gives_users_the_stable() -> None:
    r = route({**to("iris"), "filters": [USERS_FILTER]}, to("other"))
    new = mirrored(r)
    assert new is not None
    assert new[0]["backendRefs"] == [{"name": STABLE, "port": 80, "weight": 100}]
    assert new[0]["filters"] == [
        USERS_FILTER,
        {
            "type": "RequestMirror",
            "requestMirror": {"backendRef": {"name": CANARY, "port": 80}, "percent": 20},
        },
    ]
    assert new[1] == to("other"), "a rule of another Service is not ours to mirror"


def test_a_mirror_already_set_changes_nothing_even_with_the_schemas_defaults_filled_in() -> None:
    once = with_rules(route(to("iris")), mirrored(route(to("iris"))))
    assert mirrored(once) is None
    filled = copy.deepcopy(once)
    ref = filled["spec"]["rules"][0]["filters"][0]["requestMirror"]["backendRef"]
    ref.update(group="", kind="Service", namespace="ml")
    assert mirrored(filled) is None


def test_a_new_share_replaces_the_mirror_and_the_end_of_the_shadow_removes_it_alone() -> None:
    once = with_rules(
        route({**to("iris"), "filters": [USERS_FILTER]}),
        mirrored(route({**to("iris"), "filters": [USERS_FILTER]})),
    )
    more = mirrored(once, 100)
    assert more is not None and more[0]["filters"][-1]["requestMirror"]["percent"] == 100
    ended = mirrored(once, None)
    assert ended is not None and ended[0]["filters"] == [USERS_FILTER]
    bare = with_rules(route(to("iris")), mirrored(route(to("iris"))))
    cleared = mirrored(bare, None)
    assert cleared is not None and "filters" not in cleared[0]


def test_a_users_mirror_to_another_service_is_left_alone() -> None:
    theirs = {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "audit", "port": 80}}}
    r = route({**to("iris"), "filters": [theirs]})
    new = mirrored(r)
    assert new is not None and new[0]["filters"][0] == theirs and len(new[0]["filters"]) == 2
    assert (
        mirrored(with_rules(r, traffic.route_rules(r, "iris", REVISION_SERVICES, STABLE, None, 0)), None)
        is None
    )


def test_a_mirrored_share_outside_1_to_100_is_a_bug() -> None:
    with pytest.raises(ValueError, match="percentage from 1 to 100"):
        traffic.mirror_filter(CANARY, 0)


# ---------------------------------------------------------------- invariants

NAMESPACE = "ml"
OURS = {"iris", *REVISION_SERVICES}

refs = st.fixed_dictionaries(
    {"name": st.sampled_from(["iris", STABLE, CANARY, OLD, "other", "iris-web"])},
    optional={
        "port": st.sampled_from([80, 8080]),
        "weight": st.none() | st.integers(0, 1000),
        "kind": st.sampled_from(["Service", "Bucket"]),
        "group": st.sampled_from(["", "example.com"]),
        "namespace": st.sampled_from([NAMESPACE, "elsewhere"]),
    },
)
rules = st.fixed_dictionaries(
    {},
    optional={
        "backendRefs": st.lists(refs, max_size=4),
        "matches": st.just([{"path": {"type": "PathPrefix", "value": "/v2"}}]),
    },
)
routes = st.lists(rules, max_size=5).map(lambda rs: route(*rs, namespace=NAMESPACE))
canaries = st.none() | st.sampled_from([CANARY, OLD, STABLE])


def refers_to_us(rule: dict[str, Any]) -> bool:
    return any(
        ref["name"] in OURS
        and ref.get("kind", "Service") == "Service"
        and ref.get("group", "") == ""
        and ref.get("namespace", NAMESPACE) == NAMESPACE
        for ref in rule.get("backendRefs") or []
    )


@given(routes, canaries, st.integers(0, 100), st.none() | st.integers(1, 100))
def test_our_rules_get_weights_summing_to_100_and_foreign_rules_stay_as_they_were(
    r: dict[str, Any], canary: str | None, weight: int, percent: int | None
) -> None:
    before = copy.deepcopy(r)
    mirror = (CANARY, percent) if percent is not None else None
    new = traffic.route_rules(r, "iris", REVISION_SERVICES, STABLE, canary, weight, mirror)
    assert r == before
    after = new if new is not None else before["spec"]["rules"]
    assert len(after) == len(before["spec"]["rules"])
    for old_rule, new_rule in zip(before["spec"]["rules"], after, strict=True):
        if not refers_to_us(old_rule):
            assert new_rule == old_rule
            continue
        assert {k: v for k, v in new_rule.items() if k not in ("backendRefs", "filters")} == {
            k: v for k, v in old_rule.items() if k not in ("backendRefs", "filters")
        }
        # Our rules mirror exactly what the step asks for.
        assert new_rule.get("filters", []) == ([traffic.mirror_filter(CANARY, percent)] if percent else [])
        weights = {ref["name"]: ref.get("weight", 1) for ref in new_rule["backendRefs"]}
        assert sum(weights.values()) == 100
        if canary is not None and canary != STABLE:
            assert weights == {STABLE: 100 - weight, canary: weight}
        else:
            assert weights == {STABLE: 100}


@given(routes, canaries, st.integers(0, 100))
def test_setting_the_weights_twice_writes_once_and_reads_back_as_set(
    r: dict[str, Any], canary: str | None, weight: int
) -> None:
    once = with_rules(r, traffic.route_rules(r, "iris", REVISION_SERVICES, STABLE, canary, weight))
    assert traffic.route_rules(once, "iris", REVISION_SERVICES, STABLE, canary, weight) is None
    if any(refers_to_us(rule) for rule in r["spec"]["rules"]):
        split = canary is not None and canary != STABLE
        weights = route_weights(once)
        assert weights[STABLE] == (100 - weight if split else 100)
        if split:
            assert canary is not None and weights[canary] == weight
