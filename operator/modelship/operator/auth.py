"""Where the operator's credentials come from: one function for Kopf and for our client.

An explicit KUBECONFIG wins (a developer's machine, the tests); in a pod, the service
account; otherwise ~/.kube/config. Kopf's own minimal loaders read them, so the operator
needs neither the `kubernetes` client library nor pykube.
"""

from __future__ import annotations

import os
from typing import Any

import kopf


def login(settings: kopf.OperatorSettings | None = None, **_: Any) -> kopf.ConnectionInfo | None:
    settings = settings if settings is not None else kopf.OperatorSettings()
    if os.environ.get("KUBECONFIG"):
        return kopf.login_with_kubeconfig(settings=settings)
    return kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
