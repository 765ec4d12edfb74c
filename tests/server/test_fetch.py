"""Model fetching against real files and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from modelship.server.errors import ModelLoadError
from modelship.server.fetch import cache_path, download, fetch_model, local_path

from tests.server.conftest import ModelHost

DATA = b"\x08\x07model bytes" * 100
SHA = hashlib.sha256(DATA).hexdigest()


def test_local_paths_and_file_uris_are_read_and_verified(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(DATA)
    for uri in (str(path), f"file://{path}"):
        model = fetch_model(uri, SHA, str(tmp_path / "cache"), 1 << 20)
        assert model.data == DATA and model.sha256 == SHA
    assert not (tmp_path / "cache").exists()  # local files are not copied
    # Without an expected digest the file is still hashed, for the model_info metric.
    assert fetch_model(str(path), None, str(tmp_path), 1 << 20).sha256 == SHA


def test_wrong_digest_names_both_digests(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(DATA)
    with pytest.raises(ModelLoadError) as caught:
        fetch_model(str(path), "a" * 64, str(tmp_path), 1 << 20)
    assert str(caught.value) == f"sha256 mismatch for {path}: expected {'a' * 64}, got {SHA}"


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("/no/such/model.onnx", "does not exist"),
        ("gs://bucket/model.onnx", "unsupported model URI scheme 'gs'"),
        ("file://otherhost/model.onnx", "only local files"),
    ],
)
def test_unusable_uris_say_why(tmp_path: Path, uri: str, fragment: str) -> None:
    with pytest.raises(ModelLoadError, match=fragment):
        fetch_model(uri, None, str(tmp_path), 1 << 20)


def test_size_limit_applies_to_files_and_downloads(tmp_path: Path, model_host: ModelHost) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(DATA)
    with pytest.raises(ModelLoadError, match="over the limit of 100"):
        fetch_model(str(path), None, str(tmp_path), 100)
    model_host.files["/m.onnx"] = DATA
    with pytest.raises(ModelLoadError, match="over the limit of 100"):
        fetch_model(model_host.url + "/m.onnx", SHA, str(tmp_path / "cache"), 100)


def test_download_lands_in_the_cache_and_is_reused(tmp_path: Path, model_host: ModelHost) -> None:
    model_host.files["/m.onnx"] = DATA
    cache = tmp_path / "cache"
    model = fetch_model(model_host.url + "/m.onnx", SHA, str(cache), 1 << 20)
    assert model.data == DATA
    assert cache_path(cache, SHA).read_bytes() == DATA
    assert sorted(p.name for p in cache.iterdir()) == [f"{SHA}.onnx"]  # no partial files left
    again = fetch_model(model_host.url + "/m.onnx", SHA, str(cache), 1 << 20)
    assert again.data == DATA
    assert model_host.hits["/m.onnx"] == 1


def test_a_corrupt_cached_copy_is_downloaded_again(tmp_path: Path, model_host: ModelHost) -> None:
    model_host.files["/m.onnx"] = DATA
    cache = tmp_path / "cache"
    cache.mkdir()
    cache_path(cache, SHA).write_bytes(b"garbage")
    assert fetch_model(model_host.url + "/m.onnx", SHA, str(cache), 1 << 20).data == DATA
    assert model_host.hits["/m.onnx"] == 1


def test_remote_models_need_a_digest(tmp_path: Path, model_host: ModelHost) -> None:
    with pytest.raises(ModelLoadError, match="a sha256 is required"):
        fetch_model(model_host.url + "/m.onnx", None, str(tmp_path), 1 << 20)


def test_404_fails_at_once(tmp_path: Path, model_host: ModelHost) -> None:
    with pytest.raises(ModelLoadError, match="HTTP 404"):
        download(model_host.url + "/missing.onnx", tmp_path / "m.onnx", SHA, 1 << 20, attempts=3)
    assert model_host.hits["/missing.onnx"] == 1


def test_transient_errors_are_retried(tmp_path: Path, model_host: ModelHost) -> None:
    model_host.files["/m.onnx"] = DATA
    model_host.flaky["/m.onnx"] = 2
    download(model_host.url + "/m.onnx", tmp_path / "m.onnx", SHA, 1 << 20, attempts=3, backoff_seconds=0.01)
    assert (tmp_path / "m.onnx").read_bytes() == DATA
    assert model_host.hits["/m.onnx"] == 3


def test_truncated_download_fails_after_its_attempts_and_leaves_nothing(
    tmp_path: Path, model_host: ModelHost
) -> None:
    model_host.truncated["/m.onnx"] = DATA[:500]
    with pytest.raises(ModelLoadError, match="failed after 2 attempts: truncated"):
        download(
            model_host.url + "/m.onnx", tmp_path / "m.onnx", SHA, 1 << 20, attempts=2, backoff_seconds=0.01
        )
    assert list(tmp_path.iterdir()) == []
    assert model_host.hits["/m.onnx"] == 2


def test_downloaded_bytes_with_the_wrong_digest_are_refused(tmp_path: Path, model_host: ModelHost) -> None:
    model_host.files["/m.onnx"] = DATA
    with pytest.raises(ModelLoadError, match=f"sha256 mismatch for .*: expected {'b' * 64}, got {SHA}"):
        download(model_host.url + "/m.onnx", tmp_path / "m.onnx", "b" * 64, 1 << 20, attempts=3)
    assert list(tmp_path.iterdir()) == []


def test_local_path_parses_file_uris() -> None:
    assert local_path("file:///models/a%20b.onnx") == Path("/models/a b.onnx")
    assert local_path("relative/m.onnx") == Path("relative/m.onnx")
