"""s3:// models against a real S3 server (versitygw on 127.0.0.1), fetched by obstore, put there by boto3.

Where a test needs to see or break the wire, a small HTTP proxy on loopback sits between obstore and
versitygw: it records every request and can cut a response's body short.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from modelship.server import s3
from modelship.server.errors import ModelLoadError
from modelship.server.fetch import FetchedFile, cache_path, fetch_file, fetch_model
from modelship.server.fetch_command import fetch_success_line
from modelship.server.s3 import S3Options

from tests import loopback
from tests.s3_server import S3Server, free_port, running_versitygw
from tests.server.conftest import ROOT, ModelHost

MIB = 1 << 20
DATA = random.Random(7).randbytes(5 * MIB + 321)
SHA = hashlib.sha256(DATA).hexdigest()
BUCKET = "models"
KEY = "iris/9/model.onnx"
URI = f"s3://{BUCKET}/{KEY}"
JSON_KEYS = {"uri", "sha256", "size", "fetchSeconds", "cached"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with running_versitygw(tmp_path_factory.mktemp("versitygw")) as server:
        server.upload(BUCKET, KEY, DATA)
        yield server


@pytest.fixture
def aws_env(store: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The store's root keys as the operator passes them (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), and
    no other AWS_* variable of the machine running the tests."""
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", store.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", store.secret_key)
    return store


@dataclass
class Seen:
    """One request that went through the proxy, and what was sent back."""

    method: str
    path: str
    headers: dict[str, str]
    status: int = 0
    body_bytes: int = 0


@dataclass
class Proxy:
    url: str
    requests: list[Seen]
    # Bytes of body after which the response to the 1st, 2nd... request is cut (None: sent whole).
    cuts: list[int | None] = field(default_factory=list)
    on_cut: Callable[[], None] | None = None
    # Request number (from 1) -> the status and S3 error code the proxy answers it with, itself.
    refusals: dict[int, tuple[int, str]] = field(default_factory=dict)


@pytest.fixture
def proxy(store: S3Server) -> Iterator[Proxy]:
    """An HTTP proxy in front of versitygw, as obstore's endpoint."""
    upstream = urlsplit(store.endpoint)
    state = Proxy(url="", requests=[])

    class Handler(loopback.Handler):
        def do_GET(self) -> None:
            seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
            state.requests.append(seen)
            refusal = state.refusals.get(len(state.requests))
            if refusal is not None:
                seen.status, code = refusal
                body = (
                    f"<Error><Code>{code}</Code><Message>Please reduce your request rate.</Message></Error>"
                )
                self.reply(seen.status, body.encode(), "application/xml")
                return
            cut = state.cuts[len(state.requests) - 1] if len(state.requests) <= len(state.cuts) else None
            conn = http.client.HTTPConnection(upstream.hostname or "", upstream.port, timeout=30)
            # The request as signed: its Host header (the proxy's) included.
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                conn.putheader(name, value)
            conn.endheaders()
            response = conn.getresponse()
            seen.status = response.status
            self.send_response_only(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in ("connection", "transfer-encoding"):
                    self.send_header(name, value)
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                while chunk := response.read(64 * 1024):
                    if cut is not None and seen.body_bytes + len(chunk) > cut:
                        self.wfile.write(chunk[: cut - seen.body_bytes])
                        seen.body_bytes = cut
                        self.wfile.flush()
                        if state.on_cut is not None:
                            state.on_cut()
                        break  # the connection closes with the body short of its Content-Length
                    self.wfile.write(chunk)
                    seen.body_bytes += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # obstore let go of a body it no longer wanted (a size over the limit)
            finally:
                conn.close()

    with loopback.serving(Handler) as url:
        state.url = url
        yield state


def _fetch(uri: str, sha: str, cache: Path, endpoint: str) -> bytes:
    return fetch_model(
        uri, sha, str(cache), 1 << 30, attempts=3, s3_options=S3Options(endpoint=endpoint)
    ).data


def test_an_s3_model_is_streamed_into_the_cache_and_then_read_from_it(
    aws_env: S3Server, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    assert _fetch(URI, SHA, cache, aws_env.endpoint) == DATA
    assert cache_path(cache, SHA).read_bytes() == DATA
    assert sorted(p.name for p in cache.iterdir()) == [f"{SHA}.onnx"]  # no part file left
    fetched = fetch_file(URI, SHA, str(cache), 1 << 30, s3_options=S3Options(endpoint=aws_env.endpoint))
    assert fetched == FetchedFile(cache_path(cache, SHA), SHA, len(DATA), cached=True)


def test_an_endpoint_is_addressed_path_style_by_default(
    aws_env: S3Server, proxy: Proxy, tmp_path: Path
) -> None:
    assert _fetch(URI, SHA, tmp_path, proxy.url) == DATA
    [request] = proxy.requests
    assert (request.method, request.path) == ("GET", f"/{BUCKET}/{KEY}")
    assert request.headers["host"] == urlsplit(proxy.url).netloc
    # A GET from the start (never a HEAD, which has no error body), signed with the keys of the environment.
    assert "range" not in request.headers
    assert f"Credential={aws_env.access_key}/" in request.headers["authorization"]


def test_where_requests_go_for_each_addressing() -> None:
    location = s3.parse_uri(URI)

    def origin(options: S3Options, **environ: str) -> str:
        return s3._target(location, options, environ).origin

    assert origin(S3Options(endpoint="http://store.svc:9000")) == "http://store.svc:9000"
    assert origin(S3Options(endpoint="https://store.example/", addressing="virtual")) == (
        "https://models.store.example"
    )
    assert origin(S3Options()) == "https://models.s3.us-east-1.amazonaws.com"
    assert origin(S3Options(), AWS_REGION="eu-west-3") == "https://models.s3.eu-west-3.amazonaws.com"
    assert origin(S3Options(region="eu-north-1", addressing="path"), AWS_DEFAULT_REGION="x") == (
        "https://s3.eu-north-1.amazonaws.com"
    )


def test_a_local_store_is_reached_direct_whatever_proxy_the_environment_names(
    aws_env: S3Server, bogus_proxy: str, tmp_path: Path
) -> None:
    assert _fetch(URI, SHA, tmp_path, aws_env.endpoint) == DATA


@pytest.mark.parametrize(
    ("uri", "env", "said"),
    [
        (f"s3://{BUCKET}/iris/9/missing.onnx", {}, "NoSuchKey: The specified key does not exist."),
        ("s3://no-such-bucket/m.onnx", {}, "NoSuchBucket: The specified bucket does not exist."),
        (URI, {"AWS_SECRET_ACCESS_KEY": "wrong-secret-0123456789"}, "SignatureDoesNotMatch: "),
        # AWS would say InvalidAccessKeyId: whatever code the store gives is passed on.
        (URI, {"AWS_ACCESS_KEY_ID": "AKIAUNKNOWN0000"}, "XAdminUserNotFound: "),
    ],
    ids=["missing-key", "missing-bucket", "wrong-secret", "unknown-access-key"],
)
def test_a_refusal_fails_at_once_in_the_store_s_own_words(
    aws_env: S3Server,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    uri: str,
    env: dict[str, str],
    said: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ModelLoadError) as caught:
        _fetch(uri, SHA, tmp_path, aws_env.endpoint)
    message = str(caught.value)
    assert message.startswith(f"{uri}: {said}"), message
    assert "attempts" not in message  # not retried
    # Only S3's code and message: none of the XML around them (the string to sign, the signature).
    for secret in (aws_env.secret_key, "wrong-secret-0123456789", "StringToSign", "SignatureProvided", "<"):
        assert secret not in message
    assert list(tmp_path.iterdir()) == []


def test_no_credentials_at_all_says_so_in_plain_words(
    aws_env: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    # The instance metadata service, obstore's last resort, is not there either (as off EC2).
    metadata = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_METADATA_ENDPOINT", metadata)
    with pytest.raises(ModelLoadError) as caught:
        _fetch(URI, SHA, tmp_path, aws_env.endpoint)
    assert str(caught.value) == (
        f"{URI}: no S3 credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set, nor IRSA's "
        f"AWS_WEB_IDENTITY_TOKEN_FILE, and the instance metadata service at {metadata} gave none "
        "(Connection refused)"
    )


def test_a_wrong_digest_is_refused_and_nothing_is_cached(aws_env: S3Server, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as caught:
        _fetch(URI, "b" * 64, tmp_path, aws_env.endpoint)
    assert str(caught.value) == f"sha256 mismatch for {URI}: expected {'b' * 64}, got {SHA}"
    assert list(tmp_path.iterdir()) == []


def test_an_object_over_the_limit_is_refused_before_its_body_is_read(
    aws_env: S3Server, proxy: Proxy, tmp_path: Path
) -> None:
    with pytest.raises(ModelLoadError, match=f"^{URI} is {len(DATA)} bytes, over the limit of {MIB}$"):
        fetch_model(URI, SHA, str(tmp_path), MIB, s3_options=S3Options(endpoint=proxy.url))
    assert len(proxy.requests) == 1
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_store_fails_after_the_bounded_attempts(aws_env: S3Server, tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as caught:
        s3.download(
            URI,
            tmp_path / "m.onnx",
            SHA,
            1 << 30,
            options=S3Options(endpoint=endpoint),
            attempts=3,
            backoff_seconds=0.01,
        )
    assert str(caught.value) == f"{URI}: cannot reach {endpoint}: Connection refused (after 3 attempts)"
    assert time.monotonic() - started < 10
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "uri", ["s3://models", "s3://models/", "s3:///m.onnx", "s3://a b/m", "s3://m/a//b.onnx"]
)
def test_malformed_s3_uris_are_refused(uri: str, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=f"^malformed S3 URI {uri}: "):
        fetch_model(uri, SHA, str(tmp_path), MIB)


def test_keys_are_taken_as_written() -> None:
    assert s3.parse_uri("s3://b/a%20b/c d+e.onnx") == s3.S3Location("b", "a%20b/c d+e.onnx")


def test_an_s3_model_needs_a_digest(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=f"a sha256 is required to download {URI}"):
        fetch_model(URI, None, str(tmp_path), MIB)


# Past obstore's own retries (none here, so that the resumption seen is ours), a body cut short.
CUT = 3 * MIB + 12345


def test_a_broken_body_is_resumed_from_the_bytes_received_pinned_to_the_etag(
    aws_env: S3Server, proxy: Proxy, tmp_path: Path
) -> None:
    proxy.cuts = [CUT]
    dest = tmp_path / "m.onnx"
    options = S3Options(endpoint=proxy.url, store_retries=0)
    s3.download(URI, dest, SHA, 1 << 30, options=options, attempts=2, backoff_seconds=0.01)
    assert dest.read_bytes() == DATA
    first, second = proxy.requests
    assert "range" not in first.headers and first.body_bytes == CUT
    resumed_at = int(second.headers["range"].removeprefix("bytes=").removesuffix("-"))
    # From what had reached the file (obstore hands over whole chunks: a part of one is lost), not from 0.
    assert 0 < resumed_at <= CUT
    assert second.headers["if-match"] == aws_env.client().head_object(Bucket=BUCKET, Key=KEY)["ETag"]
    assert second.body_bytes == len(DATA) - resumed_at


def test_an_object_replaced_mid_download_is_fetched_again_from_the_start(
    aws_env: S3Server, proxy: Proxy, tmp_path: Path
) -> None:
    key = "replaced/model.onnx"
    uri = f"s3://{BUCKET}/{key}"
    aws_env.upload(BUCKET, key, DATA)
    new = DATA[::-1]
    proxy.cuts = [CUT]
    proxy.on_cut = lambda: aws_env.upload(BUCKET, key, new)
    dest = tmp_path / "m.onnx"
    options = S3Options(endpoint=proxy.url, store_retries=0)
    s3.download(uri, dest, hashlib.sha256(new).hexdigest(), 1 << 30, options=options, backoff_seconds=0.01)
    assert dest.read_bytes() == new
    _, pinned, fresh = proxy.requests
    assert pinned.headers["range"].startswith("bytes=") and pinned.status == 412  # the ETag no longer held
    assert "range" not in fresh.headers and fresh.body_bytes == len(new)


def test_a_store_s_5xx_is_tried_again_and_said_in_its_own_words_when_it_persists(
    aws_env: S3Server, proxy: Proxy, tmp_path: Path
) -> None:
    proxy.refusals = {1: (503, "SlowDown")}
    dest = tmp_path / "m.onnx"
    options = S3Options(endpoint=proxy.url, store_retries=0)
    s3.download(URI, dest, SHA, 1 << 30, options=options, attempts=2, backoff_seconds=0.01)
    assert dest.read_bytes() == DATA
    assert [seen.status for seen in proxy.requests] == [503, 200]

    proxy.requests.clear()
    proxy.refusals = {1: (503, "SlowDown"), 2: (503, "SlowDown")}
    with pytest.raises(ModelLoadError) as caught:
        s3.download(URI, tmp_path / "n.onnx", SHA, 1 << 30, options=options, attempts=2, backoff_seconds=0.01)
    assert str(caught.value) == f"{URI}: SlowDown: Please reduce your request rate. (after 2 attempts)"


# Linux carries a process's peak RSS over an exec, and subprocess forks with vfork (the parent's memory):
# the fetch command's own peak is measured as a child of a small process, not of pytest.
_PEAK_RSS = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss * 1024))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _fetch_command(env: dict[str, str], tmp_path: Path) -> tuple[int, int, str]:
    """Run `python -m modelship.server fetch`: its exit code, its peak RSS in bytes, and its log."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MODELSHIP_"))}
    full.update(env)
    full["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "server_image"), full.get("PYTHONPATH")) if p)
    log_path, peak_path = tmp_path / "fetch.log", tmp_path / "fetch.peak"
    command = [
        sys.executable,
        "-c",
        _PEAK_RSS,
        str(peak_path),
        sys.executable,
        "-m",
        "modelship.server",
        "fetch",
    ]
    with open(log_path, "wb") as log:
        code = subprocess.run(command, env=full, stdout=log, stderr=log, timeout=60).returncode
    return code, int(peak_path.read_text()), log_path.read_text()


def _success_line(termination_log: Path) -> dict[str, object]:
    text = termination_log.read_text()
    assert text.endswith("\n") and text.count("\n") == 1 and len(text.encode()) < 4096
    report = json.loads(text)
    assert set(report) == JSON_KEYS
    return report


def test_the_fetch_command_reports_its_s3_model_and_its_memory_stays_flat(
    aws_env: S3Server, tmp_path: Path
) -> None:
    big = tmp_path / "big.onnx"
    digest = hashlib.sha256()
    rng = random.Random(11)
    with open(big, "wb") as out:
        for _ in range(256):
            chunk = rng.randbytes(MIB)
            digest.update(chunk)
            out.write(chunk)
    sha = digest.hexdigest()
    aws_env.upload(BUCKET, "big/model.onnx", big)
    big.unlink()
    uri = f"s3://{BUCKET}/big/model.onnx"
    termination_log = tmp_path / "termination-log"
    env = {
        "MODELSHIP_MODEL_NAME": "big",
        "MODELSHIP_MODEL_URI": uri,
        "MODELSHIP_MODEL_SHA256": sha,
        "MODELSHIP_CACHE_DIR": str(tmp_path / "cache"),
        "MODELSHIP_TERMINATION_LOG": str(termination_log),
        "MODELSHIP_S3_ENDPOINT": aws_env.endpoint,
        "AWS_ACCESS_KEY_ID": aws_env.access_key,
        "AWS_SECRET_ACCESS_KEY": aws_env.secret_key,
    }
    code, peak, log = _fetch_command(env, tmp_path)
    assert code == 0, log
    report = _success_line(termination_log)
    assert {k: report[k] for k in ("uri", "sha256", "size", "cached")} == {
        "uri": uri,
        "sha256": sha,
        "size": 256 * MIB,
        "cached": False,
    }
    assert isinstance(report["fetchSeconds"], float) and report["fetchSeconds"] > 0
    assert cache_path(tmp_path / "cache", sha).stat().st_size == 256 * MIB
    # The interpreter with the server's imports is most of it (about 100 MiB); the model is not in it.
    assert peak < 150 * MIB, f"peak RSS {peak / MIB:.0f} MiB"
    assert aws_env.secret_key not in log

    code, _, log = _fetch_command(env, tmp_path)
    assert code == 0, log
    again = _success_line(termination_log)
    assert (again["sha256"], again["size"], again["cached"]) == (sha, 256 * MIB, True)


def test_the_fetch_command_reports_an_s3_refusal(aws_env: S3Server, tmp_path: Path) -> None:
    termination_log = tmp_path / "termination-log"
    uri = f"s3://{BUCKET}/nothing/here.onnx"
    env = {
        "MODELSHIP_MODEL_NAME": "m",
        "MODELSHIP_MODEL_URI": uri,
        "MODELSHIP_MODEL_SHA256": SHA,
        "MODELSHIP_CACHE_DIR": str(tmp_path / "cache"),
        "MODELSHIP_TERMINATION_LOG": str(termination_log),
        "MODELSHIP_S3_ENDPOINT": aws_env.endpoint,
        "AWS_ACCESS_KEY_ID": aws_env.access_key,
        "AWS_SECRET_ACCESS_KEY": aws_env.secret_key,
    }
    code, _, log = _fetch_command(env, tmp_path)
    assert code == 1, log
    assert termination_log.read_text() == (
        f"model fetch failed: {uri}: NoSuchKey: The specified key does not exist.\n"
    )


def test_the_fetch_command_reports_an_http_model_too(model_host: ModelHost, tmp_path: Path) -> None:
    model_host.files["/m.onnx"] = DATA
    termination_log = tmp_path / "termination-log"
    env = {
        "MODELSHIP_MODEL_NAME": "m",
        "MODELSHIP_MODEL_URI": model_host.url + "/m.onnx",
        "MODELSHIP_MODEL_SHA256": SHA,
        "MODELSHIP_CACHE_DIR": str(tmp_path / "cache"),
        "MODELSHIP_TERMINATION_LOG": str(termination_log),
    }
    code, _, log = _fetch_command(env, tmp_path)
    assert code == 0, log
    report = _success_line(termination_log)
    assert (report["uri"], report["sha256"], report["size"], report["cached"]) == (
        model_host.url + "/m.onnx",
        SHA,
        len(DATA),
        False,
    )


def test_the_success_line_fits_the_termination_message_whatever_the_uri() -> None:
    fetched = FetchedFile(Path("/c/x.onnx"), SHA, 12, cached=True)
    assert json.loads(fetch_success_line(URI, fetched, 0.12345)) == {
        "uri": URI,
        "sha256": SHA,
        "size": 12,
        "fetchSeconds": 0.123,
        "cached": True,
    }
    long_uri = f"s3://{BUCKET}/" + "é/" * 3000 + "m.onnx"
    line = fetch_success_line(long_uri, fetched, 1.0)
    assert len(line.encode()) < 4096
    report = json.loads(line)
    assert set(report) == JSON_KEYS and long_uri.startswith(str(report["uri"]).removesuffix("..."))
