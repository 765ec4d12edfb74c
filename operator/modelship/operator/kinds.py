"""The kinds of object the operator reads and writes, and the one table of its children's kinds.

The cache, the startup LIST, the Kopf watches, the decisions and the reconciler's writes all
read `CHILDREN`: adding a child kind is one row here (and its RBAC in the chart).
"""

from __future__ import annotations

from dataclasses import dataclass

from modelship.operator import naming


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

    @property
    def selector(self) -> tuple[str, str] | tuple[str, str, str]:
        """Kopf's positional resource selector: (group, version, plural), or ("v1", plural) for
        the core group (an empty group would match every group's plural)."""
        return (self.group, self.version, self.plural) if self.group else (self.version, self.plural)

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


@dataclass(frozen=True)
class ChildKind:
    resource: ResourceKind
    attribute: str  # the field of `children.Children` that holds them

    @property
    def kind(self) -> str:
        return self.resource.kind


# The children of a ModelDeployment, labelled by the operator and watched by it. Pods are
# read (their failures are the status); of a pod, only its mirror annotation is ever written.
CHILDREN: tuple[ChildKind, ...] = (
    ChildKind(DEPLOYMENTS, "deployments"),
    ChildKind(SERVICES, "services"),
    ChildKind(AUTOSCALERS, "autoscalers"),
    ChildKind(PODS, "pods"),
)
CHILD_KINDS: tuple[str, ...] = tuple(child.kind for child in CHILDREN)
ATTRIBUTE_OF: dict[str, str] = {child.kind: child.attribute for child in CHILDREN}

BY_KIND = {
    k.kind: k
    for k in (MODEL_DEPLOYMENTS, *(c.resource for c in CHILDREN), CLUSTER_PEERINGS, PEERINGS, HTTPROUTES)
}
