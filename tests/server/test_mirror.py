"""Shadow traffic: a stable server mirrors a share of its inference requests to a canary and counts how
the canary's answers compare; over real HTTP between real server processes, and the pieces alone."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import math
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from modelship.server.agreement import UnreadableAnswer, compare, v1_outputs, v2_outputs
from modelship.server.config import ConfigError, Settings, load_settings
from modelship.server.metrics import MAX_MIRROR_TARGETS, OTHER_TARGET, Metrics, MirrorResult
from modelship.server.mirror import (
    DEFAULT_TOLERANCE,
    MIRROR_HEADER,
    Mirror,
    MirrorFileError,
    MirrorTarget,
    parse_mirror_file,
)
from modelship.server.protocol import RequestedOutput
from modelship.server.responses import encode_infer_response
from modelship.server.v1 import encode_v1_response
from prometheus_client.parser import text_string_to_metric_families

from tests import loopback
from tests.server import models
from tests.server.conftest import ServerProcess, StartServer, free_port
from tests.server.wire import Tensor, outputs_of, request_body
from tests.support import wait_until

TOKEN = "shadow-token"
STABLE_REVISION = "stable-rev"
POLL = "0.25"
RESULTS = tuple(result.value for result in MirrorResult)


@dataclass
class MirrorFile:
    """A stable server's mirror file, written as the kubelet does (a whole new file swapped in)."""

    server: ServerProcess
    path: Path
    # The target the server follows now, as written last: a write that changes it is waited for (the
    # server logs every change); one that does not has nothing to wait for.
    following: str | None = None

    def write(self, content: str) -> None:
        fresh = self.path.with_name(self.path.name + ".new")
        fresh.write_text(content)
        os.replace(fresh, self.path)

    def point(self, revision: str, url: str, percent: float = 100) -> float:
        """Mirror to this canary from now on; returns the seconds the server took to follow."""
        content = json.dumps({"url": url, "percent": percent, "revision": revision})
        line = f"mirroring {percent:g}% of inference requests to revision {revision} at {url} "
        return self._follow(content, content, line)

    def off(self, content: str = "") -> float:
        return self._follow(content, None, "mirroring off")

    def _follow(self, content: str, following: str | None, line: str) -> float:
        started = time.monotonic()
        if following == self.following:
            self.write(content)
            return 0.0
        before = self.server.log().count(line)
        self.write(content)
        self.following = following
        wait_until(
            lambda: self.server.log().count(line) > before,
            timeout=10,
            interval=0.02,
            what=f"the server to log {line!r}",
        )
        return time.monotonic() - started


@dataclass
class Recorder:
    """A canary that only records what it is sent, and answers 200 with a body that is no answer."""

    url: str
    seen: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)


@dataclass
class Shadow:
    stable: ServerProcess  # mlp version 3, mirroring (queue and bounds by default)
    mirror: MirrorFile
    small: ServerProcess  # mlp version 3, mirroring into a queue of 4 and 64 KiB, 1 s timeout
    small_mirror: MirrorFile
    same: ServerProcess  # canary: the same model, version 4
    rolled: ServerProcess  # canary: its classes moved by one, version 4
    dead_url: str  # nothing listens there
    recorder: Recorder


@pytest.fixture(scope="module")
def shadow(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shadow]:
    folder = tmp_path_factory.mktemp("mirror")
    models.save(models.mlp_rolled(), folder / "rolled.onnx")
    token_file = folder / "token"
    token_file.write_text(TOKEN + "\n")

    def env(uri: Path, version: str, revision: str, **more: str) -> dict[str, str]:
        return {
            "MODELSHIP_MODEL_NAME": "mlp",
            "MODELSHIP_MODEL_VERSION": version,
            "MODELSHIP_MODEL_URI": str(uri),
            "MODELSHIP_REVISION": revision,
            "MODELSHIP_AUTH_TOKEN_FILE": str(token_file),
            "MODELSHIP_TERMINATION_LOG": str(folder / f"{revision}-termination-log"),
            "MODELSHIP_MAX_BATCH_SIZE": "1",
            "MODELSHIP_THREADS": "1",
            **more,
        }

    mlp = model_dir / "mlp.onnx"
    procs = {
        "stable": ServerProcess(
            env(
                mlp,
                "3",
                STABLE_REVISION,
                MODELSHIP_MIRROR_FILE=str(folder / "mirror"),
                MODELSHIP_MIRROR_POLL_SECONDS=POLL,
            )
        ),
        "small": ServerProcess(
            env(
                mlp,
                "3",
                "small-rev",
                MODELSHIP_MIRROR_FILE=str(folder / "small-mirror"),
                MODELSHIP_MIRROR_POLL_SECONDS=POLL,
                MODELSHIP_MIRROR_QUEUE="4",
                MODELSHIP_MIRROR_QUEUE_BYTES=str(64 << 10),
                MODELSHIP_MIRROR_TIMEOUT_SECONDS="1",
            )
        ),
        "same": ServerProcess(env(mlp, "4", "canary-same")),
        "rolled": ServerProcess(env(folder / "rolled.onnx", "4", "canary-rolled")),
    }
    seen: list[tuple[str, dict[str, str], bytes]] = []

    class Record(loopback.Handler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.reply(200, b"{}", "application/json")

    try:
        for proc in procs.values():
            proc.start(folder)
        for proc in procs.values():
            proc.wait_ready()
        with loopback.serving(Record) as recorder_url:
            yield Shadow(
                stable=procs["stable"],
                mirror=MirrorFile(procs["stable"], folder / "mirror"),
                small=procs["small"],
                small_mirror=MirrorFile(procs["small"], folder / "small-mirror"),
                same=procs["same"],
                rolled=procs["rolled"],
                dead_url=f"http://127.0.0.1:{free_port()}",
                recorder=Recorder(recorder_url, seen),
            )
    finally:
        # Side by side: each drain waits an idle second.
        for proc in procs.values():
            if proc.proc is not None and proc.proc.poll() is None:
                proc.proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            if proc.proc is not None:
                try:
                    proc.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.stop()


# ---------------------------------------------------------------------------------------------
# what the tests read of a server: its /metrics, parsed as Prometheus parses them


def _samples(server: ServerProcess) -> list[tuple[str, dict[str, str], float]]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def mirrored(server: ServerProcess, target: str) -> dict[str, float]:
    """result -> mirrored requests to `target`, every result present (0 before the target is followed)."""
    counts = dict.fromkeys(RESULTS, 0.0)
    for name, labels, value in _samples(server):
        if name == "modelship_mirror_requests_total" and labels["target"] == target:
            assert set(labels) == {"model", "version", "revision", "target", "result"}, labels
            counts[labels["result"]] = value
    return counts


def timed(server: ServerProcess, target: str) -> float:
    """How many canary answers the duration histogram of `target` holds."""
    for name, labels, value in _samples(server):
        if name == "modelship_mirror_duration_seconds_count" and labels["target"] == target:
            return value
    return 0.0


def answered(server: ServerProcess, code: int = 200) -> float:
    for name, labels, value in _samples(server):
        if name == "modelship_requests_total" and labels["code"] == str(code):
            return value
    return 0.0


def settled(server: ServerProcess) -> None:
    """Wait until every mirrored request the server queued has been sent and judged."""

    def idle() -> bool:
        return any(
            name == "modelship_mirror_pending_requests" and value == 0 for name, _l, value in _samples(server)
        )

    wait_until(idle, timeout=15, interval=0.02, what="the mirror's queue to empty")


def added(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}


AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROWS = np.random.default_rng(7).standard_normal((5, 4)).astype(np.float32)


def infer(
    server: ServerProcess,
    x: np.ndarray = ROWS[:2],
    *,
    binary: bool = False,
    binary_output: bool = False,
    version: str | None = None,
    headers: Mapping[str, str] = AUTH,
) -> np.ndarray:
    """The user's request: answered 200 with this server's own answer, whatever the mirror does."""
    outputs = [{"name": "y", "parameters": {"binary_data": True}}] if binary_output else None
    body, content = request_body([Tensor("x", "FP32", x, binary=binary)], outputs)
    path = "/v2/models/mlp" + (f"/versions/{version}" if version else "") + "/infer"
    response = httpx.post(server.url + path, content=body, headers={**content, **headers}, timeout=10)
    assert response.status_code == 200, response.text
    y = outputs_of(response)["y"][1]
    np.testing.assert_allclose(y, models.mlp_reference(x), rtol=1e-5, atol=1e-6)
    return y


def predict(server: ServerProcess, x: np.ndarray = ROWS[:3]) -> None:
    response = httpx.post(
        f"{server.url}/v1/models/mlp:predict", json={"instances": x.tolist()}, headers=AUTH, timeout=10
    )
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["predictions"], models.mlp_reference(x), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# over HTTP, between real servers


def test_without_a_mirror_file_nothing_is_mirrored(shadow: Shadow) -> None:
    shadow.mirror.off()
    shadow.mirror.path.unlink(missing_ok=True)
    before = [s for s in _samples(shadow.stable) if s[0].startswith("modelship_mirror_requests")]
    canary = answered(shadow.same)
    for _ in range(5):
        infer(shadow.stable)
    settled(shadow.stable)
    assert [s for s in _samples(shadow.stable) if s[0].startswith("modelship_mirror_requests")] == before
    assert answered(shadow.same) == canary
    # A server without a mirror file has no series of it but the idle queue's.
    assert not [s for s in _samples(shadow.same) if s[0].startswith("modelship_mirror_requests")]


def test_every_request_is_mirrored_at_100_percent_and_the_same_model_agrees(shadow: Shadow) -> None:
    took = shadow.mirror.point("same", shadow.same.url)
    assert took < 3, f"the server followed the file after {took:.1f}s"
    before, canary, times = (
        mirrored(shadow.stable, "same"),
        answered(shadow.same),
        timed(shadow.stable, "same"),
    )
    for x in ROWS:  # JSON in and out, binary in, binary out: the canary answers in kind
        infer(shadow.stable, x[None])
        infer(shadow.stable, x[None], binary=True)
        infer(shadow.stable, ROWS, binary_output=True)
    settled(shadow.stable)
    n = 3 * len(ROWS)
    assert added(before, mirrored(shadow.stable, "same")) == {"agree": n}
    assert answered(shadow.same) - canary == n
    assert timed(shadow.stable, "same") - times == n


def test_a_canary_whose_classes_moved_disagrees(shadow: Shadow) -> None:
    shadow.mirror.point("rolled", shadow.rolled.url)
    before, canary = mirrored(shadow.stable, "rolled"), answered(shadow.rolled)
    for x in ROWS:
        infer(shadow.stable, x[None])
    settled(shadow.stable)
    assert added(before, mirrored(shadow.stable, "rolled")) == {"disagree": len(ROWS)}
    assert answered(shadow.rolled) - canary == len(ROWS)


def test_a_canary_that_is_not_there_counts_errors_and_the_user_never_notices(shadow: Shadow) -> None:
    shadow.mirror.point("dead", shadow.dead_url)
    before = mirrored(shadow.stable, "dead")
    for x in ROWS:
        infer(shadow.stable, x[None])  # 200, with the stable's own answer
    settled(shadow.stable)
    assert added(before, mirrored(shadow.stable, "dead")) == {"error": len(ROWS)}
    assert timed(shadow.stable, "dead") == 0  # no answer, no answer time
    assert httpx.get(f"{shadow.stable.url}/v2/health/ready").status_code == 200


def test_a_canary_that_answers_an_error_counts_errors_with_their_time(shadow: Shadow) -> None:
    shadow.mirror.point("missing", f"{shadow.same.url}/nowhere")
    before = mirrored(shadow.stable, "missing")
    for _ in range(3):
        infer(shadow.stable)
    settled(shadow.stable)
    assert added(before, mirrored(shadow.stable, "missing")) == {"error": 3}
    assert timed(shadow.stable, "missing") == 3


def test_only_requests_answered_200_are_mirrored(shadow: Shadow) -> None:
    shadow.mirror.point("same", shadow.same.url)
    before, canary = mirrored(shadow.stable, "same"), answered(shadow.same)
    url = f"{shadow.stable.url}/v2/models/mlp/infer"
    good = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0] * 4}]})
    assert httpx.post(url, content=good).status_code == 401  # no token
    assert httpx.post(url, content=b"{", headers=AUTH).status_code == 400
    assert httpx.post(url.replace("mlp", "other"), content=good, headers=AUTH).status_code == 404
    settled(shadow.stable)
    assert mirrored(shadow.stable, "same") == before and answered(shadow.same) == canary


def test_a_share_of_the_requests_is_mirrored(shadow: Shadow) -> None:
    shadow.mirror.point("sampled", shadow.same.url, percent=20)
    before, canary = mirrored(shadow.stable, "sampled"), answered(shadow.same)
    n, p = 500, 0.2
    with httpx.Client(headers=AUTH, timeout=10) as client:
        body, headers = request_body([Tensor("x", "FP32", ROWS[:1])])
        for _ in range(n):
            response = client.post(f"{shadow.stable.url}/v2/models/mlp/infer", content=body, headers=headers)
            assert response.status_code == 200
    settled(shadow.stable)
    got = added(before, mirrored(shadow.stable, "sampled"))
    assert set(got) == {"agree"}, got
    assert answered(shadow.same) - canary == got["agree"]
    # Binomial(500, 0.2): mean 100, sd 8.9; five of them either way fails once in 1.7 million runs.
    bound = 5 * math.sqrt(n * p * (1 - p))
    assert abs(got["agree"] - n * p) <= bound, got


def test_v1_predict_is_mirrored_to_the_canary_v1_route(shadow: Shadow) -> None:
    shadow.mirror.point("same", shadow.same.url)
    before, canary = mirrored(shadow.stable, "same"), answered(shadow.same)
    for i in range(3):
        predict(shadow.stable, ROWS[i : i + 2])
    settled(shadow.stable)
    assert added(before, mirrored(shadow.stable, "same")) == {"agree": 3}
    assert answered(shadow.same) - canary == 3
    shadow.mirror.point("rolled", shadow.rolled.url)
    before = mirrored(shadow.stable, "rolled")
    predict(shadow.stable)
    settled(shadow.stable)
    assert added(before, mirrored(shadow.stable, "rolled")) == {"disagree": 1}


def test_a_versioned_request_is_mirrored_to_the_unversioned_route(shadow: Shadow) -> None:
    # The canary serves version 4: the stable's version in the path would get a 404 there.
    shadow.mirror.point("same", shadow.same.url)
    before, canary = mirrored(shadow.stable, "same"), answered(shadow.same)
    for _ in range(3):
        infer(shadow.stable, version="3")
    settled(shadow.stable)
    assert added(before, mirrored(shadow.stable, "same")) == {"agree": 3}
    assert answered(shadow.same) - canary == 3


def test_the_canary_gets_the_body_as_sent_and_only_the_headers_that_read_and_allow_it(
    shadow: Shadow,
) -> None:
    recorder = shadow.recorder
    shadow.mirror.point("recorder", recorder.url)
    recorder.seen.clear()
    body, headers = request_body([Tensor("x", "FP32", ROWS, binary=True)])
    sent = gzip.compress(body)
    response = httpx.post(
        f"{shadow.stable.url}/v2/models/mlp/versions/3/infer",
        content=sent,
        headers={**headers, **AUTH, "Content-Encoding": "gzip", "X-User-Secret": "not for the canary"},
    )
    assert response.status_code == 200, response.text
    # A request that is itself mirrored (it names a revision) is never mirrored again.
    again = httpx.post(
        f"{shadow.stable.url}/v2/models/mlp/infer",
        content=body,
        headers={**headers, **AUTH, MIRROR_HEADER: "x"},
    )
    assert again.status_code == 200
    settled(shadow.stable)
    assert len(recorder.seen) == 1
    path, got, forwarded = recorder.seen[0]
    assert path == "/v2/models/mlp/infer" and forwarded == sent
    assert {
        k: v
        for k, v in got.items()
        if k not in ("host", "content-length", "connection", "accept", "accept-encoding")
    } == {
        "content-type": "application/octet-stream",
        "content-encoding": "gzip",
        "inference-header-content-length": headers["Inference-Header-Content-Length"],
        "authorization": f"Bearer {TOKEN}",
        MIRROR_HEADER: STABLE_REVISION,
        "user-agent": "modelship-mirror",
    }
    # Its answer `{}` is no answer of the protocol: the canary disagrees.
    assert mirrored(shadow.stable, "recorder")["disagree"] == 1


def test_a_changed_file_takes_effect_without_a_restart(shadow: Shadow) -> None:
    assert shadow.stable.proc is not None
    pid = shadow.stable.proc.pid
    shadow.mirror.point("same", shadow.same.url)
    same, rolled = mirrored(shadow.stable, "same"), mirrored(shadow.stable, "rolled")
    infer(shadow.stable)
    settled(shadow.stable)
    shadow.mirror.point("rolled", shadow.rolled.url)
    infer(shadow.stable)
    settled(shadow.stable)
    shadow.mirror.off('{"percent": 0}')
    canary = answered(shadow.same) + answered(shadow.rolled)
    infer(shadow.stable)
    settled(shadow.stable)
    assert added(same, mirrored(shadow.stable, "same")) == {"agree": 1}
    assert added(rolled, mirrored(shadow.stable, "rolled")) == {"disagree": 1}
    assert answered(shadow.same) + answered(shadow.rolled) == canary
    assert shadow.stable.proc.pid == pid and shadow.stable.proc.poll() is None


def test_a_garbage_file_turns_mirroring_off_and_the_server_serves_on(shadow: Shadow) -> None:
    shadow.mirror.point("same", shadow.same.url)
    warned = shadow.stable.log().count("is not valid")
    shadow.mirror.write('{"url": "http://x", "percent": "lots", "revision": "r"}')
    wait_until(
        lambda: shadow.stable.log().count("is not valid") > warned,
        timeout=10,
        interval=0.02,
        what="the warning",
    )
    shadow.mirror.following = None
    assert "percent must be a number" in shadow.stable.log()
    before, canary = mirrored(shadow.stable, "same"), answered(shadow.same)
    for _ in range(3):
        infer(shadow.stable)
    settled(shadow.stable)
    assert mirrored(shadow.stable, "same") == before and answered(shadow.same) == canary
    assert httpx.get(f"{shadow.stable.url}/v2/health/ready").status_code == 200


def test_a_stalled_canary_drops_what_the_queue_cannot_hold_and_the_user_does_not_wait(shadow: Shadow) -> None:
    # A canary that accepts connections (the kernel does, into the backlog) and never answers.
    with socket.socket() as stalled:
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(128)
        url = f"http://127.0.0.1:{stalled.getsockname()[1]}"
        shadow.small_mirror.point("stalled", url)
        before = mirrored(shadow.small, "stalled")
        latencies = []
        for _ in range(30):
            started = time.perf_counter()
            infer(shadow.small, ROWS[:1])
            latencies.append(time.perf_counter() - started)
        # Four being sent, four queued, the rest dropped; each of the sent times out after 1 s.
        got = added(before, mirrored(shadow.small, "stalled"))
        assert got.get("dropped", 0) >= 30 - 8 - 8, got
        assert max(latencies) < 0.5, latencies
        settled(shadow.small)
        shadow.small_mirror.off()
    got = added(before, mirrored(shadow.small, "stalled"))
    assert set(got) == {"dropped", "error"} and sum(got.values()) == 30, got
    assert timed(shadow.small, "stalled") == 0


def test_a_body_past_the_byte_bound_is_dropped(shadow: Shadow) -> None:
    shadow.small_mirror.point("same", shadow.same.url)
    before = mirrored(shadow.small, "same")
    small, large = ROWS[:1], np.tile(ROWS, (1000, 1))  # a JSON body of some 100 KiB
    infer(shadow.small, small)
    infer(shadow.small, large)
    settled(shadow.small)
    assert added(before, mirrored(shadow.small, "same")) == {"agree": 1, "dropped": 1}
    shadow.small_mirror.off()


def test_the_drain_ends_the_mirror_with_a_canary_that_never_answers(
    model_dir: Path, tmp_path: Path, start_server: StartServer
) -> None:
    mirror_file = tmp_path / "mirror"
    with socket.socket() as stalled:
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(128)
        target = {"url": f"http://127.0.0.1:{stalled.getsockname()[1]}", "percent": 100, "revision": "r"}
        mirror_file.write_text(json.dumps(target))
        server = start_server(
            {
                "MODELSHIP_MODEL_NAME": "mlp",
                "MODELSHIP_MODEL_URI": str(model_dir / "mlp.onnx"),
                "MODELSHIP_MIRROR_FILE": str(mirror_file),
                "MODELSHIP_MIRROR_TIMEOUT_SECONDS": "60",
                "MODELSHIP_GRACE_PERIOD_SECONDS": "10",
            }
        )
        for _ in range(6):
            infer(server, headers={})
        assert mirrored(server, "r")["dropped"] == 0
        assert server.proc is not None
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait_exit(timeout=10) == 0
        # The drain waits for no mirrored request (it waits an idle second for connections).
        assert time.monotonic() - started < 5
    assert "Traceback" not in server.log()


# ---------------------------------------------------------------------------------------------
# comparing two answers


def _f32(*rows: Any) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def test_labels_agree_only_when_equal_in_every_row() -> None:
    labels = np.array([3, 1, 2], np.int64)
    assert compare({"label": labels}, {"label": labels.copy()}, 0.001).agree
    assert not compare({"label": labels}, {"label": np.array([3, 1, 0])}, 0.001).agree
    flags = np.array([True, False])
    assert compare({"f": flags}, {"f": np.array([True, False])}, 0.001).agree
    assert not compare({"f": flags}, {"f": np.array([True, True])}, 0.001).agree
    names = np.array(["cat", "dög"], dtype=object)
    assert compare({"n": names}, {"n": np.array([b"cat", "dög".encode()], dtype=object)}, 0.001).agree
    assert not compare({"n": names}, {"n": np.array(["cat", "dog"], dtype=object)}, 0.001).agree


def test_class_scores_agree_on_the_argmax_of_every_row_whatever_the_scores() -> None:
    ours = _f32([0.1, 0.7, 0.2], [0.5, 0.2, 0.3])
    assert compare({"y": ours}, {"y": _f32([0.0, 9.0, 1.0], [0.4, 0.35, 0.25])}, 0.0).agree
    verdict = compare({"y": ours}, {"y": _f32([0.1, 0.7, 0.2], [0.2, 0.5, 0.3])}, 0.001)
    assert not verdict.agree and "'y'" in verdict.reason
    # One column is one value a row: compared by value.
    assert not compare({"y": _f32([0.1], [0.5])}, {"y": _f32([0.2], [0.5])}, 0.001).agree


def test_other_floats_agree_within_the_tolerance_relative_past_one() -> None:
    ours = {"v": _f32(1.0, 0.0, 1000.0)}
    assert compare(ours, {"v": _f32(1.0009, -0.0009, 1000.9)}, 0.001).agree
    assert not compare(ours, {"v": _f32(1.0011, 0.0, 1000.0)}, 0.001).agree
    assert not compare(ours, {"v": _f32(1.0, 0.0, 1002.0)}, 0.001).agree
    assert compare(ours, {"v": _f32(1.0011, 0.0, 1000.0)}, DEFAULT_TOLERANCE * 2).agree
    assert not compare(ours, {"v": _f32(1.0, 0.0, 1000.0001)}, 0.0).agree
    assert compare(ours, {"v": np.array([1.0, 0.0, 1000.0])}, 0.0).agree  # FP64 against FP32


def test_nan_agrees_with_nan_and_infinity_with_itself() -> None:
    ours = {"v": _f32(math.nan, math.inf, -math.inf, 1.0)}
    assert compare(ours, {"v": _f32(math.nan, math.inf, -math.inf, 1.0)}, 0.001).agree
    assert not compare(ours, {"v": _f32(0.0, math.inf, -math.inf, 1.0)}, 0.001).agree
    assert not compare(ours, {"v": _f32(math.nan, -math.inf, -math.inf, 1.0)}, 0.001).agree
    assert not compare({"v": _f32(1.0)}, {"v": _f32(math.nan)}, 0.001).agree


def test_a_shape_that_differs_or_no_output_in_common_disagrees() -> None:
    verdict = compare({"y": _f32([1, 2])}, {"y": _f32([1, 2], [3, 4])}, 0.001)
    assert not verdict.agree and "shape" in verdict.reason
    verdict = compare({"y": _f32(1)}, {"z": _f32(1)}, 0.001)
    assert not verdict.agree and "no output in common" in verdict.reason
    assert not compare({"y": _f32(1)}, {}, 0.001).agree
    # Outputs only one side has are not compared.
    assert compare({"y": _f32(1), "extra": _f32(2)}, {"y": _f32(1), "z": _f32(5)}, 0.001).agree
    # Text where we have numbers.
    assert not compare({"y": _f32(1)}, {"y": np.array(["1"], dtype=object)}, 0.001).agree


def test_a_v2_answer_is_read_in_json_and_binary_form() -> None:
    results = {"y": _f32([0.5, math.nan], [1.0, 2.0]), "label": np.array([1, 2], np.int64)}
    for binary in (False, True):
        wanted = (RequestedOutput("y", binary), RequestedOutput("label", binary))
        body, header = encode_infer_response("m", "1", None, wanted, results)
        read = v2_outputs(body, None if header is None else str(header))
        assert set(read) == {"y", "label"}
        np.testing.assert_array_equal(read["y"], results["y"])
        assert read["y"].dtype == np.float32 and read["label"].dtype == np.int64
        assert compare(results, read, 0.0).agree
    for garbage in (
        b"",
        b"[]",
        b'{"outputs": 3}',
        b'{"outputs": [{"name": "y", "datatype": "FP99", "shape": []}]}',
    ):
        with pytest.raises(UnreadableAnswer):
            v2_outputs(garbage, None)
    with pytest.raises(UnreadableAnswer):
        v2_outputs(b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [3], "data": [1]}]}', None)


def test_a_v1_answer_is_read_as_v1_writes_our_results() -> None:
    one = {"y": _f32([0.1, 0.9], [0.8, 0.2])}
    assert compare(one, v1_outputs(encode_v1_response(one, ["y"]), one, ["y"]), 0.0).agree
    rows = {"label": np.array([1, 2], np.int64), "name": np.array(["a", "b"], dtype=object)}
    read = v1_outputs(encode_v1_response(rows, ["label", "name"]), rows, ["label", "name"])
    assert compare(rows, read, 0.0).agree
    whole = {"a": _f32(1.0, 2.0, 3.0), "b": _f32(5.0)}
    assert compare(whole, v1_outputs(encode_v1_response(whole, ["a", "b"]), whole, ["a", "b"]), 0.0).agree
    scalar = {"t": np.array(3.5, np.float32)}
    assert compare(scalar, v1_outputs(encode_v1_response(scalar, ["t"]), scalar, ["t"]), 0.0).agree
    nan = {"y": _f32(math.nan, 1.0)}
    assert compare(nan, v1_outputs(encode_v1_response(nan, ["y"]), nan, ["y"]), 0.0).agree
    for garbage in (b"{", b"{}", b'{"predictions": 1}', b'{"predictions": [[1, 2], [3]]}'):
        with pytest.raises(UnreadableAnswer):
            v1_outputs(garbage, one, ["y"])
    with pytest.raises(UnreadableAnswer):
        v1_outputs(b'{"predictions": [1, 2]}', rows, ["label", "name"])


# ---------------------------------------------------------------------------------------------
# the mirror file


def test_a_mirror_file_names_its_target() -> None:
    text = '{"url": "http://10.96.3.4:8080/", "percent": 20, "revision": "ab12cd34ef", "tolerance": 0.01}'
    assert parse_mirror_file(text) == MirrorTarget("http://10.96.3.4:8080", 20.0, "ab12cd34ef", 0.01)
    target = parse_mirror_file('{"url": "https://c:1/base", "percent": 0.5, "revision": "r", "more": 1}')
    assert target == MirrorTarget("https://c:1/base", 0.5, "r", DEFAULT_TOLERANCE)


@pytest.mark.parametrize(
    "text", ["", "  \n", '{"percent": 0}', '{"url": "http://c", "percent": 0, "revision": "r"}']
)
def test_a_blank_file_or_percent_0_is_off(text: str) -> None:
    assert parse_mirror_file(text) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{", "not JSON"),
        ("[" * 100_000, "not JSON"),
        ("[1]", "not a JSON object"),
        ('{"url": "http://c", "revision": "r"}', "percent must be a number"),
        ('{"url": "http://c", "percent": true, "revision": "r"}', "percent must be a number"),
        ('{"url": "http://c", "percent": "20", "revision": "r"}', "percent must be a number"),
        ('{"url": "http://c", "percent": NaN, "revision": "r"}', "percent must be a number"),
        ('{"url": "http://c", "percent": 101, "revision": "r"}', "between 0 and 100"),
        ('{"url": "http://c", "percent": -1, "revision": "r"}', "between 0 and 100"),
        ('{"percent": 5, "revision": "r"}', "url must be a string"),
        ('{"url": "ftp://c", "percent": 5, "revision": "r"}', "url must be http"),
        ('{"url": "http://", "percent": 5, "revision": "r"}', "url must be http"),
        ('{"url": "http://c/?q=1", "percent": 5, "revision": "r"}', "url must be http"),
        ('{"url": "http://c", "percent": 5}', "revision must be"),
        ('{"url": "http://c", "percent": 5, "revision": ""}', "revision must be"),
        ('{"url": "http://c", "percent": 5, "revision": "' + "r" * 64 + '"}', "revision must be"),
        ('{"url": "http://c", "percent": 5, "revision": "r", "tolerance": -1}', "tolerance must not"),
        ('{"url": "http://c", "percent": 5, "revision": "r", "tolerance": null}', "tolerance must be"),
    ],
)
def test_anything_else_is_refused_with_its_reason(text: str, reason: str) -> None:
    with pytest.raises(MirrorFileError, match=reason):
        parse_mirror_file(text)


def _mirror(path: Path, **settings: Any) -> tuple[Mirror, Metrics]:
    metrics = Metrics("m", "1", "r")
    s = Settings(model_name="m", model_uri="/m.onnx", mirror_file=str(path), **settings)
    return Mirror(s, metrics, ThreadPoolExecutor(1)), metrics


def test_the_mirror_follows_its_file_and_warns_once_per_content(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "mirror"
    mirror, _metrics = _mirror(path)
    mirror.reload()
    assert mirror.target is None
    path.write_text('{"url": "http://c", "percent": 50, "revision": "a"}')
    mirror.reload()
    assert mirror.target == MirrorTarget("http://c", 50, "a")
    with caplog.at_level(logging.WARNING, logger="modelship.server.mirror"):
        for content in ("{", "nope", "{", "nope", "{"):
            path.write_text(content)
            mirror.reload()
            assert mirror.target is None
    assert [r.getMessage().count("is not valid") for r in caplog.records] == [1, 1]
    path.unlink()
    mirror.reload()
    assert mirror.target is None


async def test_the_drain_stops_the_mirroring_for_good(tmp_path: Path) -> None:
    path = tmp_path / "mirror"
    path.write_text('{"url": "http://127.0.0.1:9", "percent": 100, "revision": "a"}')
    mirror, metrics = _mirror(path, mirror_poll_seconds=0.01)
    mirror.start()
    try:
        assert mirror.target is not None and mirror.sample({})
        assert not mirror.sample({MIRROR_HEADER: "other"})  # mirrored already
        mirror.stop_enqueueing()
        assert mirror.target is None and not mirror.sample({})
        path.write_text('{"url": "http://127.0.0.1:9", "percent": 100, "revision": "b"}')
        await asyncio.sleep(0.05)  # a few of the watcher's turns
        assert mirror.target is None
        mirror.offer(False, b"{}", {}, {}, ())  # sampled before the drain began: let go
    finally:
        await mirror.close()
    assert _counted(metrics) == {("a", result): 0.0 for result in RESULTS}


def _counted(metrics: Metrics) -> dict[tuple[str, str], float]:
    counts = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == "modelship_mirror_requests_total":
                counts[sample.labels["target"], sample.labels["result"]] = sample.value
    return counts


def _pending(metrics: Metrics) -> float:
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == "modelship_mirror_pending_requests":
                return sample.value
    raise AssertionError("no modelship_mirror_pending_requests")


@pytest.mark.parametrize(("queue", "queue_bytes"), [(2, 1000), (10, 60)])
async def test_past_the_queue_or_its_bytes_requests_are_dropped(
    tmp_path: Path, queue: int, queue_bytes: int
) -> None:
    path = tmp_path / "mirror"
    path.write_text('{"url": "http://127.0.0.1:9", "percent": 100, "revision": "a"}')
    mirror, metrics = _mirror(path, mirror_queue=queue, mirror_queue_bytes=queue_bytes)
    mirror.start()
    try:
        results = {"y": np.zeros(4, np.float32)}
        for _ in range(3):  # 26 bytes each, body and results; offered before any worker runs
            mirror.offer(False, b"x" * 10, {}, results, ("y",))
        assert _counted(metrics)["a", "dropped"] == 1
        assert _pending(metrics) == 2
    finally:
        await mirror.close()
    # What was still queued when the server stopped is dropped too.
    assert _counted(metrics)["a", "dropped"] == 3 and _pending(metrics) == 0


def test_mirror_targets_are_bounded() -> None:
    metrics = Metrics("m", "1", "r")
    for i in range(MAX_MIRROR_TARGETS + 3):
        metrics.mirror_series(f"t{i}").count(MirrorResult.AGREE)
    metrics.mirror_series("t0").count(MirrorResult.AGREE)
    targets: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == "modelship_mirror_requests_total" and sample.labels["result"] == "agree":
                targets[sample.labels["target"]] = sample.value
    assert targets == {**{f"t{i}": 1.0 for i in range(1, MAX_MIRROR_TARGETS)}, "t0": 2.0, OTHER_TARGET: 3.0}


def test_mirror_settings() -> None:
    base = {"MODELSHIP_MODEL_NAME": "m", "MODELSHIP_MODEL_URI": "/m.onnx"}
    s = load_settings([], base)
    assert (s.mirror_file, s.mirror_poll_seconds, s.mirror_timeout_seconds) == ("", 1.0, 5.0)
    assert (s.mirror_queue, s.mirror_queue_bytes, s.mirror_concurrency) == (64, 16 << 20, 4)
    env = {
        **base,
        "MODELSHIP_MIRROR_FILE": "/etc/modelship/podinfo/mirror",
        "MODELSHIP_MIRROR_POLL_SECONDS": "0.5",
        "MODELSHIP_MIRROR_QUEUE": "8",
        "MODELSHIP_MIRROR_QUEUE_BYTES": "1000",
        "MODELSHIP_MIRROR_CONCURRENCY": "2",
        "MODELSHIP_MIRROR_TIMEOUT_SECONDS": "1.5",
    }
    s = load_settings([], env)
    assert s.mirror_file == "/etc/modelship/podinfo/mirror"
    assert (s.mirror_poll_seconds, s.mirror_queue, s.mirror_queue_bytes) == (0.5, 8, 1000)
    assert (s.mirror_concurrency, s.mirror_timeout_seconds) == (2, 1.5)
    for name, value in (
        ("MIRROR_POLL_SECONDS", "0"),
        ("MIRROR_TIMEOUT_SECONDS", "nan"),
        ("MIRROR_QUEUE", "0"),
        ("MIRROR_QUEUE_BYTES", "0"),
        ("MIRROR_CONCURRENCY", "0"),
    ):
        with pytest.raises(ConfigError, match=name.lower()):
            load_settings([], {**base, f"MODELSHIP_{name}": value})
