"""The tests and benchmarks talk only to this machine and its local cluster: never through a proxy.

`drop_proxy_variables` removes HTTP_PROXY, HTTPS_PROXY, ALL_PROXY (any case, any scheme) from the
environment; tests/conftest.py calls it when pytest loads it, bench/ when a benchmark starts, before
any client is made. One place covers every client: httpx (module-level `httpx.get` included), urllib,
the kubernetes client, aiohttp with trust_env, and what subprocesses start (the server, kubectl, helm,
wrk, hack/ scripts) inherit the same environment. None of them needs the network: the local cluster's
`up` runs from the binaries `hack/cluster build` made, and no test builds an image.

`BOGUS_PROXY` is a proxy that is never there (the discard port of loopback, closed): a client that used
it would fail at once; the tests that set it prove that a client goes direct.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

BOGUS_PROXY = "http://127.0.0.1:9"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def drop_proxy_variables(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Remove every `<scheme>_proxy` variable (NO_PROXY aside, harmless without them); their names."""
    names = [name for name in environ if name.lower().endswith("_proxy") and name.lower() != "no_proxy"]
    for name in names:
        del environ[name]
    return names
