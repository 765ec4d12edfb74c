"""Which proxy the model fetcher uses: the environment's for remote hosts, none for local and cluster ones.

The rules are pure (`proxies.proxy_for`); the downloads run against real servers on 127.0.0.1 with a
proxy in the environment that is never there, so a request sent through it would fail.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from modelship.server import fetch, proxies
from modelship.server.fetch import cache_path, fetch_model

from tests import loopback
from tests.no_proxy import BOGUS_PROXY, PROXY_VARIABLES
from tests.server.conftest import ModelHost, StartServer

DATA = b"\x08\x07model bytes" * 100
SHA = hashlib.sha256(DATA).hexdigest()
ENV = {"HTTP_PROXY": "http://proxy.corp:3128", "HTTPS_PROXY": "http://sproxy.corp:3128"}


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/m.onnx",
        "http://127.9.9.9/m.onnx",
        "http://localhost:8080/m.onnx",
        "https://LOCALHOST/m.onnx",
        "http://[::1]:8080/m.onnx",
        "http://10.96.0.12/m.onnx",  # a ClusterIP
        "http://10.244.3.7:8080/m.onnx",  # a pod IP
        "http://10.245.0.5/m.onnx",  # hack/cluster's real node's pods
        "http://172.20.1.1/m.onnx",
        "http://192.168.1.2/m.onnx",
        "http://169.254.169.254/m.onnx",
        "http://[fd00::1]/m.onnx",
        "http://[::ffff:10.0.0.1]/m.onnx",
        "http://models.modelship-store.svc.cluster.local/iris/1/model.onnx",
        "http://models.modelship-store.svc.cluster.local./iris/1/model.onnx",
        "https://models.modelship-store.svc/iris/1/model.onnx",
        "http://models.ns.pod.cluster.local/m.onnx",
        "http://models/m.onnx",  # resolved with the pod's search domains
        "http://store.localhost/m.onnx",
    ],
)
def test_local_and_cluster_addresses_go_direct_whatever_the_environment_says(url: str) -> None:
    everything = {**ENV, "ALL_PROXY": "http://all.corp:3128", "http_proxy": "http://lower.corp:3128"}
    assert proxies.proxy_for(url, everything) is None


@pytest.mark.parametrize(
    ("url", "proxy"),
    [
        ("http://models.example.com/m.onnx", "http://proxy.corp:3128"),
        ("https://models.example.com/m.onnx", "http://sproxy.corp:3128"),
        ("https://8.8.8.8/m.onnx", "http://sproxy.corp:3128"),
        ("https://[2001:4860::8888]/m.onnx", "http://sproxy.corp:3128"),
        ("https://models.example.local/m.onnx", "http://sproxy.corp:3128"),  # mDNS, not the cluster's
    ],
)
def test_remote_hosts_use_the_environments_proxy(url: str, proxy: str) -> None:
    assert proxies.proxy_for(url, ENV) == proxy


def test_lower_case_wins_all_proxy_is_the_fallback_and_a_bare_host_is_http() -> None:
    url = "https://models.example.com/m.onnx"
    assert proxies.proxy_for(url, {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:1"}) == (
        "http://lower:1"
    )
    assert proxies.proxy_for(url, {"ALL_PROXY": "socks5://all:1080"}) == "socks5://all:1080"
    assert proxies.proxy_for(url, {"HTTP_PROXY": "http://only-http:1"}) is None
    assert proxies.proxy_for(url, {"https_proxy": "proxy.corp:3128"}) == "http://proxy.corp:3128"
    assert proxies.proxy_for(url, {"https_proxy": "  "}) is None
    assert proxies.proxy_for(url, {}) is None


@pytest.mark.parametrize(
    ("no_proxy", "url", "direct"),
    [
        ("*", "https://models.example.com/m", True),
        ("example.com", "https://models.example.com/m", True),
        ("example.com", "https://example.com/m", True),
        ("example.com", "https://notexample.com/m", False),
        (".example.com", "https://models.example.com/m", True),
        ("*.example.com", "https://models.example.com/m", True),
        (" other.org , Example.COM ", "https://models.example.com/m", True),
        ("example.com:8443", "https://models.example.com:8443/m", True),
        ("example.com:8443", "https://models.example.com/m", False),
        ("example.com:443", "https://models.example.com/m", True),
        ("9.9.9.0/24", "https://9.9.9.9/m", True),
        ("9.9.9.0/24", "https://9.9.10.9/m", False),
        ("8.8.8.8", "https://8.8.8.8/m", True),
        ("2001:4860::/32", "https://[2001:4860::8888]/m", True),
        ("other.org", "https://models.example.com/m", False),
    ],
)
def test_no_proxy_is_read_as_curl_and_go_read_it(no_proxy: str, url: str, direct: bool) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        answer = proxies.proxy_for(url, {**ENV, name: no_proxy})
        assert (answer is None) == direct, (name, no_proxy, url, answer)


def test_a_model_on_loopback_is_fetched_direct_with_a_bogus_proxy_set(
    tmp_path: Path, model_host: ModelHost, bogus_proxy: str
) -> None:
    model_host.files["/m.onnx"] = DATA
    # The proxy is really there for a client that reads the environment: it cannot connect.
    with pytest.raises(httpx.TransportError):
        httpx.get(model_host.url + "/m.onnx")
    assert model_host.hits == {}
    model = fetch_model(model_host.url + "/m.onnx", SHA, str(tmp_path / "cache"), 1 << 20, attempts=1)
    assert model.data == DATA and model_host.hits["/m.onnx"] == 1


@pytest.fixture
def forward_proxy() -> Iterator[tuple[str, list[str]]]:
    """A forward proxy on 127.0.0.1 that answers every request itself with DATA; the URLs it was asked."""
    asked: list[str] = []

    class Handler(loopback.Handler):
        def do_GET(self) -> None:
            asked.append(self.path)  # an absolute URL: the request was sent to a proxy
            self.reply(200, DATA)

    with loopback.serving(Handler) as url:
        yield url, asked


def test_the_fetcher_sends_each_request_where_proxy_for_says(
    tmp_path: Path,
    model_host: ModelHost,
    forward_proxy: tuple[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No remote host is ever asked for: proxy_for is made to name the loopback proxy for one URL.
    proxy, asked = forward_proxy
    via_proxy = model_host.url + "/via-proxy.onnx"
    monkeypatch.setattr(fetch.proxies, "proxy_for", lambda url, environ: proxy if url == via_proxy else None)
    model_host.files["/direct.onnx"] = DATA
    assert fetch_model(model_host.url + "/direct.onnx", SHA, str(tmp_path / "a"), 1 << 20).data == DATA
    assert fetch_model(via_proxy, SHA, str(tmp_path / "b"), 1 << 20).data == DATA
    assert asked == [via_proxy]
    assert model_host.hits == {"/direct.onnx": 1}


def test_the_fetch_mode_of_the_server_downloads_direct_with_a_bogus_proxy_set(
    start_server: StartServer, model_host: ModelHost, tmp_path: Path
) -> None:
    model_host.files["/m.onnx"] = DATA
    env = {
        "MODELSHIP_MODEL_NAME": "m",
        "MODELSHIP_MODEL_URI": model_host.url + "/m.onnx",
        "MODELSHIP_MODEL_SHA256": SHA,
        "MODELSHIP_CACHE_DIR": str(tmp_path / "cache"),
        **dict.fromkeys(PROXY_VARIABLES, BOGUS_PROXY),
        "NO_PROXY": "",
        "no_proxy": "",
    }
    fetching = start_server(env, "fetch", wait=False)
    assert fetching.wait_exit(timeout=60) == 0, fetching.log()
    assert cache_path(tmp_path / "cache", SHA).read_bytes() == DATA
    assert model_host.hits == {"/m.onnx": 1}
