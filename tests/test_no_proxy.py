"""Nothing the tests, benchmarks and hack/ scripts send goes through a proxy, whatever the environment says.

Each check runs against a server on 127.0.0.1 with HTTP(S)_PROXY and ALL_PROXY (both cases) naming a
proxy that is never there, and no NO_PROXY: a request sent through it would fail at once. The
control cases show that a client reading the environment would indeed have failed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests import loopback
from tests.conftest import ROOT
from tests.no_proxy import BOGUS_PROXY, PROXY_VARIABLES, drop_proxy_variables


def test_every_proxy_variable_is_dropped_and_no_proxy_kept() -> None:
    environ = {
        **dict.fromkeys(PROXY_VARIABLES, BOGUS_PROXY),
        "Https_Proxy": BOGUS_PROXY,
        "ftp_proxy": BOGUS_PROXY,
        "NO_PROXY": "localhost",
        "PATH": "/bin",
    }
    dropped = drop_proxy_variables(environ)
    assert sorted(dropped) == sorted([*PROXY_VARIABLES, "Https_Proxy", "ftp_proxy"])
    assert environ == {"NO_PROXY": "localhost", "PATH": "/bin"}
    assert not any(name.lower().endswith("_proxy") and name.lower() != "no_proxy" for name in os.environ)


def _bogus_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    env.update(dict.fromkeys(PROXY_VARIABLES, BOGUS_PROXY))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


@dataclass
class Recorder:
    """A server on 127.0.0.1 that answers every GET and POST with one JSON body; the paths it was asked."""

    url: str
    paths: list[str]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    body = json.dumps({"kind": "PodList", "items": [], "metadata": {"resourceVersion": "1"}}).encode()
    paths: list[str] = []

    class Handler(loopback.Handler):
        def _answer(self) -> None:
            paths.append(self.path)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            # A watch gets an empty stream, which ends it at once.
            self.reply(200, b"" if "watch=" in self.path else body, "application/json")

        do_GET = do_POST = _answer

    with loopback.serving(Handler) as url:
        yield Recorder(url, paths)


@pytest.mark.parametrize(
    ("setup", "direct"),
    [
        ("", False),  # the control: httpx reads the environment's proxy
        ("import tests.conftest", True),
        ("sys.path.insert(0, 'bench'); import benchlib", True),
    ],
    ids=["control", "tests", "bench"],
)
def test_module_level_httpx_calls_go_direct_once_tests_or_bench_are_imported(
    recorder: Recorder, setup: str, direct: bool
) -> None:
    code = f"import sys\n{setup}\nimport httpx\nprint(httpx.get(sys.argv[1], timeout=10).status_code)"
    result = subprocess.run(
        [sys.executable, "-c", code, recorder.url + "/ping"],
        env=_bogus_environment(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if direct:
        assert result.returncode == 0 and result.stdout.strip() == "200", result.stderr
        assert recorder.paths == ["/ping"]
    else:
        assert result.returncode != 0 and ("ProxyError" in result.stderr or "ConnectError" in result.stderr)
        assert recorder.paths == []


def test_demo_traffic_goes_direct_with_a_bogus_proxy_set(recorder: Recorder) -> None:
    url = recorder.url + "/v2/models/iris/infer"
    result = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "demo-traffic.py"), url, "--rate", "50", "--seconds", "0.5"],
        env=_bogus_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    sent = len(recorder.paths)
    assert sent > 0 and set(recorder.paths) == {"/v2/models/iris/infer"}
    assert f"traffic: {sent} requests sent, answers: {{'200': {sent}}}" in result.stdout


# A curl in a bash script of hack/: `curl` as a command (or in a command line it prints), not in a word.
CURL = re.compile(r"(?:^|[\s;&|(`\"'])curl\s")


def test_every_curl_in_hacks_scripts_says_noproxy() -> None:
    missing = []
    for path in sorted((ROOT / "hack").iterdir()):
        if not path.is_file() or not path.read_bytes().startswith(b"#!") or path.suffix == ".py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if CURL.search(line) and not line.lstrip().startswith("#") and "--noproxy" not in line:
                missing.append(f"hack/{path.name}:{number}: {line.strip()}")
    assert missing == [], "curl without --noproxy '*' (the request would follow HTTP_PROXY):\n" + "\n".join(
        missing
    )
