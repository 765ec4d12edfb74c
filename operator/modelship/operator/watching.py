"""Which namespaces the operator serves, and the startup LIST that fills its cache.

`kopf run` takes `--all-namespaces` or `--namespace` patterns (globs, `!` to exclude,
comma-separated); the startup LIST must cover exactly what Kopf will watch, or objects it
will never hear about would hold the cache's sync back.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from modelship.operator import bodies, kinds
from modelship.operator import client as kube
from modelship.operator.cache import ObjectCache

logger = logging.getLogger(__name__)


def namespace_matches(name: str, pattern: str) -> bool:
    """Kopf's pattern rules: comma-separated globs, left to right; `!glob` excludes; a leading
    exclusion implies a catch-all before it; later inclusions only bring back what the first
    inclusion matched and an exclusion removed."""
    globs = [glob.strip() for glob in pattern.split(",") if glob.strip()]
    if not globs:
        return False
    if globs[0].startswith("!"):
        initially = True
    else:
        initially = fnmatch.fnmatchcase(name, globs[0])
        globs = globs[1:]
    served = initially
    for glob in globs:
        if glob.startswith("!"):
            if fnmatch.fnmatchcase(name, glob[1:]):
                served = False
        elif initially and fnmatch.fnmatchcase(name, glob):
            served = True
    return served


def is_literal(pattern: str) -> bool:
    return not any(c in pattern for c in "*?![],")


@dataclass(frozen=True)
class Served:
    """None for the whole cluster; else literal namespaces, or patterns to filter a cluster-wide LIST;
    minus what the `ignored` pattern matches (MODELSHIP_IGNORE_NAMESPACES), whose events the handlers drop."""

    namespaces: tuple[str, ...] | None
    patterns: tuple[str, ...] = ()
    ignored: str | None = None

    @classmethod
    def from_options(cls, clusterwide: bool, patterns: Sequence[str], ignored: str | None = None) -> Served:
        if clusterwide or not patterns:
            return cls(None, ignored=ignored)
        if all(is_literal(p) for p in patterns):
            return cls(tuple(patterns), ignored=ignored)
        return cls(None, tuple(patterns), ignored)

    def includes(self, namespace: str) -> bool:
        if self.ignored and namespace_matches(namespace, self.ignored):
            return False
        if self.patterns:
            return any(namespace_matches(namespace, pattern) for pattern in self.patterns)
        return self.namespaces is None or namespace in self.namespaces


async def prefill(client: kube.KubeClient, cache: ObjectCache, served: Served, label_selector: str) -> int:
    """LIST every child kind the operator watches into the cache; returns how many objects."""
    total = 0
    for child in kinds.CHILDREN:
        for namespace in served.namespaces or (None,):
            async for page in client.pages(child.resource, namespace, label_selector=label_selector):
                items = [item for item in page if served.includes(bodies.namespace_of(item))]
                for item in items:
                    item.setdefault("kind", child.kind)
                total += cache.prefill(child.kind, items)
    return total
